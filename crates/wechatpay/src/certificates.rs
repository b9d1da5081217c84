//! `GET /v3/certificates`: WeChat Pay platform certificates, encrypted with the APIv3 key.
//!
//! Bootstrap rule: the response may be signed by a certificate the caller does not trust yet. Each
//! certificate is decrypted with AEAD_AES_256_GCM (AAD `certificate`), which authenticates it as
//! coming from someone holding the merchant's APIv3 key; the response signature is then verified
//! with the current trust store plus those authenticated certificates.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::crypto::aead_decrypt;
use crate::error::{ConfigError, Error, KeyError, Setting};
use crate::pipeline::{Pipeline, Prepared};
use crate::request::{RawRequest, decode_json};
use crate::trust::{TrustStore, parse_certificate_pem};
use crate::verify::verify_signature;

/// One decrypted, checked platform certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlatformCertificate {
    /// Upper-case hex serial.
    pub serial_no: String,
    /// As WeChat states it (RFC 3339).
    pub effective_time: String,
    /// As WeChat states it (RFC 3339).
    pub expire_time: String,
    /// The certificate, PEM.
    pub pem: String,
}

/// The encrypted form WeChat sends.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EncryptedCertificate {
    /// `AEAD_AES_256_GCM`.
    pub algorithm: String,
    /// 12-character nonce.
    pub nonce: String,
    /// `certificate`.
    #[serde(default)]
    pub associated_data: String,
    /// base64(cipher ‖ tag).
    pub ciphertext: String,
}

/// One entry of the response's `data`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CertificateEntry {
    /// Serial.
    pub serial_no: String,
    /// Start of validity.
    #[serde(default)]
    pub effective_time: String,
    /// End of validity.
    #[serde(default)]
    pub expire_time: String,
    /// The encrypted certificate.
    pub encrypt_certificate: EncryptedCertificate,
}

/// The response body.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CertificatesResponse {
    /// The certificates.
    pub data: Vec<CertificateEntry>,
}

pub(crate) fn request() -> RawRequest {
    RawRequest::new(Method::GET, "/v3/certificates", Bytes::new())
}

pub(crate) fn finish(
    core: &Pipeline,
    p: &Prepared,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Vec<PlatformCertificate>, Error> {
    if !status.is_success() {
        // a non-2xx answer: `finish` turns it into the typed API error (with the public-key-mode hint)
        return Err(core
            .finish(p, status, headers, body)
            .err()
            .unwrap_or_else(|| Error::Request(format!("unexpected status {status}"))));
    }
    let key = core
        .apiv3_key
        .as_ref()
        .ok_or(Error::Config(ConfigError::Missing(Setting::ApiV3Key)))?;
    let parsed: CertificatesResponse = decode_json(&body)?;
    let mut certs = Vec::with_capacity(parsed.data.len());
    for entry in parsed.data {
        let e = &entry.encrypt_certificate;
        let plain =
            aead_decrypt(key, &e.nonce, &e.associated_data, &e.ciphertext).map_err(|source| {
                Error::Decrypt {
                    what: "platform certificate",
                    source,
                }
            })?;
        let pem = String::from_utf8(plain).map_err(|_| Error::Decode {
            path: "data[].encrypt_certificate".into(),
            reason: "decrypted certificate is not UTF-8 PEM".into(),
        })?;
        let parsed_cert = parse_certificate_pem(&pem).map_err(|e| Error::Decode {
            path: "data[].encrypt_certificate".into(),
            reason: e.to_string(),
        })?;
        if !parsed_cert.serial.eq_ignore_ascii_case(&entry.serial_no) {
            return Err(Error::Decode {
                path: "data[].serial_no".into(),
                reason: format!(
                    "serial_no {} does not match the certificate's serial {}",
                    entry.serial_no, parsed_cert.serial
                ),
            });
        }
        certs.push(PlatformCertificate {
            serial_no: parsed_cert.serial,
            effective_time: entry.effective_time,
            expire_time: entry.expire_time,
            pem,
        });
    }
    let mut trust = (*core.trust()).clone();
    trust.extend(to_trust_store(&certs)?);
    verify_signature(&trust, &headers, &body, core.clock.now()).map_err(|source| {
        Error::Verify {
            method: "GET".into(),
            path: p.target.clone(),
            request_id: headers
                .get(crate::verify::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            source,
        }
    })?;
    Ok(certs)
}

/// A trust store holding these certificates.
pub fn to_trust_store(certs: &[PlatformCertificate]) -> Result<TrustStore, Error> {
    let mut t = TrustStore::new();
    for c in certs {
        t.add_certificate_pem(&c.pem)
            .map_err(|e: KeyError| Error::Decode {
                path: "data[].encrypt_certificate".into(),
                reason: e.to_string(),
            })?;
    }
    Ok(t)
}
