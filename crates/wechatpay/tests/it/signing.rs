//! Known-answer tests for request signing, cross-checked with the `openssl` command.

use std::process::Command;
use std::sync::Arc;

use wechatpay::clock::{FixedClock, FixedNonce};
use wechatpay::sign::{RequestSigner, authorization, parse_authorization, request_sign_string};
use wechatpay::testing::keys;
use wechatpay::{ApiV3Key, ConfigError, KeyError, PrivateKey, Setting};

use crate::testdata;

fn openssl_sign(key: &str, message: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg");
    std::fs::write(&msg, message).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(testdata(key))
        .arg(&msg)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, out.stdout)
}

#[test]
fn sign_string_has_five_lf_terminated_lines() {
    let s = request_sign_string(
        "GET",
        "/v3/certificates?algorithm_type=RSA",
        1554208460,
        "593BEC0C930BF1AFEB40B4A08C8FB242",
        b"",
    );
    assert_eq!(s, b"GET\n/v3/certificates?algorithm_type=RSA\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n");
    let s = request_sign_string("POST", "/v3/x", 1, "N", "{\"a\":\"汉\"}\r\n".as_bytes());
    assert_eq!(s, "POST\n/v3/x\n1\nN\n{\"a\":\"汉\"}\r\n\n".as_bytes());
}

#[test]
fn signatures_match_openssl_for_pkcs8_and_pkcs1_keys() {
    let bodies: [&[u8]; 3] = [
        b"",
        "{\"transaction_id\":\"4200001\",\"no_points_remarks\":\"商品不参与积分活动\"}".as_bytes(),
        b"{\"a\":1}\r\n",
    ];
    for body in bodies {
        let message = request_sign_string(
            "POST",
            "/v3/businesscircle/points/notify",
            1554208460,
            "NONCE123",
            body,
        );
        let expected = openssl_sign("merchant_key.pem", &message);
        for pem in [keys::MERCHANT_KEY_PEM, keys::MERCHANT_KEY_PKCS1_PEM] {
            let signer = RequestSigner::new(
                keys::MCHID,
                keys::MERCHANT_SERIAL,
                PrivateKey::from_pem(pem).unwrap(),
            );
            let signed = signer.sign(
                "POST",
                "/v3/businesscircle/points/notify",
                body,
                1554208460,
                "NONCE123",
            );
            assert_eq!(signed.sign_string, message);
            assert_eq!(
                signed.authorization,
                authorization(
                    keys::MCHID,
                    "NONCE123",
                    &expected,
                    1554208460,
                    keys::MERCHANT_SERIAL
                )
            );
            let p = parse_authorization(&signed.authorization).unwrap();
            assert_eq!(
                (p.mchid.as_str(), p.serial_no.as_str(), p.signature.as_str()),
                (keys::MCHID, keys::MERCHANT_SERIAL, expected.as_str())
            );
        }
    }
}

#[test]
fn openssl_verifies_our_signature() {
    let dir = tempfile::tempdir().unwrap();
    let message = request_sign_string(
        "GET",
        "/v3/businesscircle/user-authorizations/o1?appid=wx1",
        1700000000,
        "ABC",
        b"",
    );
    let key = PrivateKey::from_pem(keys::MERCHANT_KEY_PEM).unwrap();
    let sig = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        key.sign_base64(&message),
    )
    .unwrap();
    std::fs::write(dir.path().join("msg"), &message).unwrap();
    std::fs::write(dir.path().join("sig"), sig).unwrap();
    let pubkey = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(testdata("merchant_cert.pem"))
        .output()
        .unwrap();
    std::fs::write(dir.path().join("pub.pem"), pubkey.stdout).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(dir.path().join("pub.pem"))
        .arg("-signature")
        .arg(dir.path().join("sig"))
        .arg(dir.path().join("msg"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK");
}

#[test]
fn authorization_parser_accepts_any_order_and_names_problems() {
    let v = r#"WECHATPAY2-SHA256-RSA2048 serial_no="S",timestamp="1",nonce_str="N",signature="a,b=",mchid="1""#;
    let p = parse_authorization(v).unwrap();
    assert_eq!(p.signature, "a,b=");
    assert!(
        parse_authorization("Bearer x")
            .unwrap_err()
            .contains("scheme")
    );
    assert!(
        parse_authorization(r#"WECHATPAY2-SHA256-RSA2048 mchid="1""#)
            .unwrap_err()
            .contains("missing parameter")
    );
}

#[test]
fn key_loading_errors_are_named() {
    let weak = PrivateKey::from_pem(keys::WEAK_KEY_PEM).unwrap_err();
    assert_eq!(weak, KeyError::TooShort);
    assert!(matches!(
        PrivateKey::from_pem("garbage"),
        Err(KeyError::Pem(_))
    ));
    assert!(matches!(
        PrivateKey::from_pem(keys::PLATFORM_CERT_PEM),
        Err(KeyError::WrongPemType { .. })
    ));
    assert_eq!(
        ApiV3Key::new("short").unwrap_err(),
        KeyError::ApiV3KeyLength { len: 5 }
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k");
    std::fs::write(&f, format!("{}\r\n", keys::APIV3_KEY)).unwrap();
    ApiV3Key::from_file(&f).unwrap();
    std::fs::write(&f, format!("{}\n\n", keys::APIV3_KEY)).unwrap();
    assert_eq!(
        ApiV3Key::from_file(&f).unwrap_err(),
        KeyError::ApiV3KeyLength { len: 33 }
    );
    assert!(matches!(
        PrivateKey::from_pem_file(dir.path().join("none")),
        Err(KeyError::Io { .. })
    ));
}

fn builder() -> wechatpay::ClientBuilder {
    wechatpay::Client::builder()
        .mchid(keys::MCHID)
        .serial(keys::MERCHANT_SERIAL)
        .private_key_pem(keys::MERCHANT_KEY_PEM)
        .trust_certificate_pem(keys::PLATFORM_CERT_PEM)
}

#[test]
fn builder_validates_everything() {
    builder().build().unwrap();
    let err = |b: wechatpay::ClientBuilder| b.build().unwrap_err();
    assert_eq!(
        err(builder().mchid("")),
        ConfigError::Missing(Setting::Mchid)
    );
    assert!(matches!(
        err(builder().private_key_pem(keys::WEAK_KEY_PEM)),
        ConfigError::Key {
            source: KeyError::TooShort,
            ..
        }
    ));
    assert!(matches!(
        err(builder().apiv3_key("x")),
        ConfigError::Key {
            source: KeyError::ApiV3KeyLength { len: 1 },
            ..
        }
    ));
    let empty = wechatpay::Client::builder()
        .mchid(keys::MCHID)
        .serial(keys::MERCHANT_SERIAL)
        .private_key_pem(keys::MERCHANT_KEY_PEM);
    assert_eq!(err(empty), ConfigError::EmptyTrustStore);
    let own = builder().trust_certificate_pem(keys::MERCHANT_CERT_PEM);
    assert!(
        matches!(err(own), ConfigError::MerchantSerialTrusted(_)),
        "merchant cert must not be trusted"
    );
    assert!(matches!(
        err(builder().trust_public_key_pem("WRONG_ID", keys::PUBKEY_PEM)),
        ConfigError::Key {
            source: KeyError::PublicKeyId(_),
            ..
        }
    ));
    assert!(matches!(
        err(builder().base_url("ftp://x")),
        ConfigError::Invalid {
            setting: Setting::BaseUrl,
            ..
        }
    ));
    // every failure names its setting, for callers that map it to their own config keys
    assert_eq!(err(builder().serial("not hex!")).setting(), Setting::Serial);
    assert_eq!(
        err(builder().private_key_pem(keys::WEAK_KEY_PEM)).setting(),
        Setting::PrivateKey
    );
    assert_eq!(err(builder().apiv3_key("x")).setting(), Setting::ApiV3Key);
    assert_eq!(
        err(builder().backup_url(Some("nope".into()))).setting(),
        Setting::BackupUrl
    );
    let msg = err(builder().serial("not hex!")).to_string();
    assert!(msg.contains("serial"), "{msg}");
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let client = builder()
        .apiv3_key(keys::APIV3_KEY)
        .clock(Arc::new(FixedClock(1)))
        .nonce_source(Arc::new(FixedNonce("N".into())))
        .build()
        .unwrap();
    let dbg = format!(
        "{client:?} {:?} {:?}",
        ApiV3Key::new(keys::APIV3_KEY).unwrap(),
        PrivateKey::from_pem(keys::MERCHANT_KEY_PEM).unwrap()
    );
    assert!(!dbg.contains(keys::APIV3_KEY), "APIv3 key leaked");
    let key_body: String = keys::MERCHANT_KEY_PEM.lines().nth(1).unwrap().to_string();
    assert!(!dbg.contains(&key_body[..20]), "private key leaked");
    assert!(dbg.contains("redacted"));
}
