//! An axum extractor: buffers the raw body (with the parser's size limit), verifies and decrypts.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, routing::post};
//! use wechatpay::notify::{NotifyParser, axum::VerifiedNotification};
//!
//! async fn receive(VerifiedNotification(n): VerifiedNotification) -> http::StatusCode {
//!     println!("{} {}", n.event_type, n.id); // store durably, then:
//!     http::StatusCode::NO_CONTENT
//! }
//! fn app(parser: NotifyParser) -> Router {
//!     Router::new().route("/notify", post(receive)).with_state(Arc::new(parser))
//! }
//! ```

use std::sync::Arc;

use axum::extract::{FromRef, FromRequest, Request};
use axum::response::{IntoResponse, Response};

use super::{Notification, NotifyError, NotifyParser, answer};

/// A verified, decrypted callback, extracted from the request.
#[derive(Debug, Clone)]
pub struct VerifiedNotification(pub Notification);

/// Why extraction failed; answers WeChat with the matching failure (4xx + `{"code":"FAIL",…}`).
#[derive(Debug, Clone)]
pub struct NotifyRejection {
    /// The cause.
    pub error: NotifyError,
}

impl IntoResponse for NotifyRejection {
    fn into_response(self) -> Response {
        answer::rejected(&self.error).into_response()
    }
}

impl<S> FromRequest<S> for VerifiedNotification
where
    Arc<NotifyParser>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = NotifyRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let parser = Arc::<NotifyParser>::from_ref(state);
        let (parts, body) = req.into_parts();
        let limit = parser.body_limit();
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| NotifyRejection {
                error: NotifyError::TooLarge {
                    len: limit + 1,
                    limit,
                },
            })?;
        parser
            .verify(&parts.headers, &bytes)
            .map(VerifiedNotification)
            .map_err(|error| NotifyRejection { error })
    }
}
