//! Cryptographic primitives, all on aws-lc-rs (constant-time RSA; never the RustCrypto `rsa` crate).
//!
//! - [`PrivateKey`]: an RSA private key (PKCS#8 or PKCS#1 PEM) that signs with PKCS#1 v1.5 SHA-256.
//! - [`PublicKey`]: an RSA public key, pre-parsed once, that verifies those signatures.
//! - [`ApiV3Key`] and [`aead_decrypt`]/[`aead_encrypt`]: AEAD_AES_256_GCM as WeChat Pay uses it.

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use crate::error::AeadError;
use crate::error::KeyError;

/// Length in bytes of WeChat Pay's APIv3 key.
pub const APIV3_KEY_LEN: usize = 32;

/// An RSA private key used to sign (the merchant's API key, or — in the simulator — WeChat's).
///
/// The PEM text is zeroized as soon as it is parsed; the key material itself lives inside AWS-LC,
/// which clears it (`BN_clear_free`) when the key is dropped. `Debug` never prints it.
pub struct PrivateKey {
    key: KeyPair,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(RSA-{}, redacted)", self.bits())
    }
}

impl PrivateKey {
    /// Parses a PEM private key: `PRIVATE KEY` (PKCS#8) or `RSA PRIVATE KEY` (PKCS#1).
    /// Keys under 2048 bits are rejected, as WeChat Pay requires RSA-2048.
    pub fn from_pem(pem_text: &str) -> Result<Self, KeyError> {
        let parsed = pem::parse(pem_text.trim()).map_err(|e| KeyError::Pem(e.to_string()))?;
        let der = Zeroizing::new(parsed.contents().to_vec());
        let key = match parsed.tag() {
            "PRIVATE KEY" => KeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => KeyPair::from_der(&der),
            "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
            other => {
                return Err(KeyError::WrongPemType {
                    expected: "PRIVATE KEY or RSA PRIVATE KEY",
                    found: other.to_string(),
                });
            }
        }
        .map_err(|e| match e.description_() {
            "TooSmall" => KeyError::TooShort,
            other => KeyError::Rejected(other.to_string()),
        })?;
        if key.public_modulus_len() * 8 < 2048 {
            return Err(KeyError::TooShort);
        }
        Ok(Self { key })
    }

    /// Reads and parses a PEM private key file. The file's bytes are zeroized after parsing.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| KeyError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?);
        Self::from_pem(&text)
    }

    /// Wraps a freshly generated or already parsed aws-lc-rs key pair.
    pub fn from_key_pair(key: KeyPair) -> Self {
        Self { key }
    }

    /// Size of the modulus in bits.
    pub fn bits(&self) -> usize {
        self.key.public_modulus_len() * 8
    }

    /// The matching public key as SubjectPublicKeyInfo DER.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        self.key
            .public_key()
            .as_der()
            .map(|d| d.as_ref().to_vec())
            .unwrap_or_default()
    }

    /// Signs `message` with RSA PKCS#1 v1.5 SHA-256 and returns the base64 signature.
    pub fn sign_base64(&self, message: &[u8]) -> String {
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        // The RNG argument is ignored by aws-lc-rs for PKCS#1 v1.5; signing a message with a
        // valid key cannot fail except on allocation failure inside AWS-LC.
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.key
            .sign(&RSA_PKCS1_SHA256, &rng, message, &mut sig)
            .expect("RSA PKCS#1 v1.5 signing with a validated key");
        B64.encode(sig)
    }
}

/// An RSA public key, parsed once, that verifies PKCS#1 v1.5 SHA-256 signatures.
#[derive(Clone)]
pub struct PublicKey {
    key: ParsedPublicKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublicKey(RSA)")
    }
}

impl PublicKey {
    /// From SubjectPublicKeyInfo (or PKCS#1 `RSAPublicKey`) DER.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let key = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        Ok(Self { key })
    }

    /// From a `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY` (PKCS#1) PEM.
    pub fn from_pem(pem_text: &str) -> Result<Self, KeyError> {
        let parsed = pem::parse(pem_text.trim()).map_err(|e| KeyError::Pem(e.to_string()))?;
        match parsed.tag() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => Self::from_der(parsed.contents()),
            other => Err(KeyError::WrongPemType {
                expected: "PUBLIC KEY",
                found: other.to_string(),
            }),
        }
    }

    /// Verifies a raw (already base64-decoded) signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.verify_sig(message, signature).is_ok()
    }
}

/// WeChat Pay's APIv3 key: exactly 32 bytes. Zeroized on drop, redacted in `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ApiV3Key([u8; APIV3_KEY_LEN]);

impl fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiV3Key(redacted)")
    }
}

impl ApiV3Key {
    /// From the key's text as shown in 商户平台 (32 ASCII characters = 32 bytes).
    pub fn new(key: &str) -> Result<Self, KeyError> {
        Self::from_bytes(key.as_bytes())
    }

    /// From exactly 32 bytes.
    pub fn from_bytes(key: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; APIV3_KEY_LEN] = key
            .try_into()
            .map_err(|_| KeyError::ApiV3KeyLength { len: key.len() })?;
        Ok(Self(arr))
    }

    /// Reads a key file holding the 32-character key; one trailing newline (LF or CRLF) is ignored.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| KeyError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?);
        let mut key: &[u8] = &bytes;
        if let Some(rest) = key.strip_suffix(b"\n") {
            key = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        Self::from_bytes(key)
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("32-byte AES-256 key"))
    }
}

fn nonce_of(nonce: &str) -> Result<Nonce, AeadError> {
    let bytes: [u8; NONCE_LEN] = nonce
        .as_bytes()
        .try_into()
        .map_err(|_| AeadError::NonceLength { len: nonce.len() })?;
    Ok(Nonce::assume_unique_for_key(bytes))
}

/// Decrypts WeChat's `ciphertext` (base64 of cipher ‖ tag) with AAD `associated_data`.
pub fn aead_decrypt(
    key: &ApiV3Key,
    nonce: &str,
    associated_data: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, AeadError> {
    let nonce = nonce_of(nonce)?;
    let mut buf = B64
        .decode(ciphertext_b64.as_bytes())
        .map_err(|_| AeadError::Base64)?;
    if buf.len() < AES_256_GCM.tag_len() {
        return Err(AeadError::TooShort { len: buf.len() });
    }
    let plain = key
        .aead()
        .open_in_place(nonce, Aad::from(associated_data.as_bytes()), &mut buf)
        .map_err(|_| AeadError::Authentication)?;
    let n = plain.len();
    buf.truncate(n);
    Ok(buf)
}

/// Encrypts `plaintext` as WeChat does and returns base64(cipher ‖ tag).
pub fn aead_encrypt(
    key: &ApiV3Key,
    nonce: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> Result<String, AeadError> {
    let nonce = nonce_of(nonce)?;
    let mut buf = plaintext.to_vec();
    key.aead()
        .seal_in_place_append_tag(nonce, Aad::from(associated_data.as_bytes()), &mut buf)
        .map_err(|_| AeadError::Authentication)?;
    Ok(B64.encode(buf))
}

/// A random string of `len` characters from `[0-9A-Z]`, from the system CSPRNG.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut raw = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut raw).expect("system random source");
    raw.iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}
