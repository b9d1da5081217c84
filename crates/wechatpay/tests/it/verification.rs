//! Every response-verification failure path, on the pure function.

use http::HeaderMap;
use wechatpay::testing::{keys, sign_response, signature_headers};
use wechatpay::verify::verify_signature;
use wechatpay::{PrivateKey, TrustStore, VerifyError};

const NOW: i64 = 1_700_000_000;

fn trust_both() -> TrustStore {
    let mut t = TrustStore::new();
    t.add_certificate_pem(keys::PLATFORM_CERT_PEM).unwrap();
    t.add_public_key_pem(keys::PUBKEY_ID, keys::PUBKEY_PEM)
        .unwrap();
    t
}

fn platform() -> PrivateKey {
    PrivateKey::from_pem(keys::PLATFORM_KEY_PEM).unwrap()
}

fn signed(body: &[u8], ts: i64) -> HeaderMap {
    sign_response(&platform(), keys::PLATFORM_SERIAL, ts, "NONCE", body)
}

#[test]
fn certificate_serial_is_read_as_upper_hex() {
    let mut t = TrustStore::new();
    assert_eq!(
        t.add_certificate_pem(keys::PLATFORM_CERT_PEM).unwrap(),
        keys::PLATFORM_SERIAL
    );
}

#[test]
fn valid_bodies_verify_in_both_modes() {
    let t = trust_both();
    for body in [
        &b""[..],
        "{\"名称\":\"广场\"}".as_bytes(),
        b"{\"a\":1}\r\n",
        b"{}",
    ] {
        assert_eq!(
            verify_signature(&t, &signed(body, NOW), body, NOW)
                .unwrap()
                .serial,
            keys::PLATFORM_SERIAL
        );
        let pk = PrivateKey::from_pem(keys::PUBKEY_KEY_PEM).unwrap();
        let h = sign_response(&pk, keys::PUBKEY_ID, NOW, "N2", body);
        assert_eq!(
            verify_signature(&t, &h, body, NOW).unwrap().serial,
            keys::PUBKEY_ID
        );
    }
}

#[test]
fn empty_204_body_signs_timestamp_nonce_and_an_empty_line() {
    let msg = format!("{NOW}\nNONCE\n\n");
    let sig = platform().sign_base64(msg.as_bytes());
    let h = signature_headers(keys::PLATFORM_SERIAL, NOW, "NONCE", &sig);
    verify_signature(&trust_both(), &h, b"", NOW).unwrap();
}

#[test]
fn clock_window_is_under_300_seconds_both_ways() {
    let t = trust_both();
    for (offset, ok) in crate::WINDOW {
        let h = signed(b"{}", NOW + offset);
        let r = verify_signature(&t, &h, b"{}", NOW);
        assert_eq!(r.is_ok(), ok, "offset {offset}: {r:?}");
        if !ok {
            let e = r.unwrap_err();
            assert!(
                matches!(e, VerifyError::ClockSkew { skew_secs, .. } if skew_secs == offset.abs()),
                "{e}"
            );
            let dir = if offset > 0 { "ahead of" } else { "behind" };
            assert!(e.to_string().contains(dir), "{e}");
        }
    }
}

#[test]
fn each_missing_header_is_named() {
    for name in [
        "Wechatpay-Timestamp",
        "Wechatpay-Nonce",
        "Wechatpay-Signature",
        "Wechatpay-Serial",
    ] {
        let mut h = signed(b"{}", NOW);
        h.remove(name.to_ascii_lowercase().as_str());
        let e = verify_signature(&trust_both(), &h, b"{}", NOW).unwrap_err();
        assert_eq!(e, VerifyError::MissingHeader(name));
        assert!(e.to_string().contains("proxy"), "{e}");
    }
}

#[test]
fn header_names_are_case_insensitive() {
    let h = signed(b"{}", NOW);
    let mut upper = HeaderMap::new();
    for (k, v) in &h {
        upper.insert(
            http::HeaderName::from_bytes(k.as_str().to_ascii_uppercase().as_bytes()).unwrap(),
            v.clone(),
        );
    }
    verify_signature(&trust_both(), &upper, b"{}", NOW).unwrap();
}

#[test]
fn unknown_serial_lists_known_ids() {
    let h = sign_response(&platform(), "ABCDEF", NOW, "N", b"{}");
    let e = verify_signature(&trust_both(), &h, b"{}", NOW).unwrap_err();
    assert!(
        matches!(&e, VerifyError::UnknownSerial { serial, known } if serial == "ABCDEF" && known.len() == 2),
        "{e}"
    );
    assert!(e.to_string().contains(keys::PUBKEY_ID));
}

#[test]
fn probe_signature_is_its_own_error() {
    let h = signature_headers(
        keys::PLATFORM_SERIAL,
        NOW,
        "N",
        "WECHATPAY/SIGNTEST/AAAABBBBCCCC",
    );
    assert_eq!(
        verify_signature(&trust_both(), &h, b"{}", NOW).unwrap_err(),
        VerifyError::Probe
    );
}

#[test]
fn tampering_fails() {
    let t = trust_both();
    let h = signed(b"{\"a\":1}", NOW);
    // body changed, pretty-printed, CRLF added
    for body in [&b"{\"a\":2}"[..], b"{\n  \"a\": 1\n}", b"{\"a\":1}\r\n"] {
        assert!(matches!(
            verify_signature(&t, &h, body, NOW),
            Err(VerifyError::BadSignature { .. })
        ));
    }
    // nonce changed
    let mut h2 = h.clone();
    h2.insert("wechatpay-nonce", "OTHER".parse().unwrap());
    assert!(matches!(
        verify_signature(&t, &h2, b"{\"a\":1}", NOW),
        Err(VerifyError::BadSignature { .. })
    ));
    // signed by a key that is not the one trusted for the serial
    let other = PrivateKey::from_pem(keys::OTHER_KEY_PEM).unwrap();
    let h3 = sign_response(&other, keys::PLATFORM_SERIAL, NOW, "N", b"{}");
    assert!(matches!(
        verify_signature(&t, &h3, b"{}", NOW),
        Err(VerifyError::BadSignature { .. })
    ));
    // not base64
    let h4 = signature_headers(keys::PLATFORM_SERIAL, NOW, "N", "%%%");
    assert_eq!(
        verify_signature(&t, &h4, b"{}", NOW).unwrap_err(),
        VerifyError::SignatureEncoding
    );
    // timestamp not a number
    let h5 = signature_headers(keys::PLATFORM_SERIAL, 0, "N", "AAAA");
    let mut h5 = h5;
    h5.insert("wechatpay-timestamp", "soon".parse().unwrap());
    assert!(matches!(
        verify_signature(&t, &h5, b"{}", NOW),
        Err(VerifyError::BadTimestamp(_))
    ));
}

#[test]
fn expiries_name_each_key_a_certificate_with_its_not_after() {
    let cert = wechatpay::trust::parse_certificate_pem(keys::PLATFORM_CERT_PEM).unwrap();
    let mut e = trust_both().expiries();
    e.sort();
    let mut want = vec![
        (keys::PLATFORM_SERIAL.to_string(), Some(cert.not_after)),
        (keys::PUBKEY_ID.to_string(), None),
    ];
    want.sort();
    assert_eq!(e, want);
}
