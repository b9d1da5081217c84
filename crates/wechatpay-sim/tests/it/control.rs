//! The control API over HTTP, as documented in `src/control.rs`.

use std::time::Duration;

use serde_json::{Value, json};
use wechatpay::businesscircle::{AuthorizeState, PointsNotifyRequest, UserAuthorizationQuery};
use wechatpay_sim::{SimConfig, Simulator, TrustMode};

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let res = r.send().await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await.1
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
}

#[tokio::test]
async fn every_documented_route_works_over_http() {
    let sim = Simulator::start(SimConfig::test(TrustMode::Cert))
        .await
        .unwrap();
    let client = sim.client_builder().build().unwrap();
    let api = Api {
        http: reqwest::Client::new(),
        base: sim.base_url(),
    };

    // members and their authorization
    let (s, m) = api
        .post("/sim/members", json!({"authorized": false, "push": false}))
        .await;
    assert_eq!(
        (s, m["authorize_state"].as_str()),
        (200, Some("UNAUTHORIZED"))
    );
    let openid = m["openid"].as_str().unwrap().to_string();
    let appid = m["appid"].as_str().unwrap().to_string();
    let q = UserAuthorizationQuery::new(&appid);
    let (_, m) = api
        .put(
            &format!("/sim/members/{openid}/authorization"),
            json!({"authorized": true, "push": false}),
        )
        .await;
    assert_eq!(m["authorize_state"], "AUTHORIZED");
    let a = client
        .v3()
        .businesscircle()
        .user_authorizations(&openid)
        .get(&q)
        .await
        .unwrap();
    assert_eq!(a.authorize_state, AuthorizeState::Authorized);

    // payments, a manual application, refunds
    let (_, tx) = api
        .post(
            "/sim/payments",
            json!({"openid": openid, "amount": 3000, "shop_number": "S002"}),
        )
        .await;
    let txid = tx["transaction_id"].as_str().unwrap().to_string();
    assert_eq!(tx["shop_name"], "优衣库");
    let (_, manual) = api
        .post(&format!("/sim/payments/{txid}/manual"), json!({}))
        .await;
    assert!(manual["id"].as_str().unwrap().starts_with("EV-"));
    let (_, refund) = api
        .post(
            "/sim/refunds",
            json!({"transaction_id": txid, "refund_amount": 1000}),
        )
        .await;
    assert!(refund["refund_id"].is_string());
    let (s, err) = api
        .post(
            "/sim/refunds",
            json!({"transaction_id": txid, "refund_amount": 2001}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(err["error"].as_str().unwrap().contains("2000"), "{err}");
    let (s, _) = api
        .post("/sim/payments", json!({"openid": "oNOBODY", "amount": 1}))
        .await;
    assert_eq!(s, 400);

    // what was synced, per transaction and per member
    let req = PointsNotifyRequest::new(
        &txid,
        &appid,
        &openid,
        true,
        30,
        "2026-11-27T10:00:00+08:00",
    );
    client
        .v3()
        .businesscircle()
        .points()
        .notify()
        .post(&req)
        .await
        .unwrap();
    assert_eq!(
        api.get(&format!("/sim/transactions/{txid}/syncs"))
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(api.get("/sim/syncs").await.as_array().unwrap().len(), 1);
    assert_eq!(
        api.get(&format!("/sim/members/{openid}")).await["synced_points"],
        30
    );
    let deliveries = api.get("/sim/deliveries").await;
    assert_eq!(
        deliveries.as_array().unwrap().len(),
        3,
        "payment, manual application, refund: {deliveries}"
    );
    assert_eq!(api.get("/sim/counters").await["points_accepted"], 1);
    assert_eq!(
        api.get("/sim/ack-latency").await["count"],
        0,
        "no notify URL: nothing delivered"
    );

    // faults
    let rules = json!({"rules": [{"endpoint": "points_notify", "fault": {"kind": "system_error"}, "count": 1}]});
    assert_eq!(api.put("/sim/faults", rules).await.0, 200);
    let e = client
        .v3()
        .businesscircle()
        .points()
        .notify()
        .post(&req)
        .await
        .unwrap_err();
    assert_eq!(e.api().unwrap().status, 500);
    assert_eq!(
        api.get("/sim/faults").await["rules"][0]["count"],
        0,
        "the scripted fault is used up"
    );

    // options
    let (_, o) = api
        .put("/sim/options", json!({"commit_status_204": true}))
        .await;
    assert_eq!(
        (
            o["commit_status_204"].as_bool(),
            o["require_authorized"].as_bool()
        ),
        (Some(true), Some(true))
    );
    assert_eq!(api.get("/sim/options").await["commit_status_204"], true);

    // revocation
    let (_, m) = api
        .put(
            &format!("/sim/members/{openid}/authorization"),
            json!({"authorized": false}),
        )
        .await;
    assert_eq!(m["authorize_state"], "DEAUTHORIZED");
    let a = client
        .v3()
        .businesscircle()
        .user_authorizations(&openid)
        .get(&q)
        .await
        .unwrap();
    assert_eq!(a.authorize_state, AuthorizeState::Deauthorized);
    assert!(a.deauthorize_time.is_some());

    // a generated stream runs in the background
    let (_, g) = api
        .post(
            "/sim/generate",
            json!({"count": 5, "seed": 3, "members": 2}),
        )
        .await;
    assert_eq!(g["payments"], 5);
    let mut n = 0;
    for _ in 0..50 {
        n = api.get("/sim/deliveries").await.as_array().unwrap().len();
        if n == 3 + 2 + 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n, 10, "2 authorizations and 5 payments added");

    // reset
    assert_eq!(api.post("/sim/reset", json!({})).await.0, 204);
    assert_eq!(api.get("/sim/counters").await["points_accepted"], 0);
    assert!(api.get("/sim/syncs").await.as_array().unwrap().is_empty());
    let (_, m) = api.post("/sim/members", json!({"push": false})).await;
    let (_, again) = api
        .post("/sim/payments", json!({"openid": m["openid"], "amount": 1}))
        .await;
    assert_ne!(
        again["transaction_id"], tx["transaction_id"],
        "transaction ids never repeat, even after a reset"
    );
}
