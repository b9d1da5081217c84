//! `GET /v3/businesscircle/users/{openid}/points/commit_status`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{PointsCommitStatus, check_member_query, member_get};
use crate::error::{Error, ValidationError};
use crate::request::{ApiRequest, RawRequest, Response};

/// Query of `GET /v3/businesscircle/users/{openid}/points/commit_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatusQuery {
    /// 品牌ID.
    pub brandid: i64,
    /// Mini-program appid.
    pub appid: String,
    /// Partner mode.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sub_mchid: Option<String>,
}

impl CommitStatusQuery {
    /// For a brand and appid.
    pub fn new(brandid: i64, appid: impl Into<String>) -> Self {
        Self {
            brandid,
            appid: appid.into(),
            sub_mchid: None,
        }
    }
    /// Partner mode.
    pub fn sub_mchid(mut self, v: impl Into<String>) -> Self {
        self.sub_mchid = Some(v.into());
        self
    }
    /// Checks the fields.
    pub fn validate(&self, openid: &str) -> Result<(), ValidationError> {
        check_member_query(openid, &self.appid, &self.sub_mchid)
    }
    pub(super) fn to_request(&self, openid: &str) -> Result<RawRequest, Error> {
        self.validate(openid)?;
        member_get(
            "/v3/businesscircle/users/{openid}/points/commit_status",
            openid,
            &self.sub_mchid,
            &[
                ("brandid", self.brandid.to_string()),
                ("appid", self.appid.clone()),
            ],
        )
    }
}

/// Answer of the pending-points query: `200` with JSON, or — as some sources describe — an
/// empty `204`, in which case `points_commit_status` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommitStatus {
    /// `PENDING` or `FINISHED`.
    #[serde(default)]
    pub points_commit_status: Option<PointsCommitStatus>,
    /// Fields this SDK does not know, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn decode_commit_status(res: &Response) -> Result<CommitStatus, Error> {
    if res.body.iter().all(u8::is_ascii_whitespace) {
        Ok(CommitStatus::default())
    } else {
        res.json()
    }
}

/// The pending-points query of one member: an owned request to send or store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatusRequest {
    /// The member.
    pub openid: String,
    /// The query.
    pub query: CommitStatusQuery,
}

impl ApiRequest for CommitStatusRequest {
    type Output = CommitStatus;
    fn to_request(&self) -> Result<RawRequest, Error> {
        self.query.to_request(&self.openid)
    }
    fn decode(&self, response: Response) -> Result<CommitStatus, Error> {
        decode_commit_status(&response)
    }
}
