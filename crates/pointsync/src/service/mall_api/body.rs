//! Request bodies and fields: a body over `mall_api.body_limit` is refused before it is read
//! whole, JSON is parsed strictly (unknown fields refused), and each problem names its field.

use axum::body::Body;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;

use super::ApiError;

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is over {limit} bytes (mall_api.body_limit)"),
    )
}

/// At most this much of an oversize body is read and discarded before the 413, within
/// [`DRAIN_TIME`]: a client still sending when the connection closes would see a reset instead of
/// the answer. Larger bodies are cut off at once.
const MAX_DRAIN: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

async fn drain(body: Body) {
    let read = http_body_util::Limited::new(body, MAX_DRAIN).collect();
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// Reads and parses a JSON body.
pub async fn json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        if declared.is_some_and(|n| n <= MAX_DRAIN as u64) {
            drain(body).await;
        }
        return Err(too_large(limit));
    }
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(limit)
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    format!("the request body could not be read: {e}"),
                )
            }
        })?
        .to_bytes();
    let parsed: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    if !parsed.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the request body must be a JSON object: see /v1/openapi.json",
        ));
    }
    let value = serde_path_to_error::deserialize::<_, T>(parsed).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default();
            return ApiError::field(
                "unknown_field",
                name,
                format!("unknown field `{name}`: see /v1/openapi.json"),
            );
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            return ApiError::field("missing_field", name, format!("field `{name}` is required"));
        }
        ApiError::field("invalid_field", &path, format!("field `{path}`: {message}"))
    })?;
    Ok(value)
}

/// An openid as WeChat issues them: 1–64 letters, digits, `_` and `-`.
pub fn openid(field: &str, v: &str) -> Result<(), ApiError> {
    let n = v.chars().count();
    if n == 0 || n > 64 {
        return Err(ApiError::field(
            "invalid_field",
            field,
            format!("`{field}` must have 1 to 64 characters, it has {n}"),
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(ApiError::field(
            "invalid_field",
            field,
            format!(
                "`{field}` may hold only letters, digits, `_` and `-`; it holds U+{:04X}",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// Free text of 1 (or 0) to `max` characters without control characters.
pub fn text(field: &str, v: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = v.chars().count();
    if n < min || n > max {
        return Err(ApiError::field(
            "invalid_field",
            field,
            format!("`{field}` must have {min} to {max} characters, it has {n}"),
        ));
    }
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        return Err(ApiError::field(
            "invalid_field",
            field,
            format!("`{field}` holds the control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}
