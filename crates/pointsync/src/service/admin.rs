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

/// The admin app: `/healthz`, `/readyz`, `/metrics`, `/admin/status`.
pub fn admin_app<S: Store>(r: Arc<Receiver<S>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/admin/status", get(status::<S>))
        .with_state(r)
}
