//! An answer of the simulated WeChat before it is signed: WeChat's error shapes, 204, JSON and the
//! gateway's unsigned pages.

use http::StatusCode;
use serde_json::{Value, json};

/// An answer before signing.
pub(crate) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: Vec<u8>,
    pub(super) signed: bool,
}

impl Reply {
    pub(super) fn error(
        status: StatusCode,
        code: &str,
        message: &str,
        detail: Option<Value>,
    ) -> Self {
        let mut v = json!({"code": code, "message": message});
        if let Some(d) = detail {
            v["detail"] = d;
        }
        Self {
            status,
            body: v.to_string().into_bytes(),
            signed: true,
        }
    }
    /// A JSON error from WeChat's gateway, unsigned (429, 500).
    pub(super) fn unsigned(status: StatusCode, code: &str, message: &str) -> Self {
        Self {
            signed: false,
            ..Self::error(status, code, message, None)
        }
    }
    pub(super) fn param(field: &str, issue: impl Into<String>) -> Self {
        let issue = issue.into();
        Self::error(
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            &format!("参数错误: {field} {issue}"),
            Some(json!({"field": format!("/{field}"), "issue": issue, "location": "body"})),
        )
    }
    pub(super) fn no_content() -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            body: Vec::new(),
            signed: true,
        }
    }
    pub(super) fn json(v: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body: v.to_string().into_bytes(),
            signed: true,
        }
    }
    pub(super) fn gateway(status: StatusCode) -> Self {
        Self {
            status,
            body: format!("<html><body>{status}</body></html>").into_bytes(),
            signed: false,
        }
    }
}
