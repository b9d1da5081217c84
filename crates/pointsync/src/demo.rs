//! `pointsync demo`: a simulated mall day on a fresh machine. A sandbox, the simulator in-process,
//! the service on an embedded SQLite file, then a generated day — members authorizing, payments
//! across stores, duplicate deliveries, manual applications, partial refunds, a burst of 429s —
//! with progress while it runs and a report that checks the simulator's record against the ledger.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::net::TcpListener;
use wechatpay_sim::{
    Endpoint, FaultKind, GenerateSpec, PushConfig, Sandbox, SimConfig, Simulator, TrustMode,
};

use crate::config::Config;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Database, Store};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Folder for the sandbox, config and database (a new temporary folder if `None`).
    pub dir: Option<PathBuf>,
    /// Payments to generate.
    pub payments: usize,
    /// Members.
    pub members: usize,
    /// Payments per second.
    pub rate: f64,
    /// Seed of the generated day.
    pub seed: u64,
    /// 429 answers WeChat gives the first syncs (one burst).
    pub burst_429: u32,
    /// Print progress.
    pub progress: bool,
    /// `pointsync serve` instances (more than one needs `database`).
    pub instances: usize,
    /// A `postgres://` URL of an empty database (default: an SQLite file in `dir`).
    pub database: Option<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            dir: None,
            payments: 2_000,
            members: 200,
            rate: 400.0,
            seed: 2026,
            burst_429: 50,
            progress: true,
            instances: 1,
            database: None,
        }
    }
}

/// Notifications by kind.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Notifications {
    /// `MALL_AUTH.ACTIVATE_CARD`.
    pub authorizations: u64,
    /// `MALL_TRANSACTION.SUCCESS`, first push of each payment.
    pub payments: u64,
    /// `MALL_TRANSACTION.SUCCESS` pushed again (the member's manual application).
    pub manual_applications: u64,
    /// `MALL_REFUND.SUCCESS`.
    pub refunds: u64,
}

impl Notifications {
    /// Counts the simulator's deliveries (one per notification id) by kind.
    pub fn count(deliveries: &[wechatpay_sim::Delivery]) -> Self {
        let mut n = Self::default();
        let mut payments = std::collections::BTreeSet::new();
        for d in deliveries {
            match d.event_type.as_str() {
                wechatpay::notify::MALL_AUTH_ACTIVATE_CARD => n.authorizations += 1,
                wechatpay::notify::MALL_REFUND_SUCCESS => n.refunds += 1,
                wechatpay::notify::MALL_TRANSACTION_SUCCESS if !payments.insert(d.key.clone()) => {
                    n.manual_applications += 1
                }
                _ => {}
            }
        }
        n.payments = payments.len() as u64;
        n
    }

    /// All notifications.
    pub fn total(&self) -> u64 {
        self.authorizations + self.payments + self.manual_applications + self.refunds
    }
}

/// The demo's closing report.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Where the files are.
    pub dir: PathBuf,
    /// The database (an SQLite file in `dir`, or the PostgreSQL URL without its password).
    pub database: String,
    /// `pointsync serve` instances.
    pub instances: usize,
    /// Notifications WeChat (the simulator) sent, by kind: authorizations, payments, manual
    /// applications (a payment pushed again after the member applied), refunds.
    pub notifications: Notifications,
    /// Callback deliveries WeChat (the simulator) made, and how many were acknowledged.
    pub callbacks_sent: u64,
    /// Acknowledged.
    pub callbacks_acked: u64,
    /// Payments credited (ledger credits).
    pub credited: usize,
    /// Syncs WeChat answered 204.
    pub synced: i64,
    /// Syncs parked.
    pub parked: i64,
    /// Points issued.
    pub points_issued: i64,
    /// Points deducted by refunds.
    pub points_deducted: i64,
    /// Refund entries.
    pub refunds: i64,
    /// Callback-to-sync latency, ms.
    pub latency_p50_ms: i64,
    /// Callback-to-sync latency, ms.
    pub latency_p99_ms: i64,
    /// 429s WeChat answered.
    pub rate_limited: u64,
    /// Whether WeChat's record (points per transaction) equals the ledger.
    pub records_match: bool,
    /// Mismatches, if any.
    pub mismatches: Vec<String>,
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "pointsync demo — report")?;
        let n = &self.notifications;
        writeln!(
            f,
            "  WeChat sent          {} notifications: {} authorizations, {} payments, {} manual \
             applications (a payment pushed again), {} refunds",
            n.total(),
            n.authorizations,
            n.payments,
            n.manual_applications,
            n.refunds
        )?;
        writeln!(
            f,
            "  delivered as         {} callbacks, {} acknowledged; the {} extra deliveries are \
             WeChat's retries and duplicate deliveries, each with no second effect",
            self.callbacks_sent,
            self.callbacks_acked,
            self.callbacks_sent.saturating_sub(n.total())
        )?;
        writeln!(f, "  payments credited    {}", self.credited)?;
        writeln!(
            f,
            "  syncs done / parked  {} / {}",
            self.synced, self.parked
        )?;
        writeln!(
            f,
            "  points issued        {} (refunds deducted {} in {} entries)",
            self.points_issued, self.points_deducted, self.refunds
        )?;
        writeln!(f, "  429s absorbed        {}", self.rate_limited)?;
        writeln!(
            f,
            "  callback→sync        p50 {} ms, p99 {} ms",
            self.latency_p50_ms, self.latency_p99_ms
        )?;
        if self.records_match {
            writeln!(
                f,
                "  check                WeChat's record matches the ledger for every transaction ✔"
            )?;
        } else {
            writeln!(
                f,
                "  check                MISMATCH: {}",
                self.mismatches.join("; ")
            )?;
        }
        let config = self.dir.join("pointsync.toml");
        writeln!(
            f,
            "  files                {} (config pointsync.toml, the simulator's keys in sandbox/)",
            self.dir.display()
        )?;
        writeln!(
            f,
            "  database             {} ({} instance(s))",
            self.database, self.instances
        )?;
        write!(
            f,
            "  look inside          {1}pointsync status --config {0}\n                       \
             {1}pointsync member OPENID --config {0}",
            config.display(),
            if self.database.starts_with("postgres") {
                format!("POINTSYNC__SERVICE__DATABASE={} ", self.database)
            } else {
                String::new()
            }
        )
    }
}

/// Writes a config file for a sandbox and a simulator URL; returns its path.
pub fn write_config(dir: &Path, sandbox: &Sandbox, base_url: &str, extra: &str) -> Result<PathBuf> {
    let sb = sandbox.dir.as_ref().context("sandbox has no folder")?;
    let mut trust = vec![format!(
        "\"{}\"",
        sb.join("wechat/platform_cert.pem").display()
    )];
    if sandbox.info.mode != TrustMode::Cert {
        trust.push(format!(
            "\"{}={}\"",
            sandbox.info.pubkey_id,
            sb.join("wechat/pub_key.pem").display()
        ));
    }
    let text = format!(
        r#"[service]
database = "pointsync.db"
callback_path = "/wechatpay/notify"

[wechatpay]
mchid = "{mchid}"
serial = "{serial}"
private_key = "{key}"
apiv3_key_file = "{apiv3}"
trust = [{trust}]
base_url = "{base_url}"
backup_url = ""
timeout_ms = 5000

[dispatcher]
qps = 500
concurrency = 16
backoff_base_ms = 50
backoff_cap_ms = 2000
lease_ms = 10000
rescue_every_ms = 1000

[rules]
points_per_yuan = 1.0
rounding = "floor"
min_amount_fen = 100
daily_cap = 100000

[[rules.stores]]
shop_number = "S003"
points_per_yuan = 2.0

[[rules.stores]]
shop_number = "S006"
exclude = true
no_points_remarks = "影票不参与积分活动"
{extra}"#,
        mchid = sandbox.info.mchid,
        serial = sandbox.info.merchant_serial,
        key = sb.join("merchant/apiclient_key.pem").display(),
        apiv3 = sb.join("apiv3.key").display(),
        trust = trust.join(", "),
    );
    let path = dir.join("pointsync.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the demo and returns its report.
pub async fn run(opts: DemoOptions) -> Result<DemoReport> {
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "pointsync-demo-{}",
            wechatpay::crypto::random_token(8).to_lowercase()
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join("pointsync.db").exists() {
        bail!(
            "{} already holds a demo database; choose another --dir",
            dir.display()
        );
    }
    let database = match &opts.database {
        Some(url) => Some(Database::parse(url).map_err(|e| anyhow::anyhow!("--database: {e}"))?),
        None => None,
    };
    if opts.instances == 0 {
        bail!("--instances must be at least 1");
    }
    if opts.instances > 1 && !matches!(database, Some(Database::Postgres(_))) {
        bail!("several instances share one PostgreSQL database: give --database postgres://…");
    }
    let sandbox = Sandbox::init(&dir.join("sandbox"), TrustMode::Cert)?;
    let mut publics = Vec::new();
    let mut admins = Vec::new();
    for _ in 0..opts.instances {
        publics.push(TcpListener::bind("127.0.0.1:0").await?);
        admins.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    let mut urls = Vec::new();
    for p in &publics {
        urls.push(format!("http://{}/wechatpay/notify", p.local_addr()?));
    }
    let sim = Simulator::start(SimConfig {
        push: PushConfig {
            notify_url: urls.first().cloned(),
            more_notify_urls: urls[1..].to_vec(),
            time_scale: 0.002,
            duplicate_rate: 0.03,
            probe_rate: 0.01,
            ..PushConfig::default()
        },
        ..SimConfig::new(sandbox.clone())
    })
    .await?;
    sandbox.write_env(&sim.base_url())?;
    let config_path = write_config(&dir, &sandbox, &sim.base_url(), "")?;
    let mut config = Config::load(&config_path)?;
    if let Some(db) = database {
        config.service.database = db;
    }
    let options = crate::store::OpenOptions {
        rate_qps: config.dispatcher.qps,
        ..config.service.open_options()
    };
    match &config.service.database {
        Database::Sqlite(_) => {
            let store = SqliteStore::open(&config.service.database, &options).await?;
            run_on(opts, dir, sim, &config, vec![store], publics, admins).await
        }
        Database::Postgres(_) => {
            let mut stores = Vec::new();
            for _ in 0..opts.instances {
                stores.push(PgStore::open(&config.service.database, &options).await?);
            }
            if !stores[0].status().await?.inbox.is_empty() {
                bail!(
                    "{} already holds data: the demo needs an empty database",
                    config.service.database
                );
            }
            run_on(opts, dir, sim, &config, stores, publics, admins).await
        }
    }
}

/// The demo day on `stores` (one per instance, each serving on its pair of listeners).
async fn run_on<S: Store>(
    opts: DemoOptions,
    dir: PathBuf,
    sim: Simulator,
    config: &Config,
    stores: Vec<S>,
    publics: Vec<TcpListener>,
    admins: Vec<TcpListener>,
) -> Result<DemoReport> {
    let store = stores[0].clone();
    let mut fleet = Vec::new();
    for ((s, public), admin) in stores.into_iter().zip(publics).zip(admins) {
        fleet.push(crate::service::start(config, s, public, admin).await?);
    }

    let started = wechatpay::clock::monotonic();
    let spec = GenerateSpec {
        count: opts.payments,
        seed: opts.seed,
        members: opts.members,
        rate_per_sec: Some(opts.rate),
        refund_share: 0.1,
        manual_share: 0.05,
    };
    // WeChat rate-limits the first syncs of the day: the dispatcher must back off and retry
    sim.fail_next(
        Endpoint::PointsNotify,
        FaultKind::TooManyRequests,
        opts.burst_429,
    );
    let shared = sim.shared().clone();
    let generator =
        tokio::spawn(async move { wechatpay_sim::control::generate(&shared, spec).await });
    // a terminal gets one line updated in place; a log a line every few seconds
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last_line: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c = sim.counters();
        let st = store.status().await?;
        let get = |k: &str| *st.syncs.get(k).unwrap_or(&0);
        let line = format!(
            "  {:>5.1}s  callbacks {:>6} acked  syncs {:>6} done {:>5} pending {:>3} parked  429s {:>3}",
            started.elapsed().as_secs_f64(),
            c.callback_acks,
            get("done"),
            get("pending") + get("inflight"),
            get("parked"),
            c.rate_limited + c.faults,
        );
        if opts.progress && terminal {
            print!("\r{line}   ");
            let _ = std::io::stdout().flush();
        } else if opts.progress && last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(3)) {
            println!("{line}");
            last_line = Some(wechatpay::clock::monotonic());
        }
        if generator.is_finished()
            && sim.settle(Duration::ZERO).await
            && get("pending") + get("inflight") == 0
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the demo did not settle within 10 minutes");
        }
    }
    if opts.progress && terminal {
        println!();
    }
    generator
        .await?
        .map_err(|e| anyhow::anyhow!("generator: {e}"))?;
    let audit = store.audit().await?;
    let status = store.status().await?;
    let remote = sim.synced_points();
    let mut mismatches = Vec::new();
    for (tx, points) in &audit.credits {
        if audit.not_credited.contains(tx) {
            // kept not credited (member not authorized): nothing to sync
            continue;
        }
        match remote.get(tx) {
            Some(p) if p == points => {}
            Some(p) => mismatches.push(format!("{tx}: ledger {points}, WeChat {p}")),
            None => mismatches.push(format!("{tx}: never synced")),
        }
    }
    for tx in remote.keys().filter(|t| !audit.credits.contains_key(*t)) {
        mismatches.push(format!("{tx}: synced but not in the ledger"));
    }
    if !audit.unbalanced_members.is_empty() {
        mismatches.push(format!(
            "balances ≠ ledger for {:?}",
            audit.unbalanced_members
        ));
    }
    let c = sim.counters();
    let report = DemoReport {
        dir,
        database: config.service.database.to_string(),
        instances: opts.instances,
        notifications: Notifications::count(&sim.deliveries()),
        callbacks_sent: c.callback_attempts,
        callbacks_acked: c.callback_acks,
        credited: audit.credits.len(),
        synced: *status.syncs.get("done").unwrap_or(&0),
        parked: *status.syncs.get("parked").unwrap_or(&0),
        points_issued: audit.points_issued,
        points_deducted: audit.points_deducted,
        refunds: audit.debits,
        latency_p50_ms: percentile(&audit.sync_latencies_ms, 0.5),
        latency_p99_ms: percentile(&audit.sync_latencies_ms, 0.99),
        rate_limited: c.faults + c.rate_limited,
        records_match: mismatches.is_empty(),
        mismatches,
    };
    for running in fleet {
        running.shutdown().await;
    }
    Ok(report)
}
