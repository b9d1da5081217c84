//! Sign strings and the `Authorization` header — pure functions, no clock, no I/O.
//!
//! Request sign string (5 lines, each ending in `\n`):
//! `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n`.
//! Response and callback sign string (3 lines): `TIMESTAMP\nNONCE\nBODY\n`.

use crate::crypto::PrivateKey;

/// The authentication scheme name.
pub const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// Builds the 5-line request sign string over the exact bytes that will be sent.
pub fn request_sign_string(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut s = Vec::with_capacity(
        method.len() + path_and_query.len() + ts.len() + nonce.len() + body.len() + 5,
    );
    for part in [
        method.as_bytes(),
        path_and_query.as_bytes(),
        ts.as_bytes(),
        nonce.as_bytes(),
        body,
    ] {
        s.extend_from_slice(part);
        s.push(b'\n');
    }
    s
}

/// Builds the 3-line sign string of a response or callback. An empty body gives `ts\nnonce\n\n`.
pub fn response_sign_string(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    for part in [timestamp.as_bytes(), nonce.as_bytes(), body] {
        s.extend_from_slice(part);
        s.push(b'\n');
    }
    s
}

/// Formats the `Authorization` header value.
pub fn authorization(
    mchid: &str,
    nonce: &str,
    signature: &str,
    timestamp: i64,
    serial_no: &str,
) -> String {
    format!(
        "{SCHEME} mchid=\"{mchid}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{serial_no}\""
    )
}

/// The parsed parameters of an `Authorization` header (used by servers and the simulator).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthorizationParams {
    /// `mchid`.
    pub mchid: String,
    /// `nonce_str`.
    pub nonce_str: String,
    /// `signature` (base64).
    pub signature: String,
    /// `timestamp` as sent.
    pub timestamp: String,
    /// `serial_no`.
    pub serial_no: String,
}

/// Parses an `Authorization` header in any parameter order. Returns a reason on failure.
pub fn parse_authorization(value: &str) -> Result<AuthorizationParams, String> {
    let rest = value
        .strip_prefix(SCHEME)
        .ok_or_else(|| format!("scheme must be {SCHEME}"))?;
    if !rest.starts_with(' ') {
        return Err(format!("scheme must be {SCHEME} followed by a space"));
    }
    let mut p = AuthorizationParams::default();
    for item in split_params(rest.trim()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("parameter `{item}` has no `=`"))?;
        let v = v
            .trim()
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("parameter `{}` must be quoted", k.trim()))?;
        let slot = match k.trim() {
            "mchid" => &mut p.mchid,
            "nonce_str" => &mut p.nonce_str,
            "signature" => &mut p.signature,
            "timestamp" => &mut p.timestamp,
            "serial_no" => &mut p.serial_no,
            other => return Err(format!("unknown parameter `{other}`")),
        };
        *slot = v.to_string();
    }
    for (name, v) in [
        ("mchid", &p.mchid),
        ("nonce_str", &p.nonce_str),
        ("signature", &p.signature),
        ("timestamp", &p.timestamp),
        ("serial_no", &p.serial_no),
    ] {
        if v.is_empty() {
            return Err(format!("missing parameter `{name}`"));
        }
    }
    Ok(p)
}

/// Splits `a="x",b="y"` on commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(s[start..].trim());
    }
    out
}

/// What signing a request produced: the header to send and the exact string signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// The `Authorization` header value.
    pub authorization: String,
    /// The bytes that were signed (kept for the SIGN_ERROR explainer).
    pub sign_string: Vec<u8>,
}

/// Signs requests as one merchant: `mchid`, certificate serial and private key.
#[derive(Debug)]
pub struct RequestSigner {
    mchid: String,
    serial: String,
    key: PrivateKey,
}

impl RequestSigner {
    /// A signer for `mchid` whose API certificate has serial `serial`.
    pub fn new(mchid: impl Into<String>, serial: impl Into<String>, key: PrivateKey) -> Self {
        Self {
            mchid: mchid.into(),
            serial: serial.into(),
            key,
        }
    }

    /// The merchant id.
    pub fn mchid(&self) -> &str {
        &self.mchid
    }

    /// The merchant API certificate serial.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Signs one request. Pure: the timestamp and nonce are given.
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timestamp: i64,
        nonce: &str,
    ) -> SignedRequest {
        let sign_string = request_sign_string(method, path_and_query, timestamp, nonce, body);
        let signature = self.key.sign_base64(&sign_string);
        SignedRequest {
            authorization: authorization(&self.mchid, nonce, &signature, timestamp, &self.serial),
            sign_string,
        }
    }
}
