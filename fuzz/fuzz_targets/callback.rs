//! Fuzzes callback parsing: arbitrary header lines and body bytes. When the first byte is odd, the
//! body is signed with the test platform key first, so the envelope, AES-GCM and typed-decode
//! stages are reached too. Nothing may panic.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use wechatpay::notify::NotifyParser;
use wechatpay::testing::{keys, sign_response};
use wechatpay::{ApiV3Key, PrivateKey, TrustStore};

const NOW: i64 = 1_700_000_000;

fn parser() -> &'static NotifyParser {
    static P: OnceLock<NotifyParser> = OnceLock::new();
    P.get_or_init(|| {
        let mut t = TrustStore::new();
        t.add_certificate_pem(keys::PLATFORM_CERT_PEM).unwrap();
        t.add_public_key_pem(keys::PUBKEY_ID, keys::PUBKEY_PEM).unwrap();
        NotifyParser::new(t, ApiV3Key::new(keys::APIV3_KEY).unwrap())
    })
}

fn key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::from_pem(keys::PLATFORM_KEY_PEM).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let split = rest.windows(2).position(|w| w == b"\n\n").unwrap_or(rest.len());
    let (head, body) = (&rest[..split], rest.get(split + 2..).unwrap_or(&[]));
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        if let Some(i) = line.iter().position(|b| *b == b':') {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..i]), HeaderValue::from_bytes(&line[i + 1..])) {
                headers.append(n, v);
            }
        }
    }
    if mode % 2 == 1 {
        headers.extend(sign_response(key(), keys::PLATFORM_SERIAL, NOW, "NONCE", body));
    }
    let _ = parser().verify_at(&headers, body, NOW);
});
