//! The running service: the callback receiver (public listener), the admin endpoints (loopback
//! listener), the outbox dispatcher and the lease rescuer, with graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use wechatpay::RawRequest;
use wechatpay::notify::{NotifyParser, answer};

use crate::config::{Config, DispatcherConfig};
use crate::metrics::Metrics;
use crate::rules::Rules;
use crate::store::{Claimed, IngestContext, Ingested, Store, SyncOutcome};

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

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
    /// Metrics.
    pub metrics: Metrics,
    /// Wakes the dispatcher when a sync is enqueued.
    pub wake: Arc<Notify>,
}

async fn callback<S: Store>(
    State(r): State<Arc<Receiver<S>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let abandoned = Abandoned(Some(&r.metrics));
    let request_id = headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let n = match r.parser.verify(&headers, &body) {
        Ok(n) => n,
        Err(e) => {
            r.metrics
                .callbacks
                .with_label_values(&["verification_failed"])
                .inc();
            r.metrics
                .verification_failures
                .with_label_values(&[e.cause()])
                .inc();
            tracing::warn!(cause = e.cause(), request_id, "callback rejected: {e}");
            return answer::rejected(&e).into_response();
        }
    };
    let incoming = crate::store::Incoming::from(n);
    let ctx = IngestContext {
        rules: &r.rules,
        partner_mode: r.partner_mode,
        now_ms: now_ms(),
    };
    let outcome = tokio::time::timeout(r.handler_timeout, r.store.ingest(&incoming, &ctx)).await;
    let (status, label) = match &outcome {
        Ok(Ok(i)) => {
            crate::crash::point("after_commit");
            if matches!(i, Ingested::Payment { .. }) {
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
            tracing::error!(
                notification_id = incoming.notification_id,
                request_id,
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
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(r)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz<S: Store>(State(r): State<Arc<Receiver<S>>>) -> Response {
    match r.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")).into_response(),
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

/// The admin app (loopback listener): `/healthz`, `/readyz`, `/metrics`, `/admin/status`.
pub fn admin_app<S: Store>(r: Arc<Receiver<S>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/admin/status", get(status::<S>))
        .with_state(r)
}

/// A token bucket: at most `qps` requests per second, bursts of up to one second's worth.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(qps: f64) -> Self {
        Self {
            qps,
            state: tokio::sync::Mutex::new((qps.max(1.0), Instant::now())),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let mut s = self.state.lock().await;
        loop {
            let now = Instant::now();
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.qps).min(self.qps.max(1.0));
            s.1 = now;
            if s.0 >= 1.0 {
                s.0 -= 1.0;
                return;
            }
            tokio::time::sleep(Duration::from_secs_f64((1.0 - s.0) / self.qps)).await;
        }
    }
}

/// Sends queued points syncs.
#[derive(Debug)]
pub struct Dispatcher<S> {
    store: S,
    client: wechatpay::Client,
    cfg: DispatcherConfig,
    owner: String,
    bucket: TokenBucket,
    metrics: Metrics,
}

/// The request stored at enqueue time, byte for byte.
fn stored_request(c: &Claimed) -> RawRequest {
    let method = Method::from_bytes(c.method.as_bytes()).unwrap_or(Method::POST);
    RawRequest::new(method, c.path.clone(), c.payload.clone().into_bytes())
}

impl<S: Store> Dispatcher<S> {
    /// A dispatcher with a fresh owner id (one per process start).
    pub fn new(
        store: S,
        client: wechatpay::Client,
        cfg: DispatcherConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            client,
            bucket: TokenBucket::new(cfg.qps),
            owner: format!(
                "{}-{}",
                std::process::id(),
                wechatpay::crypto::random_token(10)
            ),
            cfg,
            metrics,
        }
    }

    /// This process's lease owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Back-off before attempt `attempt + 1`: full jitter over `min(cap, base × 2^(attempt−1))`.
    pub fn backoff_ms(&self, attempt: i64) -> i64 {
        let exp = self
            .cfg
            .backoff_base_ms
            .saturating_mul(1i64 << (attempt - 1).clamp(0, 30));
        let ceiling = exp.min(self.cfg.backoff_cap_ms).max(1);
        rand::random_range(0..=ceiling)
    }

    fn classify(
        &self,
        c: &Claimed,
        result: Result<wechatpay::Response, wechatpay::Error>,
        now: i64,
    ) -> SyncOutcome {
        match result {
            Ok(_) => SyncOutcome::Done,
            Err(e) if e.is_retryable() || matches!(e, wechatpay::Error::Verify { .. }) => {
                SyncOutcome::Retry {
                    due_at: now + self.backoff_ms(c.attempt),
                    error: e.to_string(),
                }
            }
            Err(wechatpay::Error::Api(api)) => {
                let whole = serde_json::json!({
                    "status": api.status, "code": api.code, "message": api.message, "detail": api.detail,
                    "request_id": api.request_id, "body": api.body,
                    "explanation": api.sign_explanation.as_ref().map(ToString::to_string), "hint": api.hint,
                });
                SyncOutcome::Parked {
                    error: whole.to_string(),
                }
            }
            Err(e) => SyncOutcome::Parked {
                error: e.to_string(),
            },
        }
    }

    async fn send_one(self: Arc<Self>, c: Claimed) {
        let now = now_ms();
        let outcome = if now - c.created_at > self.cfg.max_age_hours * 3_600_000 {
            SyncOutcome::Dead {
                error: format!("older than {} hours, not sent", self.cfg.max_age_hours),
            }
        } else {
            self.bucket.acquire().await;
            crate::crash::point("before_send");
            let started = Instant::now();
            let req = stored_request(&c);
            let result = self.client.execute(&req).await;
            self.metrics
                .sync_seconds
                .observe(started.elapsed().as_secs_f64());
            if result.is_ok() {
                crate::crash::point("after_204");
            }
            if let Err(e) = &result {
                let request_id = e
                    .api()
                    .and_then(|a| a.request_id.clone())
                    .unwrap_or_default();
                tracing::warn!(
                    transaction_id = c.transaction_id,
                    attempt = c.attempt,
                    request_id,
                    "points sync failed: {e}"
                );
            }
            self.classify(&c, result, now_ms())
        };
        let label = match &outcome {
            SyncOutcome::Done => "done",
            SyncOutcome::Retry { .. } => "retry",
            SyncOutcome::Parked { .. } => "parked",
            SyncOutcome::Dead { .. } => "dead",
        };
        match self
            .store
            .complete(&c, &self.owner, &outcome, now_ms())
            .await
        {
            Ok(true) => {
                self.metrics.syncs.with_label_values(&[label]).inc();
                if label == "done" {
                    let secs = (now_ms() - c.created_at).max(0) as f64 / 1000.0;
                    self.metrics.callback_to_sync_seconds.observe(secs);
                }
            }
            Ok(false) => {
                self.metrics.syncs.with_label_values(&["fenced_out"]).inc();
                tracing::warn!(
                    transaction_id = c.transaction_id,
                    attempt = c.attempt,
                    "lease was taken over; completion ignored"
                );
            }
            Err(e) => tracing::error!(
                transaction_id = c.transaction_id,
                "cannot record sync outcome (the lease will expire and the row be retried): {e}"
            ),
        }
    }

    /// Sends `c` in its own task once one of `permits` (the in-flight limit) is free.
    async fn spawn_send(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        permits: &Arc<Semaphore>,
        c: Claimed,
    ) {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let me = self.clone();
        tasks.spawn(async move {
            me.send_one(c).await;
            drop(permit);
        });
    }

    /// One round: claim due rows and send them, at most `concurrency` at once. Returns how many
    /// were claimed.
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, crate::store::StoreError> {
        let claimed = self
            .store
            .claim(&self.owner, now_ms(), self.cfg.lease_ms, self.cfg.batch)
            .await?;
        let n = claimed.len();
        let permits = Arc::new(Semaphore::new(self.cfg.concurrency));
        let mut tasks = JoinSet::new();
        for c in claimed {
            self.spawn_send(&mut tasks, &permits, c).await;
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }

    /// Runs until `stop` turns true. Keeps up to `concurrency` syncs in flight, claiming more as
    /// slots free up (no per-batch barrier); sleeps when nothing is due, woken early by `wake`.
    /// On stop it claims nothing more, lets in-flight syncs finish, and releases any lease left.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.cfg.concurrency));
        let mut tasks = JoinSet::new();
        loop {
            if *stop.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let free = permits.available_permits() as i64;
            let mut claimed = 0;
            if free > 0 {
                match self
                    .store
                    .claim(
                        &self.owner,
                        now_ms(),
                        self.cfg.lease_ms,
                        free.min(self.cfg.batch),
                    )
                    .await
                {
                    Ok(rows) => {
                        claimed = rows.len() as i64;
                        for c in rows {
                            self.spawn_send(&mut tasks, &permits, c).await;
                        }
                    }
                    Err(e) => tracing::error!("dispatcher cannot claim work (retrying): {e}"),
                }
            }
            if claimed > 0 && claimed == free.min(self.cfg.batch) {
                // probably more due: claim again as soon as a slot frees
                tokio::select! {
                    _ = tasks.join_next() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(self.cfg.poll_ms)) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = stop.changed() => {}
            }
        }
        while tasks.join_next().await.is_some() {}
        match self.store.release(&self.owner).await {
            Ok(n) if n > 0 => tracing::info!("released {n} leased syncs"),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot release leases (they will expire): {e}"),
        }
    }
}

/// Returns expired leases to pending, until `stop`.
pub async fn rescuer<S: Store>(
    store: S,
    every: Duration,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match store.rescue(now_ms()).await {
            Ok(n) if n > 0 => {
                metrics.syncs.with_label_values(&["rescued"]).inc_by(n);
                tracing::warn!("rescued {n} syncs whose lease expired");
            }
            Ok(_) => {}
            Err(e) => tracing::error!("rescuer: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A running service's addresses and handles.
#[derive(Debug)]
pub struct Running {
    /// The public (callback) listener's address.
    pub public_addr: std::net::SocketAddr,
    /// The admin listener's address.
    pub admin_addr: std::net::SocketAddr,
    /// Metrics.
    pub metrics: Metrics,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops claiming, finishes in-flight syncs, releases leases, stops the listeners.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts everything on already-bound listeners.
pub async fn start<S: Store>(
    config: &Config,
    store: S,
    public: TcpListener,
    admin: TcpListener,
) -> anyhow::Result<Running> {
    let client = config.client()?;
    let parser = client
        .notify_parser()
        .map_err(|e| anyhow::anyhow!("key `wechatpay.apiv3_key_file`: {e}"))?
        .with_body_limit(config.service.body_limit);
    let metrics = Metrics::new();
    let wake = Arc::new(Notify::new());
    let receiver = Arc::new(Receiver {
        store: store.clone(),
        parser,
        rules: config.rules.clone(),
        partner_mode: config.wechatpay.partner_mode,
        handler_timeout: Duration::from_millis(config.service.handler_timeout_ms),
        metrics: metrics.clone(),
        wake: wake.clone(),
    });
    let (stop, stopped) = watch::channel(false);
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let mut tasks = JoinSet::new();
    let app = public_app(
        receiver.clone(),
        &config.service.callback_path,
        config.service.body_limit,
    );
    let mut s1 = stopped.clone();
    tasks.spawn(async move {
        let _ = axum::serve(public, app)
            .with_graceful_shutdown(async move {
                let _ = s1.changed().await;
            })
            .await;
    });
    let mut s2 = stopped.clone();
    let admin_router = admin_app(receiver.clone());
    tasks.spawn(async move {
        let _ = axum::serve(admin, admin_router)
            .with_graceful_shutdown(async move {
                let _ = s2.changed().await;
            })
            .await;
    });
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        client,
        config.dispatcher.clone(),
        metrics.clone(),
    ));
    tracing::info!(owner = dispatcher.owner(), %public_addr, %admin_addr, "pointsync started");
    tasks.spawn(dispatcher.run(wake, stopped.clone()));
    tasks.spawn(rescuer(
        store,
        Duration::from_millis(config.dispatcher.rescue_every_ms),
        metrics.clone(),
        stopped,
    ));
    Ok(Running {
        public_addr,
        admin_addr,
        metrics,
        stop,
        tasks,
    })
}
