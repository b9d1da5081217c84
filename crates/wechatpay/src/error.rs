//! Error types. Every failure names its cause; none carries a secret.

use std::fmt;

use serde_json::Value;

use crate::explain::SignExplanation;

/// A key or certificate could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not PEM.
    #[error("not a PEM document: {0}")]
    Pem(String),
    /// A PEM block of the wrong type.
    #[error("expected a PEM block `{expected}`, found `{found}`")]
    WrongPemType {
        /// What was expected.
        expected: &'static str,
        /// The block type found.
        found: String,
    },
    /// Password-protected private keys are not supported.
    #[error(
        "the private key is encrypted (ENCRYPTED PRIVATE KEY); decrypt it first: openssl pkey -in KEY -out PLAIN"
    )]
    Encrypted,
    /// AWS-LC rejected the key.
    #[error("key rejected: {0}")]
    Rejected(String),
    /// RSA key shorter than 2048 bits.
    #[error("RSA key is shorter than 2048 bits; WeChat Pay requires RSA-2048")]
    TooShort,
    /// The APIv3 key is not 32 bytes.
    #[error("APIv3 key must be exactly 32 bytes, got {len}")]
    ApiV3KeyLength {
        /// Length found.
        len: usize,
    },
    /// An X.509 certificate could not be parsed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A public key id that does not start with `PUB_KEY_ID_`.
    #[error("WeChat Pay public key id must start with PUB_KEY_ID_, got `{0}`")]
    PublicKeyId(String),
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
}

/// `ClientBuilder::build()` found the configuration invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("missing setting: {0}")]
    Missing(Setting),
    /// A setting has an invalid value.
    #[error("invalid {setting}: {reason}")]
    Invalid {
        /// The setting.
        setting: Setting,
        /// Why.
        reason: String,
    },
    /// A key failed to load.
    #[error("{setting}: {source}")]
    Key {
        /// Which key.
        setting: Setting,
        /// Why.
        source: KeyError,
    },
    /// No platform certificate or WeChat Pay public key to verify responses with.
    #[error(
        "empty trust store: configure a WeChat Pay platform certificate or public key (PUB_KEY_ID_…) to verify responses"
    )]
    EmptyTrustStore,
    /// The merchant's own certificate serial is listed as a WeChat key.
    #[error(
        "merchant certificate serial {0} is also listed as a trusted WeChat Pay key; the trust store must hold WeChat's certificates or public key, not the merchant's"
    )]
    MerchantSerialTrusted(String),
}

impl ConfigError {
    /// The setting at fault, so a caller can name its own configuration key without reading the
    /// message.
    pub fn setting(&self) -> Setting {
        match self {
            Self::Missing(s) | Self::Invalid { setting: s, .. } | Self::Key { setting: s, .. } => {
                *s
            }
            Self::EmptyTrustStore => Setting::Trust,
            Self::MerchantSerialTrusted(_) => Setting::Serial,
        }
    }
}

/// A client setting, as [`ConfigError::setting`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// The merchant id.
    Mchid,
    /// The merchant API certificate serial.
    Serial,
    /// The merchant private key.
    PrivateKey,
    /// The APIv3 key.
    ApiV3Key,
    /// The trusted WeChat Pay keys (platform certificates or public key).
    Trust,
    /// The primary base URL.
    BaseUrl,
    /// The backup base URL.
    BackupUrl,
    /// The HTTP client (timeouts, TLS).
    HttpClient,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mchid => "mchid",
            Self::Serial => "serial (merchant API certificate serial)",
            Self::PrivateKey => "private key",
            Self::ApiV3Key => "APIv3 key",
            Self::Trust => "trusted WeChat Pay key",
            Self::BaseUrl => "base URL",
            Self::BackupUrl => "backup URL",
            Self::HttpClient => "HTTP client",
        })
    }
}

/// A response or callback signature could not be verified. The variants name each cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A `Wechatpay-*` header is missing.
    #[error(
        "missing header {0} (a proxy or load balancer in front of this service may be stripping Wechatpay-* headers)"
    )]
    MissingHeader(&'static str),
    /// `Wechatpay-Timestamp` is not an integer.
    #[error("Wechatpay-Timestamp `{0}` is not a Unix timestamp")]
    BadTimestamp(String),
    /// The timestamp is 300 s or more away from now.
    #[error(
        "Wechatpay-Timestamp is {skew_secs} s {direction} local time (limit: under 300 s); check the clock (NTP) or a replay"
    )]
    ClockSkew {
        /// |now − timestamp|.
        skew_secs: i64,
        /// "behind" (older than now) or "ahead of".
        direction: &'static str,
    },
    /// `Wechatpay-Serial` names no key in the trust store.
    #[error("unknown Wechatpay-Serial {serial}; trusted: [{}]", known.join(", "))]
    UnknownSerial {
        /// The serial received.
        serial: String,
        /// The ids the trust store holds.
        known: Vec<String>,
    },
    /// WeChat's deliberate probe signature (`WECHATPAY/SIGNTEST/…`).
    #[error(
        "signature probe (Wechatpay-Signature starts with WECHATPAY/SIGNTEST/): WeChat Pay checking that signatures are verified; rejected as it must be"
    )]
    Probe,
    /// `Wechatpay-Signature` is not base64.
    #[error("Wechatpay-Signature is not valid base64")]
    SignatureEncoding,
    /// The signature does not match the bytes received.
    #[error(
        "signature does not match the received bytes (serial {serial}): the body or headers were altered, re-serialised, or signed with another key"
    )]
    BadSignature {
        /// The key id used.
        serial: String,
    },
}

impl VerifyError {
    /// A short stable name for metrics and logs.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::BadTimestamp(_) => "bad_timestamp",
            Self::ClockSkew { .. } => "timestamp_window",
            Self::UnknownSerial { .. } => "unknown_serial",
            Self::Probe => "probe",
            Self::SignatureEncoding => "signature_encoding",
            Self::BadSignature { .. } => "bad_signature",
        }
    }
}

/// A request model failed validation before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request field `{field}`: {reason}")]
pub struct ValidationError {
    /// The JSON field name.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// WeChat Pay answered with a non-2xx status.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// WeChat's `code` (e.g. `PARAM_ERROR`), empty if the body had none.
    pub code: String,
    /// WeChat's `message`.
    pub message: String,
    /// WeChat's `detail`, kept whole.
    pub detail: Option<Value>,
    /// The `Request-ID` header, to quote to WeChat Pay support.
    pub request_id: Option<String>,
    /// The raw body (error bodies are small; kept so nothing is lost).
    pub body: String,
    /// Whether the error response carried a valid WeChat signature.
    pub signed: bool,
    /// On 401 `SIGN_ERROR`: where our sign string differs from WeChat's.
    pub sign_explanation: Option<SignExplanation>,
    /// What to do about it, when we know.
    pub hint: Option<String>,
    /// WeChat's clock minus ours, in seconds, from the answer's `Date` header.
    pub clock_skew_secs: Option<i64>,
}

impl ApiError {
    /// 429 and 5xx are worth retrying with the same payload; 4xx are not.
    pub fn is_retryable(&self) -> bool {
        self.status == 429 || self.status >= 500
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if !self.code.is_empty() {
            write!(f, " {}", self.code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(Value::Object(d)) = &self.detail
            && let Some(field) = d.get("field").and_then(Value::as_str)
        {
            write!(f, " (field {field}")?;
            if let Some(issue) = d.get("issue").and_then(Value::as_str) {
                write!(f, ": {issue}")?;
            }
            f.write_str(")")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [Request-ID {id}]")?;
        }
        if let Some(ex) = &self.sign_explanation {
            write!(f, "; {ex}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

/// Any failure of an SDK call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request failed validation; nothing was sent.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The request could not be built (bad path template, body not serialisable…); nothing was sent.
    #[error("cannot build request: {0}")]
    Request(String),
    /// The HTTP exchange failed.
    #[error("transport error calling {url}: {cause}{}{}", if also_tried.is_empty() { String::new() } else { format!(" (also tried and failed: {})", also_tried.join(", ")) }, if *may_have_reached { " (the request may have reached WeChat Pay)" } else { " (the request did not reach WeChat Pay)" })]
    Transport {
        /// The URL called last.
        url: String,
        /// The real cause, in words (DNS lookup failed, connection refused, TLS failed, timed out).
        cause: String,
        /// Earlier endpoints tried for this request that failed to connect (fail-over).
        also_tried: Vec<String>,
        /// Whether WeChat may have received the request (timeouts after sending: yes; connect errors: no).
        may_have_reached: bool,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// WeChat answered non-2xx.
    #[error("WeChat Pay answered {0}")]
    Api(Box<ApiError>),
    /// WeChat (or something pretending to be it) answered 2xx, but the signature did not verify.
    /// The request probably reached WeChat Pay: treat the outcome as unknown.
    #[error("response to {method} {path} failed verification: {source}{}", request_id.as_ref().map(|r| format!(" [Request-ID {r}]")).unwrap_or_default())]
    Verify {
        /// Method called.
        method: String,
        /// Path called.
        path: String,
        /// `Request-ID` if present.
        request_id: Option<String>,
        /// Why.
        #[source]
        source: VerifyError,
    },
    /// A verified response body could not be decoded into the expected type.
    #[error("cannot decode response at `{path}`: {reason}")]
    Decode {
        /// JSON path of the failure.
        path: String,
        /// Why.
        reason: String,
    },
    /// Decrypting an encrypted resource (e.g. a platform certificate) failed.
    #[error("cannot decrypt {what}: {source}")]
    Decrypt {
        /// What was being decrypted.
        what: &'static str,
        /// Why.
        #[source]
        source: AeadError,
    },
    /// Missing client configuration for this call (e.g. no APIv3 key for certificate download).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Error {
    /// Whether the same request may succeed if sent again later (429, 5xx, transport failures).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Api(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether WeChat Pay may have received (and acted on) the request.
    pub fn may_have_reached_wechat(&self) -> bool {
        match self {
            Self::Transport {
                may_have_reached, ..
            } => *may_have_reached,
            Self::Api(_) | Self::Verify { .. } | Self::Decode { .. } | Self::Decrypt { .. } => true,
            Self::Validation(_) | Self::Request(_) | Self::Config(_) => false,
        }
    }

    /// The WeChat error, when WeChat answered non-2xx.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api(e) => Some(e),
            _ => None,
        }
    }
}

/// Why an AEAD_AES_256_GCM operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AeadError {
    /// The nonce is not 12 bytes.
    #[error("nonce must be 12 bytes, got {len}")]
    NonceLength {
        /// Length found.
        len: usize,
    },
    /// The ciphertext is not valid base64.
    #[error("ciphertext is not valid base64")]
    Base64,
    /// The ciphertext is shorter than the 16-byte tag.
    #[error("ciphertext is shorter than the 16-byte GCM tag ({len} bytes)")]
    TooShort {
        /// Length found.
        len: usize,
    },
    /// The tag did not authenticate: wrong APIv3 key, or tampered nonce, AAD or ciphertext.
    #[error(
        "authentication failed: wrong APIv3 key, or tampered ciphertext, nonce or associated_data"
    )]
    Authentication,
}
