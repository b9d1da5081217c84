//! Callbacks (notifications): verified on the raw bytes, decrypted, typed.
//!
//! Only raw parts are accepted — an [`http::HeaderMap`] and the body bytes exactly as received —
//! so a framework can never re-serialise the JSON before verification.
//!
//! ```no_run
//! # fn f(parser: &wechatpay::notify::NotifyParser, headers: &http::HeaderMap, body: &[u8]) {
//! use wechatpay::notify::Event;
//! match parser.verify(headers, body) {
//!     Ok(n) => match n.event {
//!         Event::MallTransaction(t) => println!("paid {} fen: {}", t.amount, t.transaction_id),
//!         Event::MallRefund(r) => println!("refund {}", r.refund_id),
//!         Event::MallAuth(a) => println!("authorized {}", a.openid),
//!         _ => {}
//!     },
//!     Err(e) => eprintln!("rejected callback: {e}"),
//! }
//! # }
//! ```

pub mod answer;
#[cfg(feature = "axum")]
pub mod axum;
mod events;

use std::sync::Arc;

use http::HeaderMap;
use serde::Deserialize;

pub use events::{
    AuthType, Event, MALL_AUTH_ACTIVATE_CARD, MALL_REFUND_SUCCESS, MALL_TRANSACTION_SUCCESS,
    MallAuth, MallRefund, MallTransaction,
};

use crate::clock::{Clock, SystemClock};
use crate::crypto::{AeadError, ApiV3Key, aead_decrypt};
use crate::error::VerifyError;
use crate::trust::TrustStore;
use crate::verify::{REQUEST_ID, verify_signature};

/// The only algorithm WeChat uses for callback resources.
pub const AEAD_AES_256_GCM: &str = "AEAD_AES_256_GCM";
/// The only signature type supported.
pub const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";
/// Default limit on a callback body; real ones are under 2 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Why a callback was rejected. Each variant is one cause an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The signature check failed (missing header, clock window, unknown serial, probe, bad signature).
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// `Wechatpay-Signature-Type` names an algorithm this SDK does not verify.
    #[error("unsupported Wechatpay-Signature-Type `{0}` (only {SIGNATURE_TYPE})")]
    SignatureType(String),
    /// The (verified) body is not a callback envelope.
    #[error("malformed callback envelope: {0}")]
    Envelope(String),
    /// `resource.algorithm` is not AEAD_AES_256_GCM.
    #[error("unsupported resource.algorithm `{0}` (only {AEAD_AES_256_GCM})")]
    Algorithm(String),
    /// The resource did not decrypt: wrong APIv3 key or tampered ciphertext.
    #[error("cannot decrypt resource: {0}")]
    Decrypt(AeadError),
    /// The decrypted resource does not match its event type.
    #[error("malformed {event_type} resource: {reason}")]
    Resource {
        /// The event type.
        event_type: String,
        /// Where and why.
        reason: String,
    },
    /// The body could not be read (client disconnected, broken stream).
    #[error("cannot read callback body: {0}")]
    Body(String),
    /// The body is larger than the configured limit.
    #[error("callback body of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Size received (or at least this).
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl NotifyError {
    /// A short stable name for metrics and logs.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Verify(v) => v.cause(),
            Self::SignatureType(_) => "signature_type",
            Self::Envelope(_) => "envelope",
            Self::Algorithm(_) => "algorithm",
            Self::Decrypt(_) => "decrypt",
            Self::Resource { .. } => "resource",
            Self::Body(_) => "body",
            Self::TooLarge { .. } => "too_large",
        }
    }

    /// The HTTP status to answer WeChat with: 401 for signature failures, 413 for oversize,
    /// 400 otherwise. All are failures, so WeChat retries.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Verify(_) | Self::SignatureType(_) => http::StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// A verified, decrypted callback.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The notification id (unique per push; a manual application re-pushes under a new id).
    pub id: String,
    /// When WeChat created it (RFC 3339).
    pub create_time: String,
    /// `event_type`.
    pub event_type: String,
    /// `resource_type` (`encrypt-resource`).
    pub resource_type: String,
    /// `summary` (may be empty).
    pub summary: String,
    /// `resource.original_type` (may be empty).
    pub original_type: String,
    /// The `Request-ID` header, if any.
    pub request_id: Option<String>,
    /// The trust-store id that verified the signature.
    pub serial: String,
    /// The decrypted resource, exactly as decrypted (UTF-8 JSON).
    pub plaintext: String,
    /// The typed event.
    pub event: Event,
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    create_time: String,
    event_type: String,
    resource_type: String,
    #[serde(default)]
    summary: String,
    resource: Resource,
}

#[derive(Deserialize)]
struct Resource {
    algorithm: String,
    ciphertext: String,
    nonce: String,
    #[serde(default)]
    associated_data: String,
    #[serde(default)]
    original_type: String,
}

/// Verifies, decrypts and types callbacks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NotifyParser {
    trust: crate::trust::SharedTrust,
    key: ApiV3Key,
    clock: Arc<dyn Clock>,
    body_limit: usize,
}

impl NotifyParser {
    /// A parser trusting `trust` and decrypting with `key`, on the system clock.
    pub fn new(trust: TrustStore, key: ApiV3Key) -> Self {
        Self::with_shared_trust(crate::trust::SharedTrust::new(trust), key)
    }

    /// A parser trusting what `trust` holds at each callback (a client's store, which fresh
    /// platform certificates join).
    pub fn with_shared_trust(trust: crate::trust::SharedTrust, key: ApiV3Key) -> Self {
        Self {
            trust,
            key,
            clock: Arc::new(SystemClock),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Uses another clock for [`NotifyParser::verify`].
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the body size limit (default 64 KiB).
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// The body size limit.
    pub fn body_limit(&self) -> usize {
        self.body_limit
    }

    /// The WeChat keys trusted now.
    pub fn trust_store(&self) -> Arc<TrustStore> {
        self.trust.snapshot()
    }

    /// Verifies and decrypts a callback as of now.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Notification, NotifyError> {
        self.verify_at(headers, body, self.clock.now())
    }

    /// Verifies and decrypts a callback as of Unix time `now`:
    /// headers → time window → serial → signature → envelope → AES-256-GCM → typed event.
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Notification, NotifyError> {
        if body.len() > self.body_limit {
            return Err(NotifyError::TooLarge {
                len: body.len(),
                limit: self.body_limit,
            });
        }
        if let Some(t) = headers.get("wechatpay-signature-type") {
            let t = String::from_utf8_lossy(t.as_bytes());
            if t != SIGNATURE_TYPE {
                return Err(NotifyError::SignatureType(t.chars().take(64).collect()));
            }
        }
        let verified = verify_signature(&self.trust.snapshot(), headers, body, now)?;
        let de = &mut serde_json::Deserializer::from_slice(body);
        let env: Envelope = serde_path_to_error::deserialize(de)
            .map_err(|e| NotifyError::Envelope(format!("at `{}`: {}", e.path(), e.inner())))?;
        if env.resource.algorithm != AEAD_AES_256_GCM {
            return Err(NotifyError::Algorithm(
                env.resource.algorithm.chars().take(64).collect(),
            ));
        }
        let plain = aead_decrypt(
            &self.key,
            &env.resource.nonce,
            &env.resource.associated_data,
            &env.resource.ciphertext,
        )
        .map_err(NotifyError::Decrypt)?;
        let resource_error = |reason: String| NotifyError::Resource {
            event_type: env.event_type.clone(),
            reason,
        };
        let plaintext = String::from_utf8(plain).map_err(|_| resource_error("not UTF-8".into()))?;
        let event = Event::decode(&env.event_type, plaintext.as_bytes()).map_err(resource_error)?;
        Ok(Notification {
            id: env.id,
            create_time: env.create_time,
            event_type: env.event_type,
            resource_type: env.resource_type,
            summary: env.summary,
            original_type: env.resource.original_type,
            request_id: headers
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            serial: verified.serial,
            plaintext,
            event,
        })
    }
}
