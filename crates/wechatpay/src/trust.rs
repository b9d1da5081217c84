//! The trust store: WeChat Pay platform certificates and public keys, by id.
//!
//! A platform certificate's id is its upper-case hex serial; a WeChat Pay public key's id starts
//! with `PUB_KEY_ID_`. Both kinds may be held at once, as during WeChat's migration.

use std::collections::BTreeMap;
use std::path::Path;

use crate::crypto::PublicKey;
use crate::error::KeyError;

/// The prefix of WeChat Pay public key ids.
pub const PUB_KEY_ID_PREFIX: &str = "PUB_KEY_ID_";

/// What a trusted key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustedKind {
    /// A platform certificate, with its validity (Unix seconds).
    Certificate {
        /// notBefore.
        not_before: i64,
        /// notAfter.
        not_after: i64,
    },
    /// A WeChat Pay public key.
    PublicKey,
}

/// One trusted WeChat Pay key.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// Certificate serial or `PUB_KEY_ID_…`.
    pub id: String,
    /// Where it came from.
    pub kind: TrustedKind,
    key: PublicKey,
}

impl TrustedKey {
    /// The verifying key.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// When a platform certificate stops being valid (Unix seconds); `None` for a public key.
    pub fn expires_at(&self) -> Option<i64> {
        match self.kind {
            TrustedKind::Certificate { not_after, .. } => Some(not_after),
            TrustedKind::PublicKey => None,
        }
    }
}

/// A parsed X.509 certificate: its serial (upper-case hex), validity and public key.
#[derive(Debug, Clone)]
pub struct ParsedCertificate {
    /// Upper-case hex serial, as WeChat sends it in `Wechatpay-Serial`.
    pub serial: String,
    /// notBefore (Unix seconds).
    pub not_before: i64,
    /// notAfter (Unix seconds).
    pub not_after: i64,
    /// SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
}

/// Parses one PEM X.509 certificate.
pub fn parse_certificate_pem(pem_text: &str) -> Result<ParsedCertificate, KeyError> {
    let parsed = pem::parse(pem_text.trim()).map_err(|e| KeyError::Pem(e.to_string()))?;
    if parsed.tag() != "CERTIFICATE" {
        return Err(KeyError::WrongPemType {
            expected: "CERTIFICATE",
            found: parsed.tag().to_string(),
        });
    }
    let (_, cert) = x509_parser::parse_x509_certificate(parsed.contents())
        .map_err(|e| KeyError::Certificate(e.to_string()))?;
    let raw = cert.tbs_certificate.raw_serial();
    let trimmed = match raw.iter().position(|b| *b != 0) {
        Some(i) => &raw[i..],
        None => &raw[raw.len().saturating_sub(1)..],
    };
    let serial = trimmed.iter().map(|b| format!("{b:02X}")).collect();
    Ok(ParsedCertificate {
        serial,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        spki_der: cert.public_key().raw.to_vec(),
    })
}

/// A map from key id to verifying key.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: BTreeMap<String, TrustedKey>,
}

impl TrustStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a platform certificate (PEM); returns its serial.
    pub fn add_certificate_pem(&mut self, pem_text: &str) -> Result<String, KeyError> {
        let cert = parse_certificate_pem(pem_text)?;
        let key = PublicKey::from_der(&cert.spki_der)?;
        let id = cert.serial.clone();
        self.keys.insert(
            id.clone(),
            TrustedKey {
                id: id.clone(),
                kind: TrustedKind::Certificate {
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                },
                key,
            },
        );
        Ok(id)
    }

    /// Adds a WeChat Pay public key (SPKI PEM) under its `PUB_KEY_ID_…` id.
    pub fn add_public_key_pem(&mut self, id: &str, pem_text: &str) -> Result<(), KeyError> {
        if !id.starts_with(PUB_KEY_ID_PREFIX) {
            return Err(KeyError::PublicKeyId(id.to_string()));
        }
        let key = PublicKey::from_pem(pem_text)?;
        self.keys.insert(
            id.to_string(),
            TrustedKey {
                id: id.to_string(),
                kind: TrustedKind::PublicKey,
                key,
            },
        );
        Ok(())
    }

    /// Adds a trust entry from a file, as the `--trust [ID=]PATH` option gives it: a certificate
    /// (its id read from it) or, with a `PUB_KEY_ID_…` id, a public key. Returns the id.
    pub fn add_file(&mut self, id: Option<&str>, path: &Path) -> Result<String, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        match id {
            Some(id) if id.starts_with(PUB_KEY_ID_PREFIX) => {
                self.add_public_key_pem(id, &text)?;
                Ok(id.to_string())
            }
            Some(id) => {
                let got = self.add_certificate_pem(&text)?;
                if !got.eq_ignore_ascii_case(id) {
                    self.keys.remove(&got);
                    return Err(KeyError::Certificate(format!(
                        "{} has serial {got}, not {id}",
                        path.display()
                    )));
                }
                Ok(got)
            }
            None if text.contains("BEGIN CERTIFICATE") => self.add_certificate_pem(&text),
            None => Err(KeyError::PublicKeyId(format!(
                "{} holds a public key; give its id as PUB_KEY_ID_…={}",
                path.display(),
                path.display()
            ))),
        }
    }

    /// Looks a key up by id (`Wechatpay-Serial`).
    pub fn get(&self, id: &str) -> Option<&TrustedKey> {
        self.keys.get(id)
    }

    /// Whether the store holds this id.
    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// All ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// True when nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The first WeChat Pay public key id, if any: requests then carry `Wechatpay-Serial` with it.
    pub fn public_key_id(&self) -> Option<&str> {
        self.keys
            .values()
            .find(|k| k.kind == TrustedKind::PublicKey)
            .map(|k| k.id.as_str())
    }

    /// Every trusted key's id with its expiry (`None` for public keys).
    pub fn expiries(&self) -> Vec<(String, Option<i64>)> {
        self.keys
            .values()
            .map(|k| (k.id.clone(), k.expires_at()))
            .collect()
    }

    /// Merges another store's keys into this one.
    pub fn extend(&mut self, other: TrustStore) {
        self.keys.extend(other.keys);
    }
}

/// A trust store shared by a client and the callback parsers made from it: keys added to one
/// (fresh platform certificates) are trusted by all. Readers take a cheap snapshot.
#[derive(Debug, Clone, Default)]
pub struct SharedTrust(std::sync::Arc<std::sync::RwLock<std::sync::Arc<TrustStore>>>);

impl SharedTrust {
    /// Shares `store`.
    pub fn new(store: TrustStore) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(store),
        )))
    }

    /// The keys trusted now.
    pub fn snapshot(&self) -> std::sync::Arc<TrustStore> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds every key of `extra`.
    pub fn extend(&self, extra: TrustStore) {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        next.extend(extra);
        *guard = std::sync::Arc::new(next);
    }
}
