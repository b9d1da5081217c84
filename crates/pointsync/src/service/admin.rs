//! The admin listener (loopback by default): health, readiness, metrics, status.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;

use super::receiver::Receiver;
use crate::store::Store;

async fn healthz() -> &'static str {
    "ok"
}

/// Ready means a callback can be durably accepted now: the database answers a read *and* takes a
/// tiny committed write (a full disk, a read-only file or a lost volume fail the probe).
async fn readyz<S: Store>(State(r): State<Arc<Receiver<S>>>) -> Response {
    let checked = match r.store.ping().await {
        Ok(()) => r
            .store
            .probe_write(r.clock.now_ms())
            .await
            .map_err(|e| ("probe", e)),
        Err(e) => Err(("ping", e)),
    };
    match checked {
        Ok(()) => "ready".into_response(),
        Err((op, e)) => {
            r.metrics.store_error(op, &e);
            tracing::warn!(cause = e.cause(), "not ready: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: cannot accept callbacks durably now: {e}"),
            )
                .into_response()
        }
    }
}

/// The Prometheus scrape: the backlog gauges are read from the store now (an index range, cheap
/// with millions of transactions stored), then everything is rendered.
async fn metrics<S: Store>(State(r): State<Arc<Receiver<S>>>) -> String {
    match r.store.backlog().await {
        Ok(b) => {
            for state in ["pending", "inflight", "parked", "dead"] {
                r.metrics
                    .backlog
                    .with_label_values(&[state])
                    .set(*b.get(state).unwrap_or(&0));
            }
        }
        Err(e) => tracing::warn!("metrics: cannot read the sync backlog: {e}"),
    }
    r.metrics.render()
}

async fn status<S: Store>(State(r): State<Arc<Receiver<S>>>) -> Response {
    match r.store.status().await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The admin app: `/healthz`, `/readyz`, `/metrics`, `/admin/status` and the operator console.
/// With `token`, every request but `/healthz` must carry it (`Authorization: Bearer …`, or the
/// cookie `/login?token=…` sets).
pub fn admin_app<S: Store>(r: Arc<Receiver<S>>, token: Option<String>) -> Router {
    let app = Router::new()
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/admin/status", get(status::<S>))
        .merge(super::console::routes::<S>())
        .with_state(r);
    let app = match token {
        Some(t) => app.layer(axum::middleware::from_fn(move |req, next| {
            require_token(t.clone(), req, next)
        })),
        None => app,
    };
    Router::new().route("/healthz", get(healthz)).merge(app)
}

async fn require_token(
    token: String,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let eq = |given: &str| {
        aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), token.as_bytes())
            .is_ok()
    };
    if req.uri().path() == "/login" {
        let given = req.uri().query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        });
        if given.as_deref().is_some_and(eq) {
            return (
                StatusCode::SEE_OTHER,
                [
                    (http::header::LOCATION, "/".to_string()),
                    (
                        http::header::SET_COOKIE,
                        format!("pointsync_admin={token}; HttpOnly; SameSite=Strict; Path=/"),
                    ),
                ],
            )
                .into_response();
        }
        return (StatusCode::UNAUTHORIZED, "wrong admin token").into_response();
    }
    let headers = req.headers();
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("pointsync_admin="));
    if bearer.is_some_and(eq) || cookie.is_some_and(eq) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "the admin listener needs its token (service.admin_token_file): Authorization: Bearer, \
             or open /login?token=… once",
        )
            .into_response()
    }
}
