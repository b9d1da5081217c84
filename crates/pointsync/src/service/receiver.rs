//! The public listener: WeChat's callbacks, verified on their raw bytes, decided and stored
//! durably before the 2xx.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt as _;
use http_body_util::LengthLimitError;
use tokio::sync::Notify;
use wechatpay::notify::{Event, MallTransaction, NotifyParser, answer};

use super::dispatcher::{Handoff, Slot};
use crate::clock::{Clock, monotonic};
use crate::metrics::Metrics;
use crate::rules::{Rules, UnknownAuthorization};
use crate::store::{Incoming, IngestContext, Ingested, Store, StoreError};

/// Shared state of the receiver and admin endpoints.
#[derive(Debug)]
pub struct Receiver<S> {
    /// The store.
    pub store: S,
    /// Verifies and decrypts callbacks.
    pub parser: NotifyParser,
    /// Points rules.
    pub rules: Rules,
    /// Partner mode.
    pub partner_mode: bool,
    /// Deadline for handling one callback.
    pub handler_timeout: Duration,
    /// Deadline for a callback's body, once its headers are in.
    pub body_timeout: Duration,
    /// Largest body read.
    pub body_limit: usize,
    /// Metrics.
    pub metrics: Metrics,
    /// Wakes the dispatcher when a sync is enqueued.
    pub wake: Arc<Notify>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Watches how far our clock is from WeChat's.
    pub clock_watch: Arc<super::ClockWatch>,
    /// Told when a callback is signed by a serial not trusted yet (a new platform certificate).
    pub unknown_serial: Arc<Notify>,
    /// The console's per-process form token.
    pub csrf: String,
    /// The newest errors, for the console.
    pub recent_errors: Arc<super::RecentErrors>,
    /// WeChat's query APIs (`rules.unknown_authorization = "query"`).
    pub queries: Arc<super::Queries>,
    /// Members whose authorization the store knows (it never becomes unknown again): their
    /// payments need no query.
    pub known_members: KnownMembers,
    /// Where a payment's sync is leased in its own transaction when the dispatcher has room
    /// (`dispatcher.lease_on_receipt`); `None`: every sync waits for a claim.
    pub handoff: Option<Arc<Handoff>>,
}

/// Members whose authorization is known, so their payments skip the store read before ingest.
#[derive(Debug, Default)]
pub struct KnownMembers(std::sync::Mutex<std::collections::HashSet<String>>);

impl KnownMembers {
    const MAX: usize = 200_000;

    fn contains(&self, openid: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(openid)
    }

    fn insert(&self, openid: &str) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() >= Self::MAX {
            set.clear();
        }
        set.insert(openid.to_string());
    }
}

/// Before a payment is decided: a member whose authorization is unknown is asked about
/// (`rules.unknown_authorization = "query"`), and so is a member not known as authorized whose
/// manual application arrives (`commit_tag`: she may have authorized since). What WeChat says is
/// stored first, so the decision reads it. A failed query leaves the state unknown: the payment
/// is then kept not credited (until a manual application) and the failure logged and counted.
async fn learn_authorization<S: Store>(r: &Receiver<S>, t: &MallTransaction) {
    let manual = t.commit_tag.is_some();
    if !manual && r.known_members.contains(&t.openid) {
        return;
    }
    let now = r.clock.now_ms();
    let state = match r.store.member_summary(&t.openid, now).await {
        Ok(m) => m.map(|m| m.authorization.state),
        // the ingest that follows meets the same failure and answers 5xx
        Err(_) => return,
    };
    let state = state.as_deref().unwrap_or("unknown");
    let ask = if manual {
        state != "authorized"
    } else {
        state == "unknown"
    };
    if !ask {
        r.known_members.insert(&t.openid);
        return;
    }
    let Some(appid) = r.queries.appid(Some(&t.appid)) else {
        return;
    };
    let sub_mchid = r.partner_mode.then_some(t.mchid.as_str());
    match r.queries.authorization(&t.openid, &appid, sub_mchid).await {
        Ok(a) => match r.store.record_authorization(&a, r.clock.now_ms()).await {
            Ok(()) if a.authorized.is_some() => r.known_members.insert(&t.openid),
            Ok(()) => {}
            Err(e) => r.metrics.store_error("record_authorization", &e),
        },
        Err(e) => tracing::warn!(
            transaction_id = t.transaction_id,
            "cannot ask WeChat whether the member authorized points; the payment is kept not \
             credited until she applies for its points: {e}"
        ),
    }
}

/// The header marking `pointsync doctor --probe`'s request.
pub const DOCTOR_PROBE: &str = "pointsync-doctor-probe";

/// What the receiver saw of a probe: SHA-256 over the raw body and the `Wechatpay-*` headers, so
/// the doctor can tell whether a proxy forwards them intact.
pub fn probe_digest(headers: &HeaderMap, body: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for name in [
        "wechatpay-serial",
        "wechatpay-signature",
        "wechatpay-timestamp",
        "wechatpay-nonce",
        "wechatpay-signature-type",
    ] {
        ctx.update(name.as_bytes());
        ctx.update(b"=");
        ctx.update(headers.get(name).map_or(&b""[..], |v| v.as_bytes()));
        ctx.update(b"\n");
    }
    ctx.update(body);
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// WeChat's clock minus ours, from a callback's `Wechatpay-Timestamp`.
fn callback_skew(headers: &HeaderMap, now_ms: i64) -> Option<i64> {
    let t: i64 = headers
        .get("wechatpay-timestamp")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(t - now_ms.div_euclid(1000))
}

async fn callback<S: Store>(
    State(r): State<Arc<Receiver<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = monotonic();
    let request_id = headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let read = http_body_util::Limited::new(body, r.body_limit).collect();
    let body = match tokio::time::timeout(r.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            // an oversize body (over service.body_limit) or one that could not be read
            let (status, cause) = if e.downcast_ref::<LengthLimitError>().is_some() {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            } else {
                (StatusCode::BAD_REQUEST, "unreadable_body")
            };
            r.metrics.rejected(cause);
            tracing::warn!(cause, request_id, "callback rejected: {e}");
            let message = format!("callback body rejected: {cause}");
            return answer::failure(status, &message).into_response();
        }
        Err(_) => {
            // headers in, body stalled: close rather than hold the connection
            r.metrics
                .connections
                .with_label_values(&["body_timeout"])
                .inc();
            tracing::warn!(
                request_id,
                "callback body not received within service.body_timeout_ms"
            );
            let mut res = answer::failure(StatusCode::REQUEST_TIMEOUT, "body not received in time")
                .into_response();
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return res;
        }
    };
    if headers.contains_key(DOCTOR_PROBE) {
        // `pointsync doctor --probe` through the proxy: say what arrived, store nothing
        r.metrics
            .callbacks
            .with_label_values(&["doctor_probe"])
            .inc();
        let digest = probe_digest(&headers, &body);
        return axum::Json(serde_json::json!({ "probe": digest })).into_response();
    }
    let verified = r.parser.verify(&headers, &body);
    let sample = match &verified {
        Ok(_) => true,
        Err(e) => e.cause() == "timestamp_window",
    };
    if sample && let Some(skew) = callback_skew(&headers, r.clock.now_ms()) {
        r.clock_watch.observe("callback timestamps", skew);
    }
    let n = match verified {
        Ok(n) => n,
        Err(e) => {
            r.metrics.rejected(e.cause());
            tracing::warn!(cause = e.cause(), request_id, "callback rejected: {e}");
            if e.cause() == "unknown_serial" {
                r.unknown_serial.notify_one();
            }
            return answer::rejected(&e).into_response();
        }
    };
    let incoming = Incoming::from(n);
    if let Event::MallTransaction(t) = &incoming.event
        && r.rules.unknown_authorization == UnknownAuthorization::Query
    {
        learn_authorization(&r, t).await;
    }
    let now_ms = r.clock.now_ms();
    // a payment's sync is leased in its own transaction when the dispatcher has room now
    let slot = match (&incoming.event, &r.handoff) {
        (Event::MallTransaction(_), Some(h)) => h.slot(),
        _ => None,
    };
    // from here on the handler awaits the store: if WeChat hangs up, the drop is counted
    let abandoned = Abandoned(Some(&r.metrics));
    let leasing = slot.is_some();
    let outcome = match slot {
        None => {
            let ctx = IngestContext {
                rules: &r.rules,
                partner_mode: r.partner_mode,
                now_ms,
            };
            let stored = r.store.ingest(&incoming, &ctx);
            tokio::time::timeout(r.handler_timeout, stored)
                .await
                .map(|res| res.map(|i| (i, false)))
        }
        Some(slot) => {
            // in a task of its own, so a leased sync reaches the dispatcher even if WeChat hangs up
            let stored = tokio::spawn(ingest_leased(r.clone(), incoming.clone(), now_ms, slot));
            tokio::time::timeout(r.handler_timeout, stored)
                .await
                .map(|joined| {
                    joined.unwrap_or_else(|e| {
                        Err(StoreError::unfinished(
                            "(the store)",
                            "storing a callback",
                            e,
                        ))
                    })
                })
        }
    };
    let (status, label) = match &outcome {
        Ok(Ok((i, handed))) => {
            if !leasing {
                // (the leasing task passed it before handing its sync over)
                crate::crash::point("after_commit");
            }
            if !handed && matches!(i, Ingested::Payment { .. } | Ingested::ManualCredit { .. }) {
                r.wake.notify_one();
            }
            if let Ingested::Rejected(why) = i {
                tracing::error!(
                    notification_id = incoming.notification_id,
                    request_id,
                    "verified callback is business-invalid, stored as rejected: {why}"
                );
            }
            (StatusCode::NO_CONTENT, outcome_label(i))
        }
        Ok(Err(e)) => {
            r.metrics.store_error("ingest", e);
            r.recent_errors.push(format!(
                "{}: cannot store a callback ({}): {e}",
                crate::domain::china_time(r.clock.now_ms()),
                incoming.notification_id
            ));
            tracing::error!(
                notification_id = incoming.notification_id,
                request_id,
                cause = e.cause(),
                "cannot store callback, answering 500 so WeChat retries: {e}"
            );
            (StatusCode::INTERNAL_SERVER_ERROR, "db_error")
        }
        Err(_) => {
            tracing::error!(
                notification_id = incoming.notification_id,
                request_id,
                "storing the callback took too long, answering 503"
            );
            (StatusCode::SERVICE_UNAVAILABLE, "timeout")
        }
    };
    abandoned.disarm();
    r.metrics.callbacks.with_label_values(&[label]).inc();
    r.metrics
        .callback_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(
        event_type = incoming.event_type,
        notification_id = incoming.notification_id,
        outcome = label,
        "callback"
    );
    if status == StatusCode::NO_CONTENT {
        answer::success().into_response()
    } else {
        answer::failure(status, "暂时无法处理，请重试").into_response()
    }
}

/// Stores a payment with its sync leased under `slot`, and hands the sync to the dispatcher.
/// Returns what was stored and whether a sync was handed.
async fn ingest_leased<S: Store>(
    r: Arc<Receiver<S>>,
    incoming: Incoming,
    now_ms: i64,
    slot: Slot,
) -> Result<(Ingested, bool), StoreError> {
    let ctx = IngestContext {
        rules: &r.rules,
        partner_mode: r.partner_mode,
        now_ms,
    };
    let stored = r
        .store
        .ingest_leased(&incoming, &ctx, &slot.lease())
        .await?;
    crate::crash::point("after_commit");
    match stored {
        (i, Some(claimed)) => {
            slot.hand(claimed);
            Ok((i, true))
        }
        (i, None) => Ok((i, false)),
    }
}

/// Counts a callback whose handler was dropped before answering (WeChat hung up first): its
/// ingest, if queued, still completes or rolls back on the writer, and WeChat retries.
struct Abandoned<'a>(Option<&'a Metrics>);

impl Abandoned<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.callbacks.with_label_values(&["abandoned"]).inc();
        }
    }
}

fn outcome_label(i: &Ingested) -> &'static str {
    match i {
        Ingested::Payment { .. } => "payment",
        Ingested::ManualCredit { .. } => "manual_credit",
        Ingested::Refund { .. } => "refund",
        Ingested::Held => "held",
        Ingested::Authorization => "authorization",
        Ingested::Duplicate => "duplicate",
        Ingested::Rejected(_) => "rejected",
        Ingested::Ignored => "ignored",
    }
}

/// The public app: the callback path and nothing else.
pub fn public_app<S: Store>(r: Arc<Receiver<S>>, path: &str, body_limit: usize) -> Router {
    Router::new()
        .route(path, post(callback::<S>))
        // the body limit and deadline are applied while reading it, in the handler
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(r)
}
