//! Configuration: a TOML file plus environment overrides (`POINTSYNC__SECTION__KEY=value`).
//! Every error names the key and the file (or the variable).
//!
//! ```toml
//! [service]
//! public_listen = "0.0.0.0:8080"      # the callback endpoint only
//! admin_listen = "127.0.0.1:9090"     # /healthz /readyz /metrics /admin/status
//! database = "pointsync.db"
//! callback_path = "/wechatpay/notify"
//!
//! [wechatpay]
//! mchid = "1900000001"
//! serial = "3775B6A45ACD588826D15E583A95F5DD5EE7FFFF"
//! private_key = "apiclient_key.pem"
//! apiv3_key_file = "apiv3.key"
//! trust = ["PUB_KEY_ID_0114232134912410000000000000TEST=pub_key.pem"]
//!
//! [dispatcher]
//! qps = 100
//!
//! [rules]
//! points_per_yuan = 1.0
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rules::Rules;

mod mall_api;

use crate::store::Database;
pub use mall_api::{ApiToken, MallApiConfig, Scope, TokenConfig, token_digest};

/// `[service]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Public listener: serves only the callback path.
    pub public_listen: SocketAddr,
    /// Admin listener: health, readiness, metrics, status. Loopback by default.
    pub admin_listen: SocketAddr,
    /// Where the data lives: an SQLite file (relative paths are relative to the config file).
    pub database: Database,
    /// The callback path configured at WeChat Pay.
    pub callback_path: String,
    /// Largest callback body accepted (bytes).
    pub body_limit: usize,
    /// Callback handling deadline (WeChat waits 5 s).
    pub handler_timeout_ms: u64,
    /// A callback's headers must arrive within this; idle connections are closed after it too.
    pub header_timeout_ms: u64,
    /// A callback's body must arrive within this once its headers are in.
    pub body_timeout_ms: u64,
    /// Connections the public listener serves at once; more are closed at accept.
    pub max_connections: usize,
    /// New callbacks are refused (5xx, WeChat retries) while less than this many bytes are free on
    /// the database's file system, so an operator can act before the disk is full (0: no reserve).
    pub min_free_bytes: u64,
    /// SQLite busy timeout.
    pub busy_timeout_ms: u64,
    /// While callbacks arrive closer together than this, a callback's write waits up to this long
    /// for the next ones, so they share one commit (and fsync) instead of one each: less CPU per
    /// payment at moderate rates (on PostgreSQL, for the database too), at most this much more
    /// time to the acknowledgement. Slower than that nothing waits. 0: every callback commits as
    /// soon as it can. (Under load callbacks queue and share commits without waiting.)
    pub commit_wait_ms: u64,
    /// `text` or `json` logs.
    pub log_format: String,
    /// The callback URL as registered at WeChat (HTTPS), for `pointsync doctor`.
    pub public_url: Option<String>,
    /// A file holding the admin listener's token; required when `admin_listen` is not loopback.
    pub admin_token_file: Option<PathBuf>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            public_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            database: Database::Sqlite(PathBuf::from("pointsync.db")),
            callback_path: "/wechatpay/notify".into(),
            body_limit: 64 * 1024,
            handler_timeout_ms: 3000,
            header_timeout_ms: 2000,
            body_timeout_ms: 2000,
            max_connections: 1024,
            min_free_bytes: 64 * 1024 * 1024,
            busy_timeout_ms: 5000,
            commit_wait_ms: crate::store::DEFAULT_COMMIT_WAIT.as_millis() as u64,
            log_format: "text".into(),
            public_url: None,
            admin_token_file: None,
        }
    }
}

impl ServiceConfig {
    /// The admin token, read from `admin_token_file`.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let t = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "key `service.admin_token_file`: cannot read {}: {e}",
                path.display()
            ))
        })?;
        let t = t.trim().to_string();
        if t.len() < 16 {
            return Err(ConfigError(format!(
                "key `service.admin_token_file`: the token in {} is shorter than 16 characters",
                path.display()
            )));
        }
        Ok(Some(t))
    }

    /// How the store is opened for serving.
    pub fn open_options(&self) -> crate::store::OpenOptions {
        crate::store::OpenOptions {
            busy_timeout: std::time::Duration::from_millis(self.busy_timeout_ms),
            min_free_bytes: self.min_free_bytes,
            rate_qps: 0.0,
            commit_wait: std::time::Duration::from_millis(self.commit_wait_ms),
            lanes: None,
        }
    }
}

/// `[wechatpay]`: the merchant (or partner) and WeChat's keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatpayConfig {
    /// Merchant id (the partner's own id in partner mode).
    pub mchid: String,
    /// Merchant API certificate serial.
    pub serial: String,
    /// Merchant private key PEM file.
    pub private_key: PathBuf,
    /// File with the 32-character APIv3 key.
    pub apiv3_key_file: PathBuf,
    /// Trusted WeChat keys: certificate paths and `PUB_KEY_ID_…=path` entries.
    pub trust: Vec<String>,
    /// Primary API URL (default WeChat's).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Backup API URL (default WeChat's; `""` disables fail-over).
    #[serde(default)]
    pub backup_url: Option<String>,
    /// Per-request timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Partner mode: sync with `sub_mchid` = the mall merchant id from each callback.
    #[serde(default)]
    pub partner_mode: bool,
    /// Certificate mode: refresh WeChat's platform certificates this often (and at once when
    /// WeChat signs with a serial not trusted yet); 0 turns it off.
    #[serde(default = "default_refresh_hours")]
    pub certificate_refresh_hours: u64,
    /// At most one refresh triggered by an unknown serial this often.
    #[serde(default = "default_refresh_gap_ms")]
    pub certificate_refresh_min_gap_ms: u64,
    /// The mall's mini-program appids; the first is the default `appid` of parkings and queries
    /// (otherwise the appid of the member's latest payment).
    #[serde(default)]
    pub appids: Vec<String>,
    /// 品牌ID, sent with parkings and pending-points queries.
    #[serde(default)]
    pub brandid: Option<i64>,
    /// WeChat queries (authorization, pending points) per second, all together (WeChat allows
    /// the authorization query 150).
    #[serde(default = "default_query_qps")]
    pub query_qps: f64,
    /// A WeChat query's deadline, rate-limit wait included (it runs while a callback or an API
    /// call waits).
    #[serde(default = "default_query_timeout_ms")]
    pub query_timeout_ms: u64,
}

fn default_query_qps() -> f64 {
    100.0
}

fn default_query_timeout_ms() -> u64 {
    1500
}

fn default_refresh_hours() -> u64 {
    12
}

fn default_refresh_gap_ms() -> u64 {
    30_000
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// `[dispatcher]`: how points syncs are sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// Outgoing request rate limit (token bucket, requests per second).
    pub qps: f64,
    /// Syncs in flight at once.
    pub concurrency: usize,
    /// Rows claimed per round.
    pub batch: i64,
    /// Lease length: a claimed row not completed by then is rescued.
    pub lease_ms: i64,
    /// Back-off base for 429/5xx/transport errors (full jitter, doubling per attempt).
    pub backoff_base_ms: i64,
    /// Back-off cap.
    pub backoff_cap_ms: i64,
    /// Syncs older than this are marked dead instead of sent (WeChat watches refunds for 30 days).
    pub max_age_hours: i64,
    /// Idle poll interval (new callbacks wake the dispatcher at once).
    pub poll_ms: u64,
    /// How often expired leases are rescued.
    pub rescue_every_ms: u64,
    /// A payment's sync is leased in the callback's own transaction and sent at once when the
    /// dispatcher has room (a free in-flight slot, at most half of them this way, and a rate
    /// token): no separate claim. `false`: every sync waits for the dispatcher's claim.
    pub lease_on_receipt: bool,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            qps: 100.0,
            concurrency: 16,
            batch: 64,
            lease_ms: 30_000,
            backoff_base_ms: 500,
            backoff_cap_ms: 300_000,
            max_age_hours: 24 * 29,
            poll_ms: 200,
            rescue_every_ms: 5_000,
            lease_on_receipt: true,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[service]`.
    #[serde(default)]
    pub service: ServiceConfig,
    /// `[wechatpay]`.
    pub wechatpay: WechatpayConfig,
    /// `[dispatcher]`.
    #[serde(default)]
    pub dispatcher: DispatcherConfig,
    /// `[rules]`.
    #[serde(default)]
    pub rules: Rules,
    /// `[mall_api]`: off when absent.
    #[serde(default)]
    pub mall_api: Option<MallApiConfig>,
}

/// A configuration error naming the key and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The environment variable prefix: `POINTSYNC__WECHATPAY__MCHID` sets `wechatpay.mchid`.
pub const ENV_PREFIX: &str = "POINTSYNC__";

impl Config {
    /// Loads `path`, applies `POINTSYNC__…` overrides from the environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::parse(&text, path, std::env::vars())
    }

    /// Parses config text (from `origin`) with the given environment.
    pub fn parse(
        text: &str,
        origin: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file = origin.display();
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
                    format!(" line {line}, column {column}:")
                })
                .unwrap_or_default();
            let message = e.message().trim().replace('\n', "; ");
            ConfigError(format!("{file}:{at} {message}"))
        })?;
        // Environment values are read as TOML literals (numbers, booleans, arrays) when they parse
        // as such; a value its key then rejects (e.g. an all-digit mchid) is retried as a string.
        let mut overrides: Vec<(String, String, String, String)> = Vec::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let [section, key] = parts.as_slice() else {
                return Err(ConfigError(format!(
                    "environment variable {name}: expected {ENV_PREFIX}SECTION__KEY"
                )));
            };
            let value = format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw.clone()));
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            let toml::Value::Table(t) = entry else {
                return Err(ConfigError(format!(
                    "environment variable {name}: `{section}` is not a table"
                )));
            };
            t.insert(key.clone(), value);
            overrides.push((name, section.clone(), key.clone(), raw));
        }
        let mut config: Config = loop {
            match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(table.clone())) {
                Ok(c) => break c,
                Err(e) => {
                    let path = e.path().to_string();
                    let hit = overrides
                        .iter()
                        .find(|(_, s, k, _)| path == format!("{s}.{k}"));
                    if let Some((_, s, k, raw)) = hit
                        && let Some(toml::Value::Table(t)) = table.get_mut(s.as_str())
                        && t.get(k.as_str()) != Some(&toml::Value::String(raw.clone()))
                    {
                        t.insert(k.clone(), toml::Value::String(raw.clone()));
                        continue;
                    }
                    let from = hit
                        .map(|(name, ..)| format!(" (set by environment variable {name})"))
                        .unwrap_or_default();
                    let hint = if path.ends_with("_listen") {
                        " (expects IP:PORT, such as 0.0.0.0:8080 or 127.0.0.1:9090; a host \
                         name such as localhost is not resolved)"
                    } else {
                        ""
                    };
                    return Err(ConfigError(format!(
                        "{file}: key `{path}`{from}: {}{hint}",
                        e.inner().to_string().lines().next().unwrap_or_default()
                    )));
                }
            }
        };
        let base = origin.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config
            .validate()
            .map_err(|e| ConfigError(format!("{file}: {e}")))?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.service.database.resolve(base);
        if let Some(p) = &mut self.service.admin_token_file {
            abs(p);
        }
        if let Some(m) = &mut self.mall_api {
            for t in &mut m.tokens {
                if let Some(p) = &mut t.token_file {
                    abs(p);
                }
            }
        }
        abs(&mut self.wechatpay.private_key);
        abs(&mut self.wechatpay.apiv3_key_file);
        for t in &mut self.wechatpay.trust {
            let (id, path) = match t.split_once('=') {
                Some((i, p)) => (Some(i.to_string()), p.to_string()),
                None => (None, t.clone()),
            };
            let mut p = PathBuf::from(path);
            abs(&mut p);
            *t = match id {
                Some(i) => format!("{i}={}", p.display()),
                None => p.display().to_string(),
            };
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.rules.validate()?;
        let d = &self.dispatcher;
        if !(d.qps.is_finite() && d.qps > 0.0) {
            return Err(format!("key `dispatcher.qps`: {} must be positive", d.qps));
        }
        if d.concurrency == 0 || d.batch <= 0 || d.lease_ms <= 0 {
            return Err("keys `dispatcher.concurrency`, `dispatcher.batch`, `dispatcher.lease_ms` must be positive".into());
        }
        // a claimed row must never outlive its lease before it is sent or answered
        let timeout = i64::try_from(self.wechatpay.timeout_ms).unwrap_or(i64::MAX);
        if timeout >= d.lease_ms {
            return Err(format!(
                "key `wechatpay.timeout_ms` ({timeout} ms) must be shorter than \
                 `dispatcher.lease_ms` ({} ms): a request still waiting for WeChat when its lease \
                 ends would be taken over and sent again",
                d.lease_ms
            ));
        }
        let round_ms = d.concurrency as f64 / d.qps * 1000.0;
        if round_ms >= d.lease_ms as f64 {
            return Err(format!(
                "keys `dispatcher.concurrency` ({}) and `dispatcher.qps` ({}): sending a full round \
                 takes {round_ms:.0} ms at that rate, not under `dispatcher.lease_ms` ({} ms); lower \
                 the concurrency or raise the lease",
                d.concurrency, d.qps, d.lease_ms
            ));
        }
        if d.backoff_base_ms <= 0 || d.backoff_cap_ms < d.backoff_base_ms {
            return Err("key `dispatcher.backoff_cap_ms` must be at least `dispatcher.backoff_base_ms` (> 0)".into());
        }
        let sv = &self.service;
        if !sv.admin_listen.ip().is_loopback() && sv.admin_token_file.is_none() {
            return Err(format!(
                "key `service.admin_listen` ({}) is not loopback: the console and /metrics would \
                 be open to the network; set `service.admin_token_file` or listen on 127.0.0.1",
                sv.admin_listen
            ));
        }
        if sv.header_timeout_ms == 0 || sv.body_timeout_ms == 0 || sv.max_connections == 0 {
            return Err(
                "keys `service.header_timeout_ms`, `service.body_timeout_ms` and \
                        `service.max_connections` must be positive"
                    .into(),
            );
        }
        // the wait comes out of the handler's deadline, before WeChat's 5 s
        if sv.commit_wait_ms.saturating_mul(4) > sv.handler_timeout_ms {
            return Err(format!(
                "key `service.commit_wait_ms` ({} ms) must be at most a quarter of \
                 `service.handler_timeout_ms` ({} ms): a callback waiting for company must still \
                 be acknowledged in time",
                sv.commit_wait_ms, sv.handler_timeout_ms
            ));
        }
        if !self.service.callback_path.starts_with('/') {
            return Err(format!(
                "key `service.callback_path`: `{}` must start with /",
                self.service.callback_path
            ));
        }
        if !matches!(self.service.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "key `service.log_format`: `{}` must be text or json",
                self.service.log_format
            ));
        }
        let w = &self.wechatpay;
        if !(w.query_qps.is_finite() && w.query_qps > 0.0 && w.query_qps <= 150.0) {
            return Err(format!(
                "key `wechatpay.query_qps`: {} must be above 0 and at most 150 (WeChat's limit \
                 for the authorization query)",
                w.query_qps
            ));
        }
        if w.brandid.is_some_and(|b| b <= 0) {
            return Err("key `wechatpay.brandid` must be a positive integer".into());
        }
        for (i, a) in w.appids.iter().enumerate() {
            wechatpay::businesscircle::check_string("appid", a, 1, 128)
                .map_err(|e| format!("key `wechatpay.appids[{i}]`: {}", e.reason))?;
        }
        if let Some(m) = &self.mall_api {
            m.check_tokens().map_err(|e| e.0)?;
            if m.body_limit == 0 {
                return Err("key `mall_api.body_limit` must be positive".into());
            }
            if m.nice > 19 {
                return Err(format!(
                    "key `mall_api.nice`: {} must be 0 to 19 (Linux niceness)",
                    m.nice
                ));
            }
        }
        if self.wechatpay.trust.is_empty() {
            return Err("key `wechatpay.trust`: at least one WeChat Pay certificate or PUB_KEY_ID_…=path is needed".into());
        }
        Ok(())
    }

    /// The secret files (merchant private key, APIv3 key) that users other than the owner can
    /// read, each with a sentence saying so and how to fix it.
    pub fn exposed_secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        #[cfg(unix)]
        for (key, path) in [
            ("wechatpay.private_key", &self.wechatpay.private_key),
            ("wechatpay.apiv3_key_file", &self.wechatpay.apiv3_key_file),
        ] {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path) {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    out.push(format!(
                        "key `{key}`: {} has mode {mode:o} and is readable by other users; \
                         make it readable by the service's user only (chmod 600)",
                        path.display()
                    ));
                }
            }
        }
        out
    }

    /// Builds the SDK client; errors name the key.
    pub fn client(&self) -> Result<wechatpay::Client, ConfigError> {
        let w = &self.wechatpay;
        let mut trust = wechatpay::TrustStore::new();
        for t in &w.trust {
            let (id, path) = match t.split_once('=') {
                Some((i, p)) => (Some(i), p),
                None => (None, t.as_str()),
            };
            trust
                .add_file(id, Path::new(path))
                .map_err(|e| ConfigError(format!("key `wechatpay.trust` entry `{t}`: {e}")))?;
        }
        let mut b = wechatpay::Client::builder()
            .mchid(&w.mchid)
            .serial(&w.serial)
            .private_key_file(&w.private_key)
            .apiv3_key_file(&w.apiv3_key_file)
            .trust_store(trust)
            .timeout(std::time::Duration::from_millis(w.timeout_ms));
        if let Some(u) = &w.base_url {
            b = b.base_url(u);
        }
        if let Some(u) = &w.backup_url {
            b = b.backup_url((!u.is_empty()).then(|| u.clone()));
        }
        b.build().map_err(|e| {
            use wechatpay::Setting;
            let key = match e.setting() {
                Setting::Mchid => "wechatpay.mchid",
                Setting::Serial => "wechatpay.serial",
                Setting::PrivateKey => "wechatpay.private_key",
                Setting::ApiV3Key => "wechatpay.apiv3_key_file",
                Setting::Trust => "wechatpay.trust",
                Setting::BaseUrl => "wechatpay.base_url",
                Setting::BackupUrl => "wechatpay.backup_url",
                _ => "wechatpay",
            };
            ConfigError(format!("key `{key}`: {e}"))
        })
    }
}
