//! The simulator's request checks, as WeChat makes them: headers and signature, each field rule,
//! and the business checks with their `[INFERRED]` switches. Requests go through the SDK's raw
//! chain (which does not validate bodies) or, for header checks, a hand-signed reqwest call.

use serde_json::{Value, json};
use wechatpay::PrivateKey;
use wechatpay::sign::RequestSigner;
use wechatpay::testing::keys;
use wechatpay_sim::{NewMember, NewPayment, SimConfig, SimOptions, Simulator, TrustMode};

async fn setup() -> (Simulator, wechatpay::Client, wechatpay_sim::Transaction) {
    let sim = Simulator::start(SimConfig::test(TrustMode::Cert))
        .await
        .unwrap();
    let client = sim.client_builder().build().unwrap();
    let m = sim
        .add_member(NewMember {
            push: false,
            ..NewMember::default()
        })
        .unwrap();
    let tx = sim
        .pay(NewPayment {
            openid: m.openid,
            amount: 1000,
            ..NewPayment::default()
        })
        .unwrap();
    (sim, client, tx)
}

fn body(tx: &wechatpay_sim::Transaction) -> Value {
    json!({"transaction_id": tx.transaction_id, "appid": tx.appid, "openid": tx.openid, "earn_points": true,
           "increased_points": 10, "points_update_time": "2024-01-01T10:00:00+08:00"})
}

async fn post(
    client: &wechatpay::Client,
    path: &str,
    v: &Value,
) -> Result<u16, wechatpay::ApiError> {
    match client.chain(path).json(v).post().await {
        Ok(r) => Ok(r.status.as_u16()),
        Err(e) => Err(e
            .api()
            .cloned()
            .unwrap_or_else(|| panic!("not an API error: {e}"))),
    }
}

#[tokio::test]
async fn each_field_rule_gets_a_param_error_naming_the_field() {
    let (sim, client, tx) = setup().await;
    let set = |k: &str, v: Value| {
        let mut b = body(&tx);
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = body(&tx);
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases = [
        (without("transaction_id"), "transaction_id"),
        (
            set("transaction_id", json!("1".repeat(65))),
            "transaction_id",
        ),
        (set("appid", json!("a".repeat(129))), "appid"),
        (set("openid", json!("")), "openid"),
        (without("earn_points"), "earn_points"),
        (set("earn_points", json!("yes")), "earn_points"),
        (without("increased_points"), "increased_points"),
        (set("increased_points", json!("10")), "increased_points"),
        (
            set("points_update_time", json!("2024-01-01 10:00:00")),
            "points_update_time",
        ),
        (
            set("no_points_remarks", json!("积分😀")),
            "no_points_remarks",
        ),
        (
            set("no_points_remarks", json!("x".repeat(129))),
            "no_points_remarks",
        ),
        (set("total_points", json!(1.5)), "total_points"),
        (set("sub_mchid", json!("")), "sub_mchid"),
        (json!([1, 2]), "body"),
    ];
    for (b, field) in &cases {
        let e = post(&client, "v3/businesscircle/points/notify", b)
            .await
            .unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (400, "PARAM_ERROR"),
            "{field}: {e}"
        );
        assert_eq!(
            e.detail.as_ref().unwrap()["field"],
            format!("/{field}"),
            "{e}"
        );
    }
    let park = json!({"brandid": 1000, "appid": tx.appid, "openid": tx.openid, "plate_number": "粤B1", "state": "IN",
                      "time": "2024-01-01T10:00:00+08:00"});
    let mut parking_cases = 0;
    for (k, v, field) in [
        ("state", json!("PARKED"), "state"),
        ("time", json!("today"), "time"),
        ("brandid", json!("x"), "brandid"),
        ("plate_number", json!("粤B\u{7}"), "plate_number"),
        ("plate_number", json!(""), "plate_number"),
    ] {
        let mut b = park.clone();
        b[k] = v;
        let e = post(&client, "v3/businesscircle/parkings", &b)
            .await
            .unwrap_err();
        assert_eq!(
            e.detail.as_ref().unwrap()["field"],
            format!("/{field}"),
            "{e}"
        );
        parking_cases += 1;
    }
    assert_eq!(
        post(&client, "v3/businesscircle/parkings", &park).await,
        Ok(204)
    );
    // a member who has not authorized the points service: refused, not recorded
    let stranger = sim
        .add_member(NewMember {
            authorized: false,
            push: false,
            ..NewMember::default()
        })
        .unwrap();
    let mut b = park.clone();
    b["openid"] = json!(stranger.openid);
    let e = post(&client, "v3/businesscircle/parkings", &b)
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (400, "INVALID_REQUEST"), "{e}");
    // the control API lists each accepted call's fields
    let listed = reqwest::get(format!("{}/sim/parkings", sim.base_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let listed: Vec<Value> = serde_json::from_slice(&listed).unwrap();
    assert_eq!(listed, vec![park.clone()]);
    assert_eq!(
        sim.counters().param_errors,
        (cases.len() + parking_cases) as u64
    );
    assert!(sim.syncs().is_empty(), "nothing invalid was recorded");
}

#[tokio::test]
async fn business_checks_and_their_switches() {
    let (sim, client, tx) = setup().await;
    // openid / appid / sub_mchid must match the transaction
    let mut b = body(&tx);
    b["openid"] = json!("oSOMEONEELSE");
    let e = post(&client, "v3/businesscircle/points/notify", &b)
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (400, "PARAM_ERROR"));
    let mut b = body(&tx);
    b["sub_mchid"] = json!("1900000109");
    assert_eq!(
        post(&client, "v3/businesscircle/points/notify", &b)
            .await
            .unwrap_err()
            .code,
        "PARAM_ERROR"
    );
    // unknown transaction: 404 by default, 400 when configured
    let mut b = body(&tx);
    b["transaction_id"] = json!("4299999999");
    assert_eq!(
        post(&client, "v3/businesscircle/points/notify", &b)
            .await
            .unwrap_err()
            .status,
        404
    );
    sim.set_options(SimOptions {
        unknown_transaction_status: 400,
        ..SimOptions::default()
    });
    assert_eq!(
        post(&client, "v3/businesscircle/points/notify", &b)
            .await
            .unwrap_err()
            .code,
        "PARAM_ERROR"
    );
    // a member who is not authorized
    let un = sim
        .add_member(NewMember {
            authorized: false,
            push: false,
            ..NewMember::default()
        })
        .unwrap();
    let utx = sim
        .pay(NewPayment {
            openid: un.openid,
            amount: 500,
            ..NewPayment::default()
        })
        .unwrap();
    let e = post(&client, "v3/businesscircle/points/notify", &body(&utx))
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (400, "INVALID_REQUEST"));
    sim.set_options(SimOptions {
        require_authorized: false,
        ..SimOptions::default()
    });
    assert_eq!(
        post(&client, "v3/businesscircle/points/notify", &body(&utx)).await,
        Ok(204)
    );
    assert_eq!(sim.counters().business_errors, 5);
    // a second, different sync of one transaction: accepted and counted, or rejected
    assert_eq!(
        post(&client, "v3/businesscircle/points/notify", &body(&tx)).await,
        Ok(204)
    );
    assert_eq!(
        post(&client, "v3/businesscircle/points/notify", &body(&tx)).await,
        Ok(204)
    );
    assert_eq!(sim.counters().conflicting_syncs, 0, "identical resend");
    let mut changed = body(&tx);
    changed["increased_points"] = json!(11);
    assert_eq!(
        post(&client, "v3/businesscircle/points/notify", &changed).await,
        Ok(204)
    );
    assert_eq!(sim.counters().conflicting_syncs, 1);
    sim.set_options(SimOptions {
        reject_conflicting: true,
        ..SimOptions::default()
    });
    assert_eq!(
        post(&client, "v3/businesscircle/points/notify", &changed)
            .await
            .unwrap_err()
            .status,
        400
    );
    assert_eq!(sim.synced_points()[&tx.transaction_id], 11);
}

#[tokio::test]
async fn header_and_signature_checks() {
    let (sim, _client, _tx) = setup().await;
    let http = reqwest::Client::new();
    let now = wechatpay::clock::Clock::now(&wechatpay::clock::SystemClock);
    let path = "/v3/businesscircle/user-authorizations/o1?appid=wx1";
    let send = |auth: Option<String>, ua: bool| {
        let mut r = http.get(format!("{}{path}", sim.base_url()));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        if ua {
            r = r.header("User-Agent", "test");
        }
        r.send()
    };
    let signer = |mchid: &str, serial: &str| {
        RequestSigner::new(
            mchid,
            serial,
            PrivateKey::from_pem(keys::MERCHANT_KEY_PEM).unwrap(),
        )
    };
    let good = |ts: i64| {
        signer(keys::MCHID, keys::MERCHANT_SERIAL)
            .sign("GET", path, b"", ts, "NONCE")
            .authorization
    };
    let check = |status: u16, code: &str, words: &str, res: reqwest::Response| {
        let code = code.to_string();
        let words = words.to_string();
        async move {
            assert_eq!(res.status().as_u16(), status, "{words}");
            let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
            assert_eq!(v["code"], code.as_str());
            assert!(v["message"].as_str().unwrap().contains(&words), "{v}");
        }
    };
    assert_eq!(send(Some(good(now)), true).await.unwrap().status(), 200);
    check(
        400,
        "INVALID_REQUEST",
        "User-Agent",
        send(Some(good(now)), false).await.unwrap(),
    )
    .await;
    // reqwest always adds `Accept: */*`, so this request is written by hand
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        good(now)
    );
    let mut stream = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("INVALID_REQUEST") && answer.contains("Accept"),
        "{answer}"
    );
    check(
        401,
        "SIGN_ERROR",
        "Authorization",
        send(None, true).await.unwrap(),
    )
    .await;
    check(
        401,
        "SIGN_ERROR",
        "格式错误",
        send(Some("Bearer x".into()), true).await.unwrap(),
    )
    .await;
    check(
        401,
        "SIGN_ERROR",
        "5分钟",
        send(Some(good(now - 301)), true).await.unwrap(),
    )
    .await;
    let wrong_mchid = signer("1900009999", keys::MERCHANT_SERIAL)
        .sign("GET", path, b"", now, "N")
        .authorization;
    check(
        401,
        "SIGN_ERROR",
        "1900009999",
        send(Some(wrong_mchid), true).await.unwrap(),
    )
    .await;
    let wrong_serial = signer(keys::MCHID, "ABCDEF")
        .sign("GET", path, b"", now, "N")
        .authorization;
    check(
        401,
        "SIGN_ERROR",
        "ABCDEF",
        send(Some(wrong_serial), true).await.unwrap(),
    )
    .await;
    // signed over another path: sign_information shows what WeChat built from the request received
    let other = signer(keys::MCHID, keys::MERCHANT_SERIAL)
        .sign("GET", "/v3/other", b"", now, "N")
        .authorization;
    let res = send(Some(other), true).await.unwrap();
    assert_eq!(res.status(), 401);
    let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let info = &v["detail"]["sign_information"];
    assert_eq!(info["url"], path);
    assert_eq!(
        info["truncated_sign_message"],
        format!("GET\n{path}\n{now}\nN\n\n")
    );
    assert_eq!(
        info["sign_message_length"],
        format!("GET\n{path}\n{now}\nN\n\n").len()
    );
    assert_eq!(sim.counters().sign_errors, 6);
}
