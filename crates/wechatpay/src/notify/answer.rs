//! The answers WeChat expects from a callback receiver: `2xx` on success (no body needed);
//! `4xx`/`5xx` with `{"code":"FAIL","message":"…"}` otherwise (WeChat then retries).

use http::{Response, StatusCode, header};

/// `204 No Content`: the callback was accepted (stored durably).
pub fn success() -> Response<String> {
    let mut r = Response::new(String::new());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// A failure answer with WeChat's body shape. `message` is cut to 64 characters (WeChat's limit).
pub fn failure(status: StatusCode, message: &str) -> Response<String> {
    let message: String = message.chars().take(64).collect();
    let body = serde_json::json!({"code": "FAIL", "message": message}).to_string();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The failure answer for a rejected callback.
pub fn rejected(e: &super::NotifyError) -> Response<String> {
    failure(e.status(), &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_204_without_body() {
        let r = success();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(r.body().is_empty());
    }

    #[test]
    fn failure_has_wechats_shape_and_a_64_character_message() {
        let r = failure(StatusCode::SERVICE_UNAVAILABLE, &"库".repeat(100));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_str(r.body()).unwrap();
        assert_eq!(v["code"], "FAIL");
        assert_eq!(v["message"].as_str().unwrap().chars().count(), 64);
        let e = crate::notify::NotifyError::Verify(crate::error::VerifyError::Probe);
        assert_eq!(rejected(&e).status(), StatusCode::UNAUTHORIZED);
    }
}
