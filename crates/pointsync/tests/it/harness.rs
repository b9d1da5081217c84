//! Test harness: the simulator and the service over real loopback HTTP, and the invariants
//! I1–I7 of `shared/spec/reliability.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use pointsync::config::Config;
use pointsync::service::Running;
use pointsync::store::Store;
use pointsync::store::sqlite::SqliteStore;
use tokio::net::TcpListener;
use wechatpay_sim::{PushConfig, Sandbox, SimConfig, Simulator, TrustMode};

pub struct Harness {
    pub sim: Simulator,
    pub store: SqliteStore,
    pub config: Config,
    pub running: Option<Running>,
    pub notify_url: String,
    /// Keeps the sandbox and database alive for the test.
    pub _dir: tempfile::TempDir,
}

/// Held by the tests that start several processes or a browser: they run one at a time, so a
/// loaded 2-core machine does not starve one of them into a timeout.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fast push schedule: WeChat's intervals × 0.0005 (15 s → 7.5 ms).
pub fn fast_push() -> PushConfig {
    PushConfig {
        time_scale: 0.0005,
        timeout_ms: 3000,
        ..PushConfig::default()
    }
}

/// Loads the demo config for this sandbox with `overrides` as `POINTSYNC__…` variables.
pub fn config(dir: &Path, sandbox: &Sandbox, base_url: &str, overrides: &[(&str, &str)]) -> Config {
    let path = pointsync::demo::write_config(dir, sandbox, base_url, "").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    // most tests post callbacks for members the simulator does not know: they trust WeChat to
    // send authorized members' payments only; the authorization tests ask for "query"
    let env = [("POINTSYNC__RULES__UNKNOWN_AUTHORIZATION", "credit")]
        .iter()
        .chain(overrides)
        .map(|(k, v)| (k.to_string(), v.to_string()));
    Config::parse(&text, &path, env).unwrap()
}

impl Harness {
    pub async fn start(push: PushConfig, overrides: &[(&str, &str)]) -> Self {
        Self::start_with(push, overrides, |_| {}).await
    }

    /// Starts with the config changed by `tweak` after it was loaded: settings the config
    /// validation would refuse, to prove the service holds even then.
    pub async fn start_with(
        push: PushConfig,
        overrides: &[(&str, &str)],
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::start_full(push, overrides, |_| {}, tweak).await
    }

    /// Starts with the simulator's config changed by `sim_tweak` (its clock, say) and the
    /// service's by `tweak`.
    pub async fn start_full(
        push: PushConfig,
        overrides: &[(&str, &str)],
        sim_tweak: impl FnOnce(&mut SimConfig),
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::init(&dir.path().join("sandbox"), TrustMode::Cert).unwrap();
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let notify_url = format!("http://{}/wechatpay/notify", public.local_addr().unwrap());
        let mut sim_config = SimConfig {
            push: PushConfig {
                notify_url: Some(notify_url.clone()),
                ..push
            },
            ..SimConfig::new(sandbox.clone())
        };
        sim_tweak(&mut sim_config);
        let sim = Simulator::start(sim_config).await.unwrap();
        let mut config = config(dir.path(), &sandbox, &sim.base_url(), overrides);
        tweak(&mut config);
        // the harness's busy timeout is 2 s; the rest as configured
        let options = pointsync::store::OpenOptions {
            busy_timeout: Duration::from_secs(2),
            ..config.service.open_options()
        };
        let store = SqliteStore::open(&config.service.database, &options)
            .await
            .unwrap();
        let running = pointsync::service::start(&config, store.clone(), public, admin)
            .await
            .unwrap();
        Self {
            sim,
            store,
            config,
            running: Some(running),
            notify_url,
            _dir: dir,
        }
    }

    /// A member who authorized (the callback pushed) and pays `amount` fen.
    pub fn authorized_member_pays(
        &self,
        amount: i64,
    ) -> (wechatpay_sim::Member, wechatpay_sim::Transaction) {
        self.new_member_pays(wechatpay_sim::NewMember::default(), amount)
    }

    fn new_member_pays(
        &self,
        member: wechatpay_sim::NewMember,
        amount: i64,
    ) -> (wechatpay_sim::Member, wechatpay_sim::Transaction) {
        let m = self.sim.add_member(member).unwrap();
        let tx = self
            .sim
            .pay(wechatpay_sim::NewPayment {
                openid: m.openid.clone(),
                amount,
                ..Default::default()
            })
            .unwrap();
        (m, tx)
    }

    /// A member's balance as stored (0 for an unknown member).
    pub async fn balance(&self, openid: &str) -> i64 {
        self.store
            .member(openid)
            .await
            .unwrap()
            .map_or(0, |m| m.balance)
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("pointsync.toml")
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Waits until WeChat has nothing left to push and no sync is pending or in flight.
    pub async fn quiet(&self, timeout: Duration) {
        wait_quiet(&self.sim, &self.store, timeout).await;
    }

    /// A member (no authorization callback) who pays `amount` fen.
    pub fn member_pays(&self, amount: i64) -> (wechatpay_sim::Member, wechatpay_sim::Transaction) {
        let member = wechatpay_sim::NewMember {
            push: false,
            ..Default::default()
        };
        self.new_member_pays(member, amount)
    }

    pub fn metric(&self, name: &str, label: &str) -> f64 {
        metric(&self.running().metrics.render(), name, label)
    }

    /// Waits (up to 10 s) until the metric reaches `at_least`: a sync's outcome is in the store a
    /// moment before the dispatcher's task counts it, so a quiet store can be ahead of the metric.
    pub async fn metric_reaches(&self, name: &str, label: &str, at_least: f64) {
        wait_for(
            &format!("{name}{{{label}}} to reach {at_least}"),
            Duration::from_secs(10),
            || self.metric(name, label) >= at_least,
        )
        .await;
    }
}

/// Waits until `done()` holds (checked every 10 ms); fails naming `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = wechatpay::clock::monotonic() + timeout;
    while !done() {
        assert!(
            wechatpay::clock::monotonic() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until WeChat has nothing left to push and no sync is pending or in flight.
pub async fn wait_quiet<S: Store>(sim: &Simulator, store: &S, timeout: Duration) {
    let deadline = wechatpay::clock::monotonic() + timeout;
    loop {
        let settled = sim.settle(Duration::ZERO).await;
        let s = store.status().await.unwrap();
        if settled && !s.syncs.contains_key("pending") && !s.syncs.contains_key("inflight") {
            return;
        }
        assert!(
            wechatpay::clock::monotonic() < deadline,
            "not quiet after {timeout:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `/metrics` text of the admin listener at `admin` (`host:port`).
pub async fn scrape(admin: impl std::fmt::Display) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A value from a Prometheus text exposition: `name{…="label"} value`.
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("=\"{label}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The keys of the callbacks of `event_type` that the service acknowledged.
fn acknowledged(sim: &Simulator, event_type: &str) -> BTreeSet<String> {
    sim.deliveries()
        .into_iter()
        .filter(|d| d.delivered && d.event_type == event_type)
        .map(|d| d.key)
        .collect()
}

/// Asserts I1 and I3–I6 once the system is quiet (I2 and I7 are asserted where they can be observed).
pub async fn assert_invariants<S: Store>(sim: &Simulator, store: &S) {
    assert_invariants_with(sim, store, 0).await;
}

/// The same, when `direct_refunds` refund callbacks were posted by the test itself.
pub async fn assert_invariants_with<S: Store>(sim: &Simulator, store: &S, direct_refunds: i64) {
    let audit = store.audit().await.unwrap();
    let status = store.status().await.unwrap();
    // I1: every acknowledged payment callback is stored; every stored payment has a sync row
    let acked = acknowledged(sim, "MALL_TRANSACTION.SUCCESS");
    let credited: BTreeSet<String> = audit.credits.keys().cloned().collect();
    let missing: Vec<_> = acked.difference(&credited).collect();
    assert!(
        missing.is_empty(),
        "I1: acknowledged but not stored: {missing:?}"
    );
    assert!(
        audit.payments_without_sync.is_empty(),
        "I1: payments without sync: {:?}",
        audit.payments_without_sync
    );
    // I3: credits = distinct payments; debits = distinct refunds (unique keys make more impossible)
    let acked_refunds = acknowledged(sim, "MALL_REFUND.SUCCESS");
    assert_eq!(
        audit.debits + audit.held_refunds,
        acked_refunds.len() as i64 + direct_refunds,
        "I3: one debit (or held refund) per refund"
    );
    // I4
    assert!(
        audit.unbalanced_members.is_empty(),
        "I4: balance ≠ ledger for {:?}",
        audit.unbalanced_members
    );
    // I5: nothing in flight
    for state in ["pending", "inflight"] {
        assert_eq!(
            status.syncs.get(state),
            None,
            "I5: {state} syncs remain: {status:?}"
        );
    }
    // I6: what WeChat saw = the stored payments, with identical payloads on every call
    let remote: BTreeMap<String, i64> = sim.synced_points();
    let parked: BTreeSet<String> = status
        .parked
        .iter()
        .map(|p| p.transaction_id.clone())
        .collect();
    let not_credited: BTreeSet<&String> = audit.not_credited.iter().collect();
    for (tx, points) in &audit.credits {
        if not_credited.contains(tx) {
            assert_eq!(
                remote.get(tx),
                None,
                "I6: {tx} is not credited, WeChat saw it"
            );
            continue;
        }
        if parked.contains(tx) {
            continue;
        }
        assert_eq!(remote.get(tx), Some(points), "I6: transaction {tx}");
    }
    assert!(
        remote.keys().all(|t| credited.contains(t)),
        "I6: WeChat saw a transaction the ledger lacks"
    );
    assert_eq!(
        sim.counters().conflicting_syncs,
        0,
        "I6: a resend differed from the first payload"
    );
}

/// Makes `path` unwritable even for root (the immutable attribute; plain permissions otherwise).
/// Returns a guard that makes it writable again.
pub fn make_read_only(path: &std::path::Path) -> impl Drop + use<> {
    struct Undo(std::path::PathBuf, bool);
    impl Drop for Undo {
        fn drop(&mut self) {
            if self.1 {
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(&self.0)
                    .status();
            }
            let mut p = std::fs::metadata(&self.0).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            p.set_readonly(false);
            let _ = std::fs::set_permissions(&self.0, p);
        }
    }
    let mut p = std::fs::metadata(path).unwrap().permissions();
    p.set_readonly(true);
    std::fs::set_permissions(path, p).unwrap();
    let writable = std::fs::OpenOptions::new().write(true).open(path).is_ok();
    let chattr = writable
        && std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        std::fs::OpenOptions::new().write(true).open(path).is_err(),
        "cannot make {} read-only here (root without chattr +i)",
        path.display()
    );
    Undo(path.to_path_buf(), chattr)
}

/// A small tmpfs mounted for a test (unmounted on drop), where mounting is allowed (root on
/// Linux); `None`, with a message on stderr, where it is not.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root and mount rights)");
            return None;
        }
        Some(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn available(&self) -> u64 {
        fs4::available_space(self.path()).unwrap()
    }

    /// Fills the file system until `leave` bytes are free (or it is full), in `filler`.
    pub fn fill(&self, leave: u64) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("filler"))
            .unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while self.available() > leave {
            let n = (self.available() - leave).min(chunk.len() as u64) as usize;
            if f.write_all(&chunk[..n.max(1)]).is_err() {
                break;
            }
            let _ = f.flush();
        }
    }

    /// Frees what `fill` took.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.path().join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A loopback address whose port was free a moment ago, for a child's listener.
pub fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Starts a `pointsync serve` child on `config` with its listeners on `public` and `admin`, short
/// leases (2 s) for fault tests, and `env` on top; waits until it answers `/healthz` (only once its
/// callback listener is bound). Returns the child and how long it took; fails naming the instance
/// if it exits or does not become healthy within 20 s, with what it wrote to stderr (its errors,
/// appended over its restarts to `serve-<admin port>.log` beside `config`).
pub async fn spawn_serve(
    config: &std::path::Path,
    public: &str,
    admin: &str,
    env: &[(String, String)],
) -> (std::process::Child, Duration) {
    let started = wechatpay::clock::monotonic();
    let port = admin.rsplit(':').next().unwrap_or(admin);
    let log = config.with_file_name(format!("serve-{port}.log"));
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let said = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pointsync"))
        .args(["serve", "--config"])
        .arg(config)
        .env("POINTSYNC__SERVICE__PUBLIC_LISTEN", public)
        .env("POINTSYNC__SERVICE__ADMIN_LISTEN", admin)
        .env("POINTSYNC__DISPATCHER__LEASE_MS", "2000")
        .env("POINTSYNC__WECHATPAY__TIMEOUT_MS", "1500")
        .env("POINTSYNC__DISPATCHER__RESCUE_EVERY_MS", "200")
        .env("RUST_LOG", "error")
        .env_remove(pointsync::crash::ENV)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = wechatpay::clock::monotonic() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(format!("http://{admin}/healthz")).await
            && r.status() == 200
        {
            return (child, started.elapsed());
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!(
                "pointsync serve ({admin}) exited during start-up: {s}; its stderr:\n{}",
                said()
            );
        }
        assert!(
            wechatpay::clock::monotonic() < deadline,
            "pointsync serve ({admin}) did not become healthy; its stderr:\n{}",
            said()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
