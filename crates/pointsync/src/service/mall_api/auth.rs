//! Bearer tokens: the presented token's SHA-256 is compared in constant time with every
//! configured token's (so neither the match nor its position leaks through timing), then the
//! route's scope is checked. Refusals are counted and logged by token name, never by value.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::{ApiError, MallApi, ROUTES};
use crate::config::{ApiToken, token_digest};
use crate::store::Store;

/// The caller, for handlers: the token's name.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

fn matching<'a>(tokens: &'a [ApiToken], presented: &str) -> Option<&'a ApiToken> {
    let digest = token_digest(presented);
    let mut found = None;
    for t in tokens {
        // every token is compared, whatever matched before
        if aws_lc_rs::constant_time::verify_slices_are_equal(&t.digest, &digest).is_ok() {
            found = Some(t);
        }
    }
    found
}

fn refuse<S>(
    api: &MallApi<S>,
    route: &str,
    status: StatusCode,
    reason: &'static str,
    token: &str,
    message: String,
) -> Response {
    api.metrics
        .api_refusals
        .with_label_values(&[reason, token])
        .inc();
    api.metrics
        .api_requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    tracing::warn!(route, reason, token, "mall API call refused: {message}");
    let code = if status == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "unauthorized"
    };
    let mut res = ApiError::new(status, code, message).into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    res
}

/// The middleware: authenticates, checks the scope, counts the answer by route and status.
pub async fn authenticate<S: Store>(
    State(api): State<Arc<MallApi<S>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(presented) = presented else {
        return refuse(
            &api,
            &route,
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "-",
            "an `Authorization: Bearer <token>` header is required".into(),
        );
    };
    let Some(token) = matching(&api.tokens, presented) else {
        return refuse(
            &api,
            &route,
            StatusCode::UNAUTHORIZED,
            "wrong_token",
            "-",
            "the bearer token is not one of mall_api.tokens".into(),
        );
    };
    let method = req.method().as_str().to_string();
    let scope = ROUTES
        .iter()
        .find(|r| r.path == route && r.method == method)
        .and_then(|r| r.scope);
    if let Some(scope) = scope
        && !token.scopes.contains(&scope)
    {
        return refuse(
            &api,
            &route,
            StatusCode::FORBIDDEN,
            "missing_scope",
            &token.name,
            format!(
                "token `{}` lacks the scope `{}` this call needs",
                token.name,
                scope.as_str()
            ),
        );
    }
    req.extensions_mut().insert(Caller(token.name.clone()));
    let res = next.run(req).await;
    api.metrics
        .api_requests
        .with_label_values(&[&route, res.status().as_str()])
        .inc();
    res
}
