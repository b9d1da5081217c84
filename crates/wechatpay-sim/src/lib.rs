//! # wechatpay-sim — a local WeChat Pay APIv3 server for the 智慧商圈 family
//!
//! It verifies request signatures and fields as WeChat does (401 `SIGN_ERROR` with
//! `detail.sign_information`, 400 `PARAM_ERROR` naming the field), answers signed in certificate,
//! public-key or migrating mode, pushes encrypted callbacks on WeChat's retry schedules, and
//! injects faults (429, 5xx, latency, hangs, connection resets, a global QPS limit).
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use wechatpay_sim::{SimConfig, Simulator, TrustMode};
//! let sim = Simulator::start(SimConfig::test(TrustMode::Cert)).await?;
//! let client = sim.client_builder().build()?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod control;
pub mod faults;
pub mod options;
pub mod push;
pub mod sandbox;
pub mod shared;
pub mod state;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rand::SeedableRng;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;
use wechatpay::PrivateKey;
use wechatpay::clock::{Clock, SystemClock};
use wechatpay::testing::{CallbackSigner, keys};

pub use control::{ControlError, GenerateSpec, NewMember, NewPayment};
pub use faults::{Endpoint, FaultConfig, FaultKind, FaultRule};
pub use options::{PushConfig, SimOptions};
pub use sandbox::{Sandbox, SandboxInfo, TrustMode};
pub(crate) use shared::ResetConnection;
pub use shared::Shared;
pub use state::{AckLatency, Counters, Delivery, Member, SyncCall, Transaction};

/// Everything the simulator starts with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Keys and ids.
    pub sandbox: Sandbox,
    /// Where to listen (port 0 = any free port).
    pub listen: SocketAddr,
    /// Callback pushing.
    pub push: PushConfig,
    /// Behaviour switches.
    pub options: SimOptions,
    /// Faults from the start.
    pub faults: FaultConfig,
    /// The simulator's clock.
    pub clock: Arc<dyn Clock>,
    /// RNG seed for fault rolls and push decisions.
    pub seed: u64,
}

impl SimConfig {
    /// The committed test keys, loopback on a free port, callbacks off.
    pub fn test(mode: TrustMode) -> Self {
        Self::new(Sandbox::test(mode))
    }

    /// A sandbox on loopback, a free port, callbacks off.
    pub fn new(sandbox: Sandbox) -> Self {
        Self {
            sandbox,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            push: PushConfig::default(),
            options: SimOptions::default(),
            faults: FaultConfig::default(),
            clock: Arc::new(SystemClock),
            seed: 1,
        }
    }
}

/// A running simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The whole HTTP app: WeChat's APIs plus `/sim` control routes.
pub fn app(shared: Arc<Shared>) -> axum::Router {
    control::routes()
        .fallback(api::wechat)
        .layer(axum::middleware::from_fn(log_answer))
        .with_state(shared)
}

/// One line per request answered, at info.
async fn log_answer(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let res = next.run(req).await;
    tracing::info!(%method, path, status = res.status().as_u16(), "answered");
    res
}

impl Simulator {
    /// Binds and starts serving in the background.
    pub async fn start(config: SimConfig) -> Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let sandbox = config.sandbox;
        let signer = if sandbox.info.mode == TrustMode::Pubkey {
            CallbackSigner::new(
                sandbox.pubkey_key.clone(),
                &sandbox.info.pubkey_id,
                sandbox.apiv3_key.clone(),
            )
        } else {
            CallbackSigner::new(
                sandbox.platform_key.clone(),
                &sandbox.info.platform_serial,
                sandbox.apiv3_key.clone(),
            )
        };
        let http = reqwest::Client::builder().build()?;
        let shared = Arc::new(Shared {
            sandbox,
            state: Mutex::new(state::State::default()),
            faults: Mutex::new(faults::Faults::new(config.faults)),
            options: Mutex::new(config.options),
            push: Mutex::new(config.push),
            clock: config.clock,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(config.seed)),
            wrong_key: Arc::new(PrivateKey::from_pem(keys::OTHER_KEY_PEM)?),
            signer,
            http,
            pending: AtomicUsize::new(0),
            settled: Notify::new(),
            next_url: AtomicUsize::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, app(shared.clone()), stopped));
        Ok(Self { shared, addr, stop })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Sandbox {
        &self.shared.sandbox
    }

    /// The shared state, for direct control from tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// An SDK client builder for the sandbox merchant, pointed at this simulator.
    pub fn client_builder(&self) -> wechatpay::ClientBuilder {
        self.shared.sandbox.client_builder(&self.base_url())
    }

    /// Creates a member.
    pub fn add_member(&self, m: NewMember) -> Result<Member, ControlError> {
        control::add_member(&self.shared, m)
    }
    /// Authorizes (pushing the callback when `push`) or revokes a member.
    pub fn set_authorization(
        &self,
        openid: &str,
        authorized: bool,
        push: bool,
    ) -> Result<Member, ControlError> {
        control::set_authorization(&self.shared, openid, authorized, push)
    }
    /// Creates a payment (and pushes its callback).
    pub fn pay(&self, p: NewPayment) -> Result<Transaction, ControlError> {
        control::pay(&self.shared, p)
    }
    /// Re-pushes a payment under a new id with `commit_tag`.
    pub fn manual_apply(&self, transaction_id: &str) -> Result<String, ControlError> {
        control::manual_apply(&self.shared, transaction_id)
    }
    /// Refunds (part of) a payment.
    pub fn refund(
        &self,
        transaction_id: &str,
        amount: i64,
    ) -> Result<(String, String), ControlError> {
        control::refund(&self.shared, transaction_id, amount)
    }
    /// Generates a stream of payments.
    pub async fn generate(&self, spec: GenerateSpec) -> Result<Vec<Transaction>, ControlError> {
        control::generate(&self.shared, spec).await
    }
    /// Every points-notify call received.
    pub fn syncs(&self) -> Vec<SyncCall> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .syncs
            .clone()
    }
    /// Points WeChat was told per transaction (last accepted call).
    pub fn synced_points(&self) -> std::collections::BTreeMap<String, i64> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .synced_points()
    }
    /// Parking events received.
    pub fn parkings(&self) -> Vec<serde_json::Value> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .parkings
            .clone()
    }
    /// Callback deliveries.
    pub fn deliveries(&self) -> Vec<Delivery> {
        let s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        s.deliveries.values().cloned().collect()
    }
    /// The delivery of the callback about `key` (a payment's transaction id, a refund's refund id,
    /// an authorization's openid); the first found if several notifications were made for it.
    pub fn delivery(&self, key: &str) -> Option<Delivery> {
        self.deliveries().into_iter().find(|d| d.key == key)
    }
    /// Counters.
    pub fn counters(&self) -> Counters {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counters
            .clone()
    }
    /// The receiver's acknowledgement latency (send → 2xx), over every acknowledged delivery.
    pub fn ack_latency(&self) -> AckLatency {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ack_latency()
    }
    /// Replaces the fault config.
    pub fn set_faults(&self, f: FaultConfig) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(f);
    }
    /// Replaces the faults with one rule: the next `count` requests to `endpoint` get `fault`.
    pub fn fail_next(&self, endpoint: Endpoint, fault: FaultKind, count: u32) {
        self.set_faults(FaultConfig {
            rules: vec![FaultRule::next(endpoint, fault, count)],
            qps_limit: None,
        });
    }
    /// Replaces the options.
    pub fn set_options(&self, o: SimOptions) {
        *self
            .shared
            .options
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = o;
    }
    /// Replaces the push config (affects callbacks pushed from now on).
    pub fn set_push(&self, p: PushConfig) {
        *self.shared.push.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }
    /// Clears state, counters and faults.
    pub fn reset(&self) {
        self.shared.reset();
    }
    /// Waits until no callback delivery is in progress, or `timeout` passes. Returns whether settled.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::from_std(wechatpay::clock::monotonic()) + timeout;
        loop {
            let notified = self.shared.settled.notified();
            if self
                .shared
                .pending
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self
                    .shared
                    .pending
                    .load(std::sync::atomic::Ordering::SeqCst)
                    == 0;
            }
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true. A response marked [`ResetConnection`]
/// closes its connection without an answer.
async fn serve(listener: TcpListener, app: axum::Router, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop_conn = stop.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        let res = app
                            .oneshot(req.map(axum::body::Body::new))
                            .await
                            .unwrap_or_else(|e| match e {});
                        if res.extensions().get::<ResetConnection>().is_some() {
                            Err(std::io::Error::other("simulated connection reset"))
                        } else {
                            Ok(res)
                        }
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop_conn.changed() => {}
            }
        });
    }
}
