//! Verification of WeChat's signatures on responses and callbacks — a pure function of the
//! trust store, the headers, the raw body bytes and the current time.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;

use crate::error::VerifyError;
use crate::sign::response_sign_string;
use crate::trust::TrustStore;

/// A timestamp this many seconds or more away from now is rejected (WeChat's 5-minute rule).
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// Header carrying the signature timestamp.
pub const TIMESTAMP: &str = "wechatpay-timestamp";
/// Header carrying the signature nonce.
pub const NONCE: &str = "wechatpay-nonce";
/// Header carrying the base64 signature.
pub const SIGNATURE: &str = "wechatpay-signature";
/// Header naming the key: a certificate serial or `PUB_KEY_ID_…`.
pub const SERIAL: &str = "wechatpay-serial";
/// WeChat's request id.
pub const REQUEST_ID: &str = "request-id";
/// The prefix of WeChat's probe signatures.
pub const PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The key id that verified the signature.
    pub serial: String,
    /// The signature timestamp.
    pub timestamp: i64,
}

fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    display: &'static str,
) -> Result<Cow<'a, str>, VerifyError> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .ok_or(VerifyError::MissingHeader(display))
}

/// Verifies `headers` + raw `body` as of Unix time `now`:
/// all four `Wechatpay-*` headers present → |now − timestamp| < 300 s → serial known →
/// not a probe → RSA-SHA256 over `timestamp\nnonce\nbody\n`.
pub fn verify_signature(
    trust: &TrustStore,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Verified, VerifyError> {
    let timestamp = header(headers, TIMESTAMP, "Wechatpay-Timestamp")?;
    let nonce = header(headers, NONCE, "Wechatpay-Nonce")?;
    let signature = header(headers, SIGNATURE, "Wechatpay-Signature")?;
    let serial = header(headers, SERIAL, "Wechatpay-Serial")?;

    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp(timestamp.chars().take(32).collect()))?;
    let skew = now.saturating_sub(ts);
    if skew.unsigned_abs() >= MAX_CLOCK_SKEW_SECS as u64 {
        return Err(VerifyError::ClockSkew {
            skew_secs: skew.saturating_abs(),
            direction: if skew > 0 { "behind" } else { "ahead of" },
        });
    }
    let Some(key) = trust.get(serial.as_ref()) else {
        return Err(VerifyError::UnknownSerial {
            serial: serial.chars().take(80).collect(),
            known: trust.ids(),
        });
    };
    if signature.starts_with(PROBE_PREFIX) {
        return Err(VerifyError::Probe);
    }
    let raw_sig = B64
        .decode(signature.trim().as_bytes())
        .map_err(|_| VerifyError::SignatureEncoding)?;
    let message = response_sign_string(&timestamp, &nonce, body);
    if !key.public_key().verify(&message, &raw_sig) {
        return Err(VerifyError::BadSignature {
            serial: serial.into_owned(),
        });
    }
    Ok(Verified {
        serial: serial.into_owned(),
        timestamp: ts,
    })
}
