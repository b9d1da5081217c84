//! The running service: the callback receiver (public listener), the admin endpoints (loopback
//! listener), the outbox dispatcher and the lease rescuer, started together and stopped
//! gracefully.
//!
//! - `receiver.rs` — callbacks in: verify, decide, store, answer;
//! - `admin.rs` — `/healthz`, `/readyz`, `/metrics`, `/admin/status`;
//! - `dispatcher.rs` — syncs out: claim, send, record; the rescuer;
//! - `bucket.rs` — the outgoing rate limit;
//! - `certificates.rs` — platform certificates that renew themselves;
//! - `listener.rs` — the public listener's connection cap and header deadline;
//! - `skew.rs` — how far this machine's clock looks from WeChat's;
//! - `console/` — the operator console in the browser (admin listener).

mod admin;
mod bucket;
mod certificates;
pub mod console;
mod dispatcher;
mod listener;
pub mod mall_api;
mod queries;
mod receiver;
mod recent_errors;
pub mod reconcile;
mod skew;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

pub use admin::admin_app;
pub use bucket::TokenBucket;
pub use certificates::{first_expiry_in, uses_certificates};
pub use dispatcher::{Dispatcher, rescuer};
pub use queries::{PendingPoints, Queries};
pub use receiver::{DOCTOR_PROBE, KnownMembers, Receiver, probe_digest, public_app};
pub use recent_errors::RecentErrors;
pub use skew::{ClockWatch, should_say};

pub use crate::clock::now_ms;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

/// A running service's addresses and handles.
#[derive(Debug)]
pub struct Running {
    /// The public (callback) listener's address.
    pub public_addr: std::net::SocketAddr,
    /// The admin listener's address.
    pub admin_addr: std::net::SocketAddr,
    /// The mall API listener's address (when `[mall_api]` is configured).
    pub mall_addr: Option<std::net::SocketAddr>,
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

/// The SDK client for `config`, its APIv3 key checked too: everything the service needs from the
/// keys, validated before any database is opened.
pub fn client_for(config: &Config) -> anyhow::Result<wechatpay::Client> {
    let client = config.client()?;
    client
        .notify_parser()
        .map_err(|e| anyhow::anyhow!("key `wechatpay.apiv3_key_file`: {e}"))?;
    Ok(client)
}

/// Starts everything on already-bound listeners, on the system clock.
pub async fn start<S: Store>(
    config: &Config,
    store: S,
    public: TcpListener,
    admin: TcpListener,
) -> anyhow::Result<Running> {
    start_with(
        config,
        client_for(config)?,
        store,
        public,
        admin,
        Arc::new(SystemClock),
    )
    .await
}

/// Starts everything on already-bound listeners with a client built by [`client_for`] and the
/// given clock.
pub async fn start_with<S: Store>(
    config: &Config,
    client: wechatpay::Client,
    store: S,
    public: TcpListener,
    admin: TcpListener,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Running> {
    let parser = client
        .notify_parser()
        .map_err(|e| anyhow::anyhow!("key `wechatpay.apiv3_key_file`: {e}"))?
        .with_body_limit(config.service.body_limit);
    let metrics = Metrics::new();
    let clock_watch = Arc::new(ClockWatch::new(metrics.clone()));
    let unknown_serial = Arc::new(Notify::new());
    let recent_errors = Arc::new(RecentErrors::default());
    let wake = Arc::new(Notify::new());
    let queries = Arc::new(Queries::new(
        config,
        client.clone(),
        metrics.clone(),
        clock.clone(),
    ));
    let dispatcher = Arc::new(
        Dispatcher::new(
            store.clone(),
            client.clone(),
            config.dispatcher.clone(),
            metrics.clone(),
            clock.clone(),
        )
        .with_clock_watch(clock_watch.clone())
        .with_unknown_serial(unknown_serial.clone())
        .with_recent_errors(recent_errors.clone()),
    );
    let receiver = Arc::new(Receiver {
        store: store.clone(),
        parser,
        rules: config.rules.clone(),
        partner_mode: config.wechatpay.partner_mode,
        handler_timeout: Duration::from_millis(config.service.handler_timeout_ms),
        body_timeout: Duration::from_millis(config.service.body_timeout_ms),
        body_limit: config.service.body_limit,
        metrics: metrics.clone(),
        wake: wake.clone(),
        clock: clock.clone(),
        clock_watch: clock_watch.clone(),
        unknown_serial: unknown_serial.clone(),
        csrf: wechatpay::crypto::random_token(32),
        recent_errors: recent_errors.clone(),
        queries: queries.clone(),
        known_members: KnownMembers::default(),
        handoff: config
            .dispatcher
            .lease_on_receipt
            .then(|| dispatcher.handoff()),
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
    let limits = listener::Limits {
        header_timeout: Duration::from_millis(config.service.header_timeout_ms),
        max_connections: config.service.max_connections,
    };
    tasks.spawn(listener::serve(
        public,
        app,
        limits,
        metrics.clone(),
        stopped.clone(),
    ));
    let mut s2 = stopped.clone();
    let admin_token = config.service.admin_token()?;
    let admin_router = admin_app(receiver.clone(), admin_token);
    tasks.spawn(async move {
        let _ = axum::serve(admin, admin_router)
            .with_graceful_shutdown(async move {
                let _ = s2.changed().await;
            })
            .await;
    });
    let mall_addr = match &config.mall_api {
        Some(m) => {
            let api = mall_api::MallApi::new(
                config,
                store.clone(),
                queries.clone(),
                metrics.clone(),
                wake.clone(),
                clock.clone(),
            )?;
            let listener = std::net::TcpListener::bind(m.listen).map_err(|e| {
                anyhow::anyhow!("key `mall_api.listen`: cannot listen on {}: {e}", m.listen)
            })?;
            let addr = listener.local_addr()?;
            let router = mall_api::mall_app(Arc::new(api));
            let done = mall_api::serve_apart(listener, router, m.nice, stopped.clone())?;
            tasks.spawn(async move {
                let _ = done.await;
            });
            Some(addr)
        }
        None => None,
    };
    let refresh_hours = config.wechatpay.certificate_refresh_hours;
    if refresh_hours > 0 && uses_certificates(&client) {
        tasks.spawn(certificates::refresher(
            client.clone(),
            Duration::from_secs(refresh_hours * 3600),
            Duration::from_millis(config.wechatpay.certificate_refresh_min_gap_ms),
            unknown_serial.clone(),
            metrics.clone(),
            clock.clone(),
            stopped.clone(),
        ));
    }
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    metrics
        .workers
        .set(i64::try_from(workers).unwrap_or(i64::MAX));
    tracing::info!(owner = dispatcher.owner(), %public_addr, %admin_addr, mall_api = ?mall_addr, workers, "pointsync started");
    tasks.spawn(dispatcher.run(wake, stopped.clone()));
    tasks.spawn(rescuer(
        store,
        Duration::from_millis(config.dispatcher.rescue_every_ms),
        metrics.clone(),
        clock,
        stopped,
    ));
    Ok(Running {
        public_addr,
        admin_addr,
        mall_addr,
        metrics,
        stop,
        tasks,
    })
}
