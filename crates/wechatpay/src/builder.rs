//! [`ClientBuilder`]: every setting validated once, when the client is built.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use url::Url;

use crate::clock::{Clock, NonceSource, RandomNonce, SystemClock};
use crate::crypto::{ApiV3Key, PrivateKey};
use crate::endpoints::Endpoints;
use crate::error::{ConfigError, KeyError, Setting};
use crate::pipeline::Pipeline;
use crate::sign::RequestSigner;
use crate::trust::TrustStore;

/// WeChat Pay's primary API host.
pub const DEFAULT_BASE_URL: &str = "https://api.mch.weixin.qq.com";
/// WeChat Pay's backup API host (another region).
pub const DEFAULT_BACKUP_URL: &str = "https://api2.mch.weixin.qq.com";

/// The `User-Agent` this SDK sends.
pub fn user_agent() -> String {
    format!(
        "wechatpay-rust/{} ({}/{}) reqwest/0.12",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Builds an async [`crate::Client`] or, with the `blocking` feature, a [`crate::blocking::Client`].
///
/// Settings that fail to parse are reported by [`ClientBuilder::build`], which validates everything.
#[derive(Debug)]
pub struct ClientBuilder {
    mchid: Option<String>,
    serial: Option<String>,
    private_key: Option<Result<PrivateKey, KeyError>>,
    apiv3_key: Option<Result<ApiV3Key, KeyError>>,
    trust: TrustStore,
    trust_errors: Vec<KeyError>,
    base_url: String,
    /// `None`: not set (WeChat's backup for WeChat's primary, none otherwise); `Some(None)`: off.
    backup_url: Option<Option<String>>,
    failback_after: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    clock: Arc<dyn Clock>,
    nonces: Arc<dyn NonceSource>,
    retry_gets: u32,
    allow_empty_trust: bool,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            mchid: None,
            serial: None,
            private_key: None,
            apiv3_key: None,
            trust: TrustStore::new(),
            trust_errors: Vec::new(),
            base_url: DEFAULT_BASE_URL.to_string(),
            backup_url: None,
            failback_after: Duration::from_secs(30),
            timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
            nonces: Arc::new(RandomNonce),
            retry_gets: 0,
            allow_empty_trust: false,
        }
    }
}

impl ClientBuilder {
    /// A builder with WeChat's production URLs and default timeouts.
    pub fn new() -> Self {
        Self::default()
    }
    /// The merchant id (`mchid`; for a partner, the partner's own id).
    pub fn mchid(mut self, mchid: impl Into<String>) -> Self {
        self.mchid = Some(mchid.into());
        self
    }
    /// The merchant API certificate serial (`serial_no`).
    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = Some(serial.into());
        self
    }
    /// The merchant private key, PEM text (PKCS#8 or PKCS#1).
    pub fn private_key_pem(mut self, pem_text: &str) -> Self {
        self.private_key = Some(PrivateKey::from_pem(pem_text));
        self
    }
    /// The merchant private key, from a PEM file.
    pub fn private_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.private_key = Some(PrivateKey::from_pem_file(path.into()));
        self
    }
    /// An already loaded private key.
    pub fn private_key(mut self, key: PrivateKey) -> Self {
        self.private_key = Some(Ok(key));
        self
    }
    /// The APIv3 key (32 characters), used to decrypt callbacks and certificates.
    pub fn apiv3_key(mut self, key: &str) -> Self {
        self.apiv3_key = Some(ApiV3Key::new(key));
        self
    }
    /// The APIv3 key from a file (a trailing newline is ignored).
    pub fn apiv3_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.apiv3_key = Some(ApiV3Key::from_file(path.into()));
        self
    }
    /// Trusts a WeChat Pay platform certificate (PEM).
    pub fn trust_certificate_pem(mut self, pem_text: &str) -> Self {
        if let Err(e) = self.trust.add_certificate_pem(pem_text) {
            self.trust_errors.push(e);
        }
        self
    }
    /// Trusts a WeChat Pay public key (PEM) with its `PUB_KEY_ID_…`.
    pub fn trust_public_key_pem(mut self, id: &str, pem_text: &str) -> Self {
        if let Err(e) = self.trust.add_public_key_pem(id, pem_text) {
            self.trust_errors.push(e);
        }
        self
    }
    /// Trusts a file, as `--trust [ID=]PATH`: a certificate, or a public key with its id.
    pub fn trust_file(mut self, id: Option<&str>, path: impl Into<PathBuf>) -> Self {
        if let Err(e) = self.trust.add_file(id, &path.into()) {
            self.trust_errors.push(e);
        }
        self
    }
    /// Adds every key of a prepared trust store.
    pub fn trust_store(mut self, store: TrustStore) -> Self {
        self.trust.extend(store);
        self
    }
    /// The primary base URL (default `https://api.mch.weixin.qq.com`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }
    /// The backup base URL; `None` disables fail-over. When not set, a client on WeChat's primary
    /// (`https://api.mch.weixin.qq.com`) fails over to WeChat's backup
    /// (`https://api2.mch.weixin.qq.com`), and a client on any other base URL has no backup.
    pub fn backup_url(mut self, url: Option<String>) -> Self {
        self.backup_url = Some(url);
        self
    }
    /// How long to stay on the backup before probing the primary again (default 30 s).
    pub fn failback_after(mut self, d: Duration) -> Self {
        self.failback_after = d;
        self
    }
    /// Whole-request timeout (default 20 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Connect timeout (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// The clock used for signing timestamps and the verification window.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// The nonce source for request signatures.
    pub fn nonce_source(mut self, nonces: Arc<dyn NonceSource>) -> Self {
        self.nonces = nonces;
        self
    }
    /// Opt-in: retry GET requests up to `n` times on 429, 5xx and transport errors. POSTs are never
    /// retried by the SDK (callers own that decision, e.g. with a durable outbox).
    pub fn retry_gets(mut self, n: u32) -> Self {
        self.retry_gets = n;
        self
    }

    /// Allows an empty trust store, only to download the first platform certificates with
    /// [`crate::Client::certificates`] (they authenticate themselves through the APIv3 key). Every
    /// other call then fails verification with `UnknownSerial`, as it must.
    pub fn allow_empty_trust_store(mut self, yes: bool) -> Self {
        self.allow_empty_trust = yes;
        self
    }

    pub(crate) fn build_pipeline(self) -> Result<Pipeline, ConfigError> {
        let mchid = self
            .mchid
            .filter(|m| !m.trim().is_empty())
            .ok_or(ConfigError::Missing(Setting::Mchid))?;
        if !mchid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::Invalid {
                setting: Setting::Mchid,
                reason: format!("`{mchid}` is not a merchant number (digits only)"),
            });
        }
        let serial = self
            .serial
            .filter(|s| !s.trim().is_empty())
            .ok_or(ConfigError::Missing(Setting::Serial))?;
        if !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError::Invalid {
                setting: Setting::Serial,
                reason: format!("`{serial}` is not a hex certificate serial"),
            });
        }
        let key = self
            .private_key
            .ok_or(ConfigError::Missing(Setting::PrivateKey))?
            .map_err(|source| ConfigError::Key {
                setting: Setting::PrivateKey,
                source,
            })?;
        let apiv3_key = self
            .apiv3_key
            .transpose()
            .map_err(|source| ConfigError::Key {
                setting: Setting::ApiV3Key,
                source,
            })?;
        if let Some(e) = self.trust_errors.into_iter().next() {
            return Err(ConfigError::Key {
                setting: Setting::Trust,
                source: e,
            });
        }
        if self.trust.is_empty() && !self.allow_empty_trust {
            return Err(ConfigError::EmptyTrustStore);
        }
        if self
            .trust
            .ids()
            .iter()
            .any(|id| id.eq_ignore_ascii_case(&serial))
        {
            return Err(ConfigError::MerchantSerialTrusted(serial));
        }
        let parse_url = |setting: Setting, s: &str| -> Result<Url, ConfigError> {
            let u = Url::parse(s.trim_end_matches('/')).map_err(|e| ConfigError::Invalid {
                setting,
                reason: format!("`{s}`: {e}"),
            })?;
            if !matches!(u.scheme(), "https" | "http") || u.host().is_none() {
                return Err(ConfigError::Invalid {
                    setting,
                    reason: format!("`{s}` is not an http(s) URL"),
                });
            }
            Ok(u)
        };
        let primary = parse_url(Setting::BaseUrl, &self.base_url)?;
        // fail-over only ever goes from WeChat's primary to WeChat's backup: a custom base URL
        // (a simulator, a test server, a proxy) has no backup unless one is given explicitly
        let backup = match &self.backup_url {
            Some(b) => b.as_deref(),
            None if primary == parse_url(Setting::BaseUrl, DEFAULT_BASE_URL)? => {
                Some(DEFAULT_BACKUP_URL)
            }
            None => None,
        }
        .map(|b| parse_url(Setting::BackupUrl, b))
        .transpose()?;
        Ok(Pipeline {
            signer: RequestSigner::new(mchid, serial.to_ascii_uppercase(), key),
            trust: crate::trust::SharedTrust::new(self.trust),
            apiv3_key,
            endpoints: Endpoints::new(primary, backup, self.failback_after),
            clock: self.clock,
            nonces: self.nonces,
            user_agent: HeaderValue::from_str(&user_agent())
                .unwrap_or(HeaderValue::from_static("wechatpay-rust")),
            retry_gets: self.retry_gets,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
        })
    }
}
