//! The mall API: the mall's own systems (mini-program, service desk, POS, car park) read members,
//! redeem points and report cars. JSON over HTTP under `/v1`, described by `/v1/openapi.json`
//! (generated from these types), every call authenticated by a bearer token with scopes.
//!
//! - `auth.rs` — tokens (constant-time), scopes, the refusals and their metrics;
//! - `body.rs` — the request body: size, JSON, unknown fields, each problem a code and a field;
//! - `handlers.rs` — the endpoints.
//!
//! The router is built from [`ROUTES`], the same table the OpenAPI test checks.

mod auth;
mod body;
mod handlers;

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use http::{Method, StatusCode};
use serde::Serialize;
use tokio::sync::Notify;
use utoipa::OpenApi as _;

pub use handlers::{
    ApiDoc, MemberResponse, ParkingAccepted, ParkingBody, accept_parking, member_view,
};

use super::Queries;
use crate::clock::Clock;
use crate::config::{ApiToken, Config, Scope};
use crate::metrics::Metrics;
use crate::store::Store;

/// One route: its method, path (axum's and OpenAPI's `{param}` syntax) and the scope it needs
/// (`None`: any valid token).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Method.
    pub method: &'static str,
    /// Path.
    pub path: &'static str,
    /// Scope needed.
    pub scope: Option<Scope>,
}

/// Every route the mall API serves.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/v1/members/{openid}",
        scope: Some(Scope::MembersRead),
    },
    Route {
        method: "GET",
        path: "/v1/members/{openid}/ledger",
        scope: Some(Scope::MembersRead),
    },
    Route {
        method: "POST",
        path: "/v1/members/{openid}/adjustments",
        scope: Some(Scope::PointsAdjust),
    },
    Route {
        method: "POST",
        path: "/v1/parkings",
        scope: Some(Scope::ParkingsWrite),
    },
    Route {
        method: "GET",
        path: "/v1/parkings/{id}",
        scope: Some(Scope::ParkingsWrite),
    },
    Route {
        method: "GET",
        path: "/v1/openapi.json",
        scope: None,
    },
];

/// The mall API's state.
#[derive(Debug)]
pub struct MallApi<S> {
    /// The store.
    pub store: S,
    /// Configured tokens.
    pub tokens: Vec<ApiToken>,
    /// WeChat's queries (pending points).
    pub queries: Arc<Queries>,
    /// Let adjustments take a balance below zero.
    pub allow_negative_balance: bool,
    /// Default appid of parkings (else the member's latest payment's).
    pub appid: Option<String>,
    /// 品牌ID of parkings.
    pub brandid: Option<i64>,
    /// Largest request body.
    pub body_limit: usize,
    /// Metrics.
    pub metrics: Metrics,
    /// Wakes the dispatcher when a parking is enqueued.
    pub wake: Arc<Notify>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl<S> MallApi<S> {
    /// From the config (tokens read from their files).
    pub fn new(
        config: &Config,
        store: S,
        queries: Arc<Queries>,
        metrics: Metrics,
        wake: Arc<Notify>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, crate::config::ConfigError> {
        let m = config.mall_api.clone().unwrap_or_default();
        Ok(Self {
            store,
            tokens: m.load_tokens()?,
            queries,
            allow_negative_balance: config.rules.allow_negative_balance,
            appid: config.wechatpay.appids.first().cloned(),
            brandid: config.wechatpay.brandid,
            body_limit: m.body_limit,
            metrics,
            wake,
            clock,
        })
    }
}

/// An error answer: `{"code", "message"}` (and `field` when one field is at fault). Codes are
/// stable; messages are for people.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// Stable code: `unauthorized`, `forbidden`, `not_found`, `method_not_allowed`,
    /// `malformed_json`, `unknown_field`, `missing_field`, `invalid_field`, `body_too_large`,
    /// `member_not_found`, `parking_not_found`, `adjustment_conflict`, `insufficient_points`,
    /// `idempotency_conflict`, `not_configured`, `unavailable`.
    pub code: &'static str,
    /// What happened, in a sentence.
    pub message: String,
    /// The field at fault (`openid`, `points`, `time`, …), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error without a field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A 400 naming `field`.
    pub fn field(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    fn store(e: &crate::store::StoreError) -> Self {
        tracing::error!(cause = e.cause(), "mall API: {e}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "the database cannot serve this now ({}); nothing was changed; retry later",
                e.cause()
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(&self)).into_response()
    }
}

fn route_handler<S: Store>(r: &Route) -> MethodRouter<Arc<MallApi<S>>> {
    match (r.method, r.path) {
        ("GET", "/v1/members/{openid}") => get(handlers::member::<S>),
        ("GET", "/v1/members/{openid}/ledger") => get(handlers::ledger::<S>),
        ("POST", "/v1/members/{openid}/adjustments") => post(handlers::adjust::<S>),
        ("POST", "/v1/parkings") => post(handlers::post_parking::<S>),
        ("GET", "/v1/parkings/{id}") => get(handlers::get_parking::<S>),
        ("GET", "/v1/openapi.json") => get(openapi_json),
        _ => axum::routing::any(not_found),
    }
}

async fn openapi_json() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route: see /v1/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method: see /v1/openapi.json",
    )
}

/// The mall API's router.
pub fn mall_app<S: Store>(api: Arc<MallApi<S>>) -> Router {
    let mut router = Router::new();
    for r in ROUTES {
        router = router.route(r.path, route_handler::<S>(r));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            auth::authenticate::<S>,
        ))
        .with_state(api)
}

/// Whether `method path` is in the OpenAPI document (the test's view of [`ROUTES`]).
pub fn documented(method: &str, path: &str) -> bool {
    let doc = ApiDoc::openapi();
    let Some(item) = doc.paths.paths.get(path) else {
        return false;
    };
    let op = match Method::from_bytes(method.as_bytes()) {
        Ok(Method::GET) => &item.get,
        Ok(Method::POST) => &item.post,
        Ok(Method::PUT) => &item.put,
        Ok(Method::DELETE) => &item.delete,
        _ => return false,
    };
    op.is_some()
}

/// Serves the mall API on its own thread and runtime, its threads (the blocking pool's too, where
/// its database reads run) at `nice` (Linux niceness, 0–19): under load the scheduler runs WeChat's
/// callbacks and the syncs first, so the mall's own traffic cannot delay their acknowledgement.
/// The receiver resolves when the API has stopped (after `stop`).
pub fn serve_apart(
    listener: std::net::TcpListener,
    router: Router,
    nice: u8,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    listener.set_nonblocking(true)?;
    let lower = move || lower_priority(nice);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("pointsync-mall-api")
        .on_thread_start(lower)
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pointsync-mall-api".into())
        .spawn(move || {
            lower();
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        let _ = axum::serve(l, router)
                            .with_graceful_shutdown(async move {
                                let _ = stop.changed().await;
                            })
                            .await;
                    }
                    Err(e) => tracing::error!("mall API listener: {e}"),
                }
            });
            let _ = done.send(());
        })?;
    Ok(finished)
}

/// Lowers the calling thread's priority to niceness `nice` (a thread may always lower its own).
fn lower_priority(nice: u8) {
    if nice == 0 {
        return;
    }
    // the crate's cross-platform scale maps 0–99 linearly onto niceness 19 … −20
    let value = 99 * (19 - u16::from(nice.min(19))) / 39;
    let set = thread_priority::ThreadPriorityValue::try_from(value as u8)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            thread_priority::set_current_thread_priority(
                thread_priority::ThreadPriority::Crossplatform(v),
            )
            .map_err(|e| e.to_string())
        });
    if let Err(e) = set {
        tracing::warn!("mall API: cannot lower this thread's priority (mall_api.nice): {e}");
    }
}
