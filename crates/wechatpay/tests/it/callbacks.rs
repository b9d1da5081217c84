//! Callbacks: round trips for every event type and trust mode, and one distinct error per cause.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use wechatpay::clock::FixedClock;
use wechatpay::crypto::{AeadError, aead_decrypt};
use wechatpay::notify::{AuthType, Event, MallAuth, MallRefund, NotifyError, NotifyParser};
use wechatpay::testing::{CallbackSigner, CallbackSpec, keys};
use wechatpay::{ApiV3Key, PrivateKey, TrustStore, VerifyError};

const NOW: i64 = 1_700_000_000;

fn trust(cert: bool, pubkey: bool) -> TrustStore {
    let mut t = TrustStore::new();
    if cert {
        t.add_certificate_pem(keys::PLATFORM_CERT_PEM).unwrap();
    }
    if pubkey {
        t.add_public_key_pem(keys::PUBKEY_ID, keys::PUBKEY_PEM)
            .unwrap();
    }
    t
}

fn parser(t: TrustStore) -> NotifyParser {
    NotifyParser::new(t, ApiV3Key::new(keys::APIV3_KEY).unwrap())
        .with_clock(Arc::new(FixedClock(NOW)))
}

fn payment(commit_tag: Option<&str>) -> Event {
    let mut t = wechatpay::testing::example_transaction();
    t.commit_tag = commit_tag.map(str::to_string);
    t.extra
        .insert("future_field".into(), serde_json::json!({"x": 1}));
    Event::MallTransaction(t)
}

fn refund() -> Event {
    Event::MallRefund(MallRefund {
        mchid: "1234567890".into(),
        merchant_name: "万象天地".into(),
        shop_name: "重庆烤鱼（万象天地店）".into(),
        shop_number: "50001".into(),
        appid: "wx2c23be954ff1624f".into(),
        openid: "swe23be954ffots3jrvjweslfmde".into(),
        refund_time: "2018-05-23T12:13:50+08:00".into(),
        pay_amount: 100,
        refund_amount: 40,
        transaction_id: "42000001217201407033233368018".into(),
        refund_id: "1217752501201407033233368999".into(),
        extra: Default::default(),
    })
}

fn auth() -> Event {
    Event::MallAuth(MallAuth {
        openid: "oWmnN4xxxxxxxxxxe92NHIGf1xd8".into(),
        code: "478515832665".into(),
        mchid: "1230000109".into(),
        auth_type: AuthType::RegisteredAndAuthorizationMode,
        extra: Default::default(),
    })
}

fn spec() -> CallbackSpec {
    CallbackSpec {
        associated_data: "mall_transaction".into(),
        ..CallbackSpec::at(NOW)
    }
}

#[test]
fn round_trips_every_event_in_every_mode() {
    let cases = [
        (CallbackSigner::test_platform(), trust(true, false)),
        (CallbackSigner::test_pubkey(), trust(false, true)),
        (CallbackSigner::test_platform(), trust(true, true)),
        (CallbackSigner::test_pubkey(), trust(true, true)),
    ];
    for (signer, t) in cases {
        let p = parser(t);
        for event in [payment(None), payment(Some("MANUAL1")), refund(), auth()] {
            let s = spec();
            let cb = signer.build(&event, &s);
            let n = p.verify(&cb.headers, &cb.body).unwrap();
            assert_eq!(n.event, event);
            assert_eq!(n.id, s.id);
            assert_eq!(n.event_type, event.event_type());
            assert_eq!(n.resource_type, "encrypt-resource");
            assert!(n.request_id.is_some());
        }
    }
}

#[test]
fn unknown_event_types_and_fields_are_kept() {
    let signer = CallbackSigner::test_platform();
    let cb = signer.build_raw("MALL_NEW.EVENT", "x", br#"{"a":1}"#, &spec());
    let n = parser(trust(true, false))
        .verify(&cb.headers, &cb.body)
        .unwrap();
    assert_eq!(
        n.event,
        Event::Other {
            event_type: "MALL_NEW.EVENT".into(),
            resource: serde_json::json!({"a": 1})
        }
    );
    let cb = signer.build(&payment(None), &spec());
    let n = parser(trust(true, false))
        .verify(&cb.headers, &cb.body)
        .unwrap();
    let Event::MallTransaction(t) = n.event else {
        panic!("typed")
    };
    assert_eq!(t.extra["future_field"]["x"], 1);
    assert!(n.plaintext.contains("future_field"));
}

fn err(headers: &HeaderMap, body: &[u8]) -> NotifyError {
    parser(trust(true, false))
        .verify(headers, body)
        .unwrap_err()
}

#[test]
fn each_failure_has_its_own_cause() {
    let signer = CallbackSigner::test_platform();
    let cb = signer.build(&payment(None), &spec());

    // tampered body (a byte of the envelope changed)
    let mut body = cb.body.clone();
    let i = body.iter().position(|b| *b == b'E').unwrap();
    body[i] = b'F';
    assert!(matches!(
        err(&cb.headers, &body),
        NotifyError::Verify(VerifyError::BadSignature { .. })
    ));
    // re-serialised (pretty-printed) after signing
    let v: serde_json::Value = serde_json::from_slice(&cb.body).unwrap();
    let pretty = serde_json::to_vec_pretty(&v).unwrap();
    assert_eq!(err(&cb.headers, &pretty).cause(), "bad_signature");
    // empty body, 1 MB of garbage, non-UTF-8
    assert_eq!(err(&cb.headers, b"").cause(), "bad_signature");
    let garbage: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(err(&cb.headers, &garbage).cause(), "too_large");
    assert_eq!(
        err(&cb.headers, &[0xff, 0xfe, 0x00, 0xc3]).cause(),
        "bad_signature"
    );
    // each missing header
    for h in [
        "wechatpay-timestamp",
        "wechatpay-nonce",
        "wechatpay-signature",
        "wechatpay-serial",
    ] {
        let mut hs = cb.headers.clone();
        hs.remove(h);
        let e = err(&hs, &cb.body);
        assert_eq!(e.cause(), "missing_header", "{h}");
        assert!(e.to_string().to_ascii_lowercase().contains(h), "{e}");
    }
    // unknown serial
    let mut hs = cb.headers.clone();
    hs.insert("wechatpay-serial", HeaderValue::from_static("0123ABCD"));
    assert_eq!(err(&hs, &cb.body).cause(), "unknown_serial");
    // probe
    let probe = signer.build(
        &payment(None),
        &CallbackSpec {
            probe: true,
            ..spec()
        },
    );
    assert_eq!(
        err(&probe.headers, &probe.body),
        NotifyError::Verify(VerifyError::Probe)
    );
    // unsupported signature type
    let mut hs = cb.headers.clone();
    hs.insert(
        "wechatpay-signature-type",
        HeaderValue::from_static("WECHATPAY2-SM2-WITH-SM3"),
    );
    assert_eq!(err(&hs, &cb.body).cause(), "signature_type");
}

#[test]
fn decryption_failures_are_named() {
    // signed correctly, but encrypted with another APIv3 key
    let wrong_key = CallbackSigner::new(
        PrivateKey::from_pem(keys::PLATFORM_KEY_PEM).unwrap(),
        keys::PLATFORM_SERIAL,
        ApiV3Key::new("ANOTHERapiv3key0123456789abcdefX").unwrap(),
    );
    let cb = wrong_key.build(&payment(None), &spec());
    let e = err(&cb.headers, &cb.body);
    assert_eq!(e, NotifyError::Decrypt(AeadError::Authentication));
    assert!(e.to_string().contains("wrong APIv3 key"), "{e}");

    // ciphertext or nonce tampered before signing (so the signature is valid)
    let signer = CallbackSigner::test_platform();
    let plain = payment(None).to_resource_json();
    let good = signer.build_raw(
        "MALL_TRANSACTION.SUCCESS",
        "mall_transaction",
        &plain,
        &spec(),
    );
    let v: serde_json::Value = serde_json::from_slice(&good.body).unwrap();
    let resign = |v: &serde_json::Value| {
        let body = serde_json::to_vec(v).unwrap();
        let h = wechatpay::testing::sign_response(
            &PrivateKey::from_pem(keys::PLATFORM_KEY_PEM).unwrap(),
            keys::PLATFORM_SERIAL,
            NOW,
            "N",
            &body,
        );
        (h, body)
    };
    let mut t = v.clone();
    let ct = t["resource"]["ciphertext"].as_str().unwrap().to_string();
    let flipped = match ct.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &ct[1..]),
    };
    t["resource"]["ciphertext"] = flipped.into();
    let (h, b) = resign(&t);
    assert_eq!(err(&h, &b), NotifyError::Decrypt(AeadError::Authentication));
    let mut t = v.clone();
    t["resource"]["nonce"] = "AAAAAAAAAAAA".into();
    let (h, b) = resign(&t);
    assert_eq!(err(&h, &b), NotifyError::Decrypt(AeadError::Authentication));
    let mut t = v.clone();
    t["resource"]["nonce"] = "short".into();
    let (h, b) = resign(&t);
    assert_eq!(
        err(&h, &b),
        NotifyError::Decrypt(AeadError::NonceLength { len: 5 })
    );
    let mut t = v.clone();
    t["resource"]["algorithm"] = "AEAD_SM4_GCM".into();
    let (h, b) = resign(&t);
    assert_eq!(err(&h, &b).cause(), "algorithm");
    let mut t = v.clone();
    t.as_object_mut().unwrap().remove("event_type");
    let (h, b) = resign(&t);
    let e = err(&h, &b);
    assert_eq!(e.cause(), "envelope");
    assert!(e.to_string().contains("event_type"), "{e}");
    // a resource that does not match its type
    let bad = signer.build_raw(
        "MALL_REFUND.SUCCESS",
        "mall_refund",
        br#"{"mchid":"1"}"#,
        &spec(),
    );
    let e = err(&bad.headers, &bad.body);
    assert_eq!(e.cause(), "resource");
    assert!(e.to_string().contains("MALL_REFUND.SUCCESS"), "{e}");
}

#[test]
fn timestamp_window_for_callbacks() {
    let signer = CallbackSigner::test_platform();
    for (offset, ok) in crate::WINDOW {
        let cb = signer.build(
            &auth(),
            &CallbackSpec {
                timestamp: NOW + offset,
                ..spec()
            },
        );
        let r = parser(trust(true, false)).verify_at(&cb.headers, &cb.body, NOW);
        assert_eq!(r.is_ok(), ok, "offset {offset}: {r:?}");
        if !ok {
            assert_eq!(r.unwrap_err().cause(), "timestamp_window");
        }
    }
}

#[test]
fn decryption_matches_an_independent_implementation() {
    // aead_vector.json was produced by Python's `cryptography` (testdata/gen_aead_vector.py).
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::testdata("aead_vector.json")).unwrap(),
    )
    .unwrap();
    let key = ApiV3Key::new(keys::APIV3_KEY).unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    let plain = aead_decrypt(&key, &s("nonce"), &s("associated_data"), &s("ciphertext")).unwrap();
    assert_eq!(String::from_utf8(plain).unwrap(), s("plaintext"));
    // and, when Python's cryptography is installed here, against a fresh run of it
    let out = std::process::Command::new("python3")
        .arg(crate::testdata("gen_aead_vector.py"))
        .output();
    if let Some(out) = out.ok().filter(|o| o.status.success()) {
        let fresh: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            fresh["ciphertext"], v["ciphertext"],
            "GCM with a fixed nonce is deterministic"
        );
    }
    // and our encryption produces the same bytes
    let ours = wechatpay::crypto::aead_encrypt(
        &key,
        &s("nonce"),
        &s("associated_data"),
        s("plaintext").as_bytes(),
    )
    .unwrap();
    assert_eq!(ours, s("ciphertext"));
}

#[tokio::test]
async fn axum_extractor_verifies_limits_and_answers() {
    use axum::Router;
    use axum::routing::post;
    use tower::ServiceExt;
    use wechatpay::notify::axum::VerifiedNotification;

    async fn handler(VerifiedNotification(n): VerifiedNotification) -> String {
        n.event_type
    }
    let p = Arc::new(parser(trust(true, false)).with_body_limit(4096));
    let app = Router::new().route("/notify", post(handler)).with_state(p);
    let signer = CallbackSigner::test_platform();
    let cb = signer.build(&refund(), &spec());
    let req = |headers: &HeaderMap, body: Vec<u8>| {
        let mut r = http::Request::post("/notify")
            .body(axum::body::Body::from(body))
            .unwrap();
        *r.headers_mut() = headers.clone();
        r
    };
    let res = app
        .clone()
        .oneshot(req(&cb.headers, cb.body.clone()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_eq!(&body[..], b"MALL_REFUND.SUCCESS");

    let probe = signer.build(
        &refund(),
        &CallbackSpec {
            probe: true,
            ..spec()
        },
    );
    let res = app
        .clone()
        .oneshot(req(&probe.headers, probe.body))
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = serde_json::from_slice(
        &axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["code"], "FAIL");
    assert!(body["message"].as_str().unwrap().chars().count() <= 64);

    let res = app
        .oneshot(req(&cb.headers, vec![b' '; 10_000]))
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
}

#[test]
fn a_client_hands_out_a_parser_with_its_trust_key_and_clock() {
    let builder = || {
        wechatpay::Client::builder()
            .mchid(keys::MCHID)
            .serial(keys::MERCHANT_SERIAL)
            .private_key_pem(keys::MERCHANT_KEY_PEM)
            .trust_public_key_pem(keys::PUBKEY_ID, keys::PUBKEY_PEM)
            .clock(Arc::new(FixedClock(NOW)))
    };
    let without_key = builder().build().unwrap();
    assert!(matches!(
        without_key.notify_parser(),
        Err(wechatpay::ConfigError::Missing(_))
    ));
    let client = builder().apiv3_key(keys::APIV3_KEY).build().unwrap();
    let cb = CallbackSigner::test_pubkey().build(&refund(), &spec());
    let n = client
        .notify_parser()
        .unwrap()
        .verify(&cb.headers, &cb.body)
        .unwrap();
    assert_eq!(n.event, refund());
}
