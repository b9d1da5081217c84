//! What the async and blocking clients share: configuration, request preparation (signing) and
//! response handling (verification, error mapping). Only the I/O differs between the two.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use crate::clock::{Clock, NonceSource, RandomNonce, SystemClock};
use crate::crypto::{ApiV3Key, PrivateKey};
use crate::error::{ApiError, ConfigError, Error, KeyError};
use crate::explain::explain_sign_error;
use crate::sign::RequestSigner;
use crate::trust::TrustStore;
use crate::verify::{REQUEST_ID, verify_signature};

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

/// An APIv3 request ready to sign: method, path with query exactly as it will be sent, body.
/// Owned data: it can be stored and re-sent byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query, starting with `/` (e.g. `/v3/businesscircle/points/notify`).
    pub path_and_query: String,
    /// Body bytes (empty for GET).
    pub body: Bytes,
}

impl RawRequest {
    /// A request with a JSON body given as bytes (sent exactly as given).
    pub fn new(method: Method, path_and_query: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            method,
            path_and_query: path_and_query.into(),
            body: body.into(),
        }
    }
}

/// A verified 2xx response.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status (2xx).
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The raw body bytes, exactly as signed.
    pub body: Bytes,
    /// `Request-ID`.
    pub request_id: Option<String>,
    /// The trust-store id (certificate serial or `PUB_KEY_ID_…`) that verified the signature.
    pub verified_by: String,
}

impl Response {
    /// Decodes the body as JSON; a failure names the JSON path.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_json(&self.body)
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| Error::Decode {
        path: e.path().to_string(),
        reason: e.inner().to_string(),
    })
}

/// A request after signing: what goes on the wire.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub method: Method,
    pub target: String,
    /// The primary endpoint's URL, parsed once while signing.
    pub primary_url: Url,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub sign_string: Vec<u8>,
}

impl Prepared {
    /// Where to send it: the URL parsed while signing for the primary, the same target on `base` otherwise.
    pub fn url_for(&self, primary: bool, base: &Url) -> Result<Url, Error> {
        if primary {
            Ok(self.primary_url.clone())
        } else {
            base.join(&self.target)
                .map_err(|e| Error::Request(e.to_string()))
        }
    }
}

/// Primary/backup endpoint selection: fail over on connection failures, fail back once the primary
/// answers again (probed after `failback_after`).
#[derive(Debug)]
pub(crate) struct Endpoints {
    pub primary: Url,
    pub backup: Option<Url>,
    failback_after: Duration,
    on_backup_since: Mutex<Option<Instant>>,
}

impl Endpoints {
    /// The order in which to try the endpoints for the next request.
    pub fn order(&self) -> Vec<(bool, &Url)> {
        let since = *self
            .on_backup_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (&self.backup, since) {
            (Some(b), Some(t)) if t.elapsed() < self.failback_after => {
                vec![(false, b), (true, &self.primary)]
            }
            (Some(b), _) => vec![(true, &self.primary), (false, b)],
            (None, _) => vec![(true, &self.primary)],
        }
    }

    /// Records that an endpoint answered (any HTTP status) or failed to connect.
    pub fn report(&self, primary: bool, connected: bool) {
        if !primary {
            return;
        }
        let mut s = self
            .on_backup_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if connected {
            if s.take().is_some() {
                tracing::info!("wechatpay: primary endpoint answers again; failing back");
            }
        } else if self.backup.is_some() {
            tracing::warn!("wechatpay: cannot connect to primary endpoint; failing over to backup");
            *s = Some(Instant::now());
        }
    }

    /// Whether requests currently go to the backup first.
    pub fn on_backup(&self) -> bool {
        self.order().first().map(|(p, _)| !p).unwrap_or(false)
    }
}

/// Configuration shared by a client and its clones.
#[derive(Debug)]
pub(crate) struct Core {
    pub signer: RequestSigner,
    pub trust: RwLock<Arc<TrustStore>>,
    pub apiv3_key: Option<ApiV3Key>,
    pub endpoints: Endpoints,
    pub clock: Arc<dyn Clock>,
    pub nonces: Arc<dyn NonceSource>,
    pub user_agent: HeaderValue,
    pub retry_gets: u32,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl Core {
    pub fn trust(&self) -> Arc<TrustStore> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Signs `req` now.
    pub fn prepare(&self, req: &RawRequest) -> Result<Prepared, Error> {
        if !req.path_and_query.starts_with('/') {
            return Err(Error::Request(format!(
                "path must start with `/`: {}",
                req.path_and_query
            )));
        }
        // Sign exactly what the URL parser will put on the wire.
        let url = self
            .endpoints
            .primary
            .join(&req.path_and_query)
            .map_err(|e| Error::Request(format!("bad path `{}`: {e}", req.path_and_query)))?;
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let now = self.clock.now();
        let nonce = self.nonces.nonce();
        let signed = self
            .signer
            .sign(req.method.as_str(), &target, &req.body, now, &nonce);
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&signed.authorization)
                .map_err(|e| Error::Request(e.to_string()))?,
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, self.user_agent.clone());
        if !req.body.is_empty() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(id) = self.trust().public_key_id()
            && let Ok(v) = HeaderValue::from_str(id)
        {
            headers.insert("wechatpay-serial", v);
        }
        Ok(Prepared {
            method: req.method.clone(),
            target,
            primary_url: url,
            headers,
            body: req.body.clone(),
            sign_string: signed.sign_string,
        })
    }

    /// Turns a received answer into a verified [`Response`] or a typed error.
    pub fn finish(
        &self,
        p: &Prepared,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, Error> {
        let request_id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let trust = self.trust();
        let now = self.clock.now();
        if status.is_success() {
            return match verify_signature(&trust, &headers, &body, now) {
                Ok(v) => Ok(Response {
                    status,
                    headers,
                    body,
                    request_id,
                    verified_by: v.serial,
                }),
                Err(source) => Err(Error::Verify {
                    method: p.method.to_string(),
                    path: p.target.clone(),
                    request_id,
                    source,
                }),
            };
        }
        let signed = verify_signature(&trust, &headers, &body, now).is_ok();
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let code = field("code");
        let message = field("message");
        let detail = parsed.as_ref().and_then(|v| v.get("detail")).cloned();
        let sign_explanation =
            (status == StatusCode::UNAUTHORIZED && code == "SIGN_ERROR").then(|| {
                explain_sign_error(
                    &p.sign_string,
                    detail.as_ref().and_then(|d| d.get("sign_information")),
                )
            });
        let hint = match (status.as_u16(), code.as_str()) {
            (404, "RESOURCE_NOT_EXISTS") if p.target.starts_with("/v3/certificates") => Some(
                "this merchant uses WeChat Pay public-key mode: download the public key and its PUB_KEY_ID_… from 商户平台 → 账户中心 → API安全 and trust it (--trust PUB_KEY_ID_…=PATH)"
                    .to_string(),
            ),
            (401, _) if sign_explanation.is_none() => Some(
                "check mchid, the merchant certificate serial and that the private key belongs to that certificate"
                    .to_string(),
            ),
            (429, _) => Some("rate limited: back off and retry with the same payload".to_string()),
            _ => None,
        };
        let mut body_text = String::from_utf8_lossy(&body).into_owned();
        if body_text.len() > 8192 {
            let mut cut = 8192;
            while !body_text.is_char_boundary(cut) {
                cut -= 1;
            }
            body_text.truncate(cut);
        }
        Err(Error::Api(Box::new(ApiError {
            status: status.as_u16(),
            code,
            message,
            detail,
            request_id,
            body: body_text,
            signed,
            sign_explanation,
            hint,
        })))
    }

    /// Maps a transport error, deciding whether WeChat may have received the request.
    pub fn transport_error(url: &Url, e: reqwest::Error) -> Error {
        let may_have_reached = !(e.is_connect() || e.is_builder());
        Error::Transport {
            url: url.to_string(),
            may_have_reached,
            source: e,
        }
    }

    /// The one retry rule of both clients: a GET whose result is retryable is retried up to
    /// `retry_gets` times, after 100 ms, 200 ms, 400 ms, … (capped at 2 s). `None`: return `result`.
    pub fn get_retry_delay(
        &self,
        req: &RawRequest,
        attempt: &mut u32,
        result: &Result<Response, Error>,
    ) -> Option<Duration> {
        match result {
            Err(e)
                if req.method == Method::GET && *attempt < self.retry_gets && e.is_retryable() =>
            {
                *attempt += 1;
                Some(Duration::from_millis(
                    (100u64 << (*attempt).min(5).saturating_sub(1)).min(2000),
                ))
            }
            _ => None,
        }
    }

    /// A callback parser sharing the trust store, APIv3 key and clock.
    pub fn notify_parser(&self) -> Result<crate::notify::NotifyParser, ConfigError> {
        let key = self
            .apiv3_key
            .clone()
            .ok_or(ConfigError::Missing("APIv3 key"))?;
        Ok(
            crate::notify::NotifyParser::new((*self.trust()).clone(), key)
                .with_clock(self.clock.clone()),
        )
    }
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
    backup_url: Option<String>,
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
            backup_url: Some(DEFAULT_BACKUP_URL.to_string()),
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
    /// The backup base URL (default `https://api2.mch.weixin.qq.com`); `None` disables fail-over.
    pub fn backup_url(mut self, url: Option<String>) -> Self {
        self.backup_url = url;
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

    pub(crate) fn build_core(self) -> Result<Core, ConfigError> {
        let mchid = self
            .mchid
            .filter(|m| !m.trim().is_empty())
            .ok_or(ConfigError::Missing("mchid"))?;
        if !mchid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::Invalid {
                name: "mchid",
                reason: format!("`{mchid}` is not a merchant number (digits only)"),
            });
        }
        let serial = self
            .serial
            .filter(|s| !s.trim().is_empty())
            .ok_or(ConfigError::Missing(
                "serial (merchant API certificate serial)",
            ))?;
        if !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError::Invalid {
                name: "serial",
                reason: format!("`{serial}` is not a hex certificate serial"),
            });
        }
        let key = self
            .private_key
            .ok_or(ConfigError::Missing("private key"))?
            .map_err(|source| ConfigError::Key {
                name: "private key",
                source,
            })?;
        let apiv3_key = self
            .apiv3_key
            .transpose()
            .map_err(|source| ConfigError::Key {
                name: "APIv3 key",
                source,
            })?;
        if let Some(e) = self.trust_errors.into_iter().next() {
            return Err(ConfigError::Key {
                name: "trusted WeChat Pay key",
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
        let parse_url = |name: &'static str, s: &str| -> Result<Url, ConfigError> {
            let u = Url::parse(s.trim_end_matches('/')).map_err(|e| ConfigError::Invalid {
                name,
                reason: format!("`{s}`: {e}"),
            })?;
            if !matches!(u.scheme(), "https" | "http") || u.host().is_none() {
                return Err(ConfigError::Invalid {
                    name,
                    reason: format!("`{s}` is not an http(s) URL"),
                });
            }
            Ok(u)
        };
        let primary = parse_url("base URL", &self.base_url)?;
        let backup = self
            .backup_url
            .as_deref()
            .map(|b| parse_url("backup URL", b))
            .transpose()?;
        Ok(Core {
            signer: RequestSigner::new(mchid, serial.to_ascii_uppercase(), key),
            trust: RwLock::new(Arc::new(self.trust)),
            apiv3_key,
            endpoints: Endpoints {
                primary,
                backup,
                failback_after: self.failback_after,
                on_backup_since: Mutex::new(None),
            },
            clock: self.clock,
            nonces: self.nonces,
            user_agent: HeaderValue::from_str(&user_agent())
                .unwrap_or(HeaderValue::from_static("wechatpay-rust")),
            retry_gets: self.retry_gets,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
        })
    }

    /// Validates everything and builds the async client.
    pub fn build(self) -> Result<crate::Client, ConfigError> {
        crate::Client::from_core(self.build_core()?)
    }

    /// Validates everything and builds the blocking client. Do not call it inside an async runtime.
    #[cfg(feature = "blocking")]
    pub fn build_blocking(self) -> Result<crate::blocking::Client, ConfigError> {
        crate::blocking::Client::from_core(self.build_core()?)
    }
}
