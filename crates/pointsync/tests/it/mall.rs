//! The mall API end to end: the service and the simulator over real loopback HTTP, tokens and
//! scopes, members paying before authorizing, revocations, parkings relayed through the outbox,
//! adjustments under concurrency, bad input, and the OpenAPI document against the router.

use std::time::Duration;

use pointsync::config::{MallApiConfig, Scope, TokenConfig, token_digest};
use pointsync::service::mall_api::{ROUTES, documented};
use pointsync::store::Store;
use serde_json::{Value, json};
use wechatpay_sim::{Endpoint, FaultKind, NewMember, NewPayment};

use crate::harness::{Harness, assert_invariants, fast_push, wait_for, wait_quiet};

const MINIPROGRAM: &str = "miniprogram-token-0123456789abcdef0123";
const POS: &str = "pos-token-0123456789abcdef0123456789abcd";
const CARPARK: &str = "carpark-token-0123456789abcdef012345678";
const NOTHING: &str = "nothing-token-0123456789abcdef012345678";

fn token(name: &str, secret: &str, scopes: &[Scope]) -> TokenConfig {
    let hex: String = token_digest(secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    TokenConfig {
        name: name.into(),
        token_file: None,
        sha256: Some(hex),
        scopes: scopes.to_vec(),
    }
}

/// The service with the mall API on, authorization asked of WeChat (the default), pending
/// points never cached.
async fn start() -> Harness {
    Harness::start_with(
        fast_push(),
        &[
            ("POINTSYNC__RULES__UNKNOWN_AUTHORIZATION", "query"),
            ("POINTSYNC__WECHATPAY__BRANDID", "1000"),
        ],
        |c| {
            c.mall_api = Some(MallApiConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                tokens: vec![
                    token("miniprogram", MINIPROGRAM, &[Scope::MembersRead]),
                    token("pos", POS, &[Scope::MembersRead, Scope::PointsAdjust]),
                    token("carpark", CARPARK, &[Scope::ParkingsWrite]),
                    token("nothing", NOTHING, &[]),
                ],
                pending_cache_ms: 0,
                ..MallApiConfig::default()
            })
        },
    )
    .await
}

fn base(h: &Harness) -> String {
    format!("http://{}", h.running().mall_addr.unwrap())
}

async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("{}{path}", base(h)));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

async fn get(h: &Harness, path: &str, token: &str) -> (u16, Value) {
    call(h, "GET", path, Some(token), None, &[]).await
}

async fn post(h: &Harness, path: &str, token: &str, body: Value) -> (u16, Value) {
    let b = serde_json::to_vec(&body).unwrap();
    call(h, "POST", path, Some(token), Some(b), &[]).await
}

/// A member known to WeChat, authorized, whose authorization callback the service never got.
fn quiet_member(h: &Harness, authorized: bool) -> wechatpay_sim::Member {
    h.sim
        .add_member(NewMember {
            authorized,
            push: false,
            ..NewMember::default()
        })
        .unwrap()
}

fn pay(h: &Harness, openid: &str, amount: i64) -> wechatpay_sim::Transaction {
    h.sim
        .pay(NewPayment {
            openid: openid.into(),
            amount,
            ..NewPayment::default()
        })
        .unwrap()
}

async fn quiet(h: &Harness) {
    wait_quiet(&h.sim, &h.store, Duration::from_secs(20)).await;
}

/// An authorized member (callback never received) who paid `amount` fen, all settled.
async fn paid_member(h: &Harness, amount: i64) -> wechatpay_sim::Member {
    let m = quiet_member(h, true);
    pay(h, &m.openid, amount);
    quiet(h).await;
    m
}

#[tokio::test]
async fn a_member_who_pays_before_authorizing_gets_her_points_when_she_applies() {
    let h = start().await;
    let m = quiet_member(&h, false);
    let tx = pay(&h, &m.openid, 12_000);
    quiet(&h).await;
    // WeChat was asked, said UNAUTHORIZED: kept, not credited, nothing sent
    let (status, v) = get(&h, &format!("/v1/members/{}", m.openid), MINIPROGRAM).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["balance"], 0);
    assert_eq!(v["not_credited_payments"], 1);
    assert_eq!(v["authorization"]["state"], "not_authorized");
    assert_eq!(v["authorization"]["wechat_state"], "UNAUTHORIZED");
    assert_eq!(v["authorization"]["source"], "query");
    assert!(v["authorization"]["learned_at"].as_i64().is_some());
    // WeChat's record: today's purchase waits for points
    assert_eq!(v["pending_points"]["status"], "PENDING", "{v}");
    assert!(
        h.sim.syncs().is_empty(),
        "no sync for a member not authorized"
    );
    assert_eq!(
        h.metric("pointsync_wechat_queries_total", "authorization"),
        1.0
    );

    // she authorizes in the plugin (the callback arrives) and applies for the purchase's points
    h.sim.set_authorization(&m.openid, true, true).unwrap();
    wait_for(
        "the authorization callback",
        Duration::from_secs(10),
        || h.sim.deliveries().iter().all(|d| d.delivered),
    )
    .await;
    h.sim.manual_apply(&tx.transaction_id).unwrap();
    quiet(&h).await;
    let (_, v) = get(&h, &format!("/v1/members/{}", m.openid), MINIPROGRAM).await;
    assert_eq!(v["balance"], 120, "{v}");
    assert_eq!(v["not_credited_payments"], 0);
    assert_eq!(v["credited_today"], 120);
    assert_eq!(v["authorization"]["state"], "authorized");
    assert_eq!(v["authorization"]["source"], "callback");
    assert_eq!(v["pending_points"]["status"], "FINISHED", "{v}");
    // WeChat's record matches the ledger: one sync, earn_points true, 120 points
    let syncs = h.sim.syncs();
    assert_eq!(syncs.len(), 1, "{syncs:?}");
    let body: Value = serde_json::from_str(&syncs[0].body).unwrap();
    assert_eq!(
        (
            &body["earn_points"],
            &body["increased_points"],
            &body["total_points"]
        ),
        (&json!(true), &json!(120), &json!(120))
    );
    assert_eq!(h.sim.synced_points().get(&tx.transaction_id), Some(&120));
    let (status, page) = get(&h, &format!("/v1/members/{}/ledger", m.openid), MINIPROGRAM).await;
    assert_eq!(status, 200);
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{page}");
    assert_eq!(
        (
            &entries[0]["points"],
            &entries[0]["refund_id"],
            &entries[0]["reference"]
        ),
        (&json!(120), &json!("manual"), &json!(tx.transaction_id))
    );
    assert_eq!(entries[1]["points"], 0);
    assert_eq!(entries[1]["rule"]["reason"], "member not authorized");
    // a second application changes nothing
    h.sim.manual_apply(&tx.transaction_id).unwrap();
    quiet(&h).await;
    assert_eq!(h.balance(&m.openid).await, 120);
    assert_eq!(h.sim.syncs().len(), 1);
    assert_invariants(&h.sim, &h.store).await;
}

#[tokio::test]
async fn a_revoked_member_stops_earning_once_reconciled() {
    let h = start().await;
    let m = paid_member(&h, 5_000).await;
    assert_eq!(h.balance(&m.openid).await, 50, "asked WeChat, authorized");
    // she revokes: WeChat sends no callback; reconciliation learns it
    h.sim.set_authorization(&m.openid, false, false).unwrap();
    let queries = std::sync::Arc::new(pointsync::service::Queries::new(
        &h.config,
        h.config.client().unwrap(),
        pointsync::metrics::Metrics::new(),
        std::sync::Arc::new(pointsync::clock::SystemClock),
    ));
    let mut pages = 0;
    let done = pointsync::service::reconcile::reconcile(
        &h.store,
        queries,
        pointsync::clock::now_ms() + 1,
        pointsync::clock::now_ms,
        |_| pages += 1,
    )
    .await
    .unwrap();
    assert_eq!((done.asked, done.not_authorized, done.failed), (1, 1, 0));
    assert_eq!(pages, 1);
    let (_, v) = get(&h, &format!("/v1/members/{}", m.openid), POS).await;
    assert_eq!(v["authorization"]["wechat_state"], "DEAUTHORIZED", "{v}");
    pay(&h, &m.openid, 5_000);
    quiet(&h).await;
    let (_, v) = get(&h, &format!("/v1/members/{}", m.openid), POS).await;
    assert_eq!(
        (&v["balance"], &v["not_credited_payments"]),
        (&json!(50), &json!(1))
    );
    assert_invariants(&h.sim, &h.store).await;
}

#[tokio::test]
async fn every_endpoint_refuses_a_missing_a_wrong_and_an_unscoped_token() {
    let h = start().await;
    let m = paid_member(&h, 1_000).await;
    for r in ROUTES {
        let path = r.path.replace("{openid}", &m.openid).replace("{id}", "1");
        let body = (r.method == "POST").then(|| b"{}".to_vec());
        let (status, v) = call(&h, r.method, &path, None, body.clone(), &[]).await;
        assert_eq!(
            (status, &v["code"]),
            (401, &json!("unauthorized")),
            "{path}"
        );
        let (status, v) = call(&h, r.method, &path, Some("not-a-token"), body.clone(), &[]).await;
        assert_eq!(
            (status, &v["code"]),
            (401, &json!("unauthorized")),
            "{path}"
        );
        let (status, v) = call(&h, r.method, &path, Some(NOTHING), body.clone(), &[]).await;
        match r.scope {
            Some(scope) => {
                assert_eq!((status, &v["code"]), (403, &json!("forbidden")), "{path}");
                assert!(
                    v["message"].as_str().unwrap().contains(scope.as_str()),
                    "{v}"
                );
            }
            None => assert_eq!(status, 200, "{path}: any valid token"),
        }
    }
    let scoped = ROUTES.iter().filter(|r| r.scope.is_some()).count() as f64;
    let n = ROUTES.len() as f64;
    assert_eq!(
        h.metric("pointsync_mall_api_refusals_total", "missing_token"),
        n
    );
    assert_eq!(
        h.metric("pointsync_mall_api_refusals_total", "wrong_token"),
        n
    );
    assert_eq!(
        h.metric("pointsync_mall_api_refusals_total", "nothing"),
        scoped
    );
    let text = h.running().metrics.render();
    assert!(!text.contains(NOTHING) && !text.contains("not-a-token"));
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_the_router_serves() {
    let h = start().await;
    let (status, doc) = get(&h, "/v1/openapi.json", MINIPROGRAM).await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    for r in ROUTES {
        let method = r.method.to_ascii_lowercase();
        assert!(
            paths.get(r.path).and_then(|p| p.get(&method)).is_some(),
            "{} {} is served but not documented",
            r.method,
            r.path
        );
        assert!(documented(r.method, r.path));
        // served: with every scope, the route answers with its own codes, not the fallback's
        let path = r.path.replace("{openid}", "oUnknown").replace("{id}", "99");
        let token = match r.scope {
            Some(Scope::ParkingsWrite) => CARPARK,
            _ => POS,
        };
        let body = (r.method == "POST").then(|| b"{}".to_vec());
        let (_, v) = call(&h, r.method, &path, Some(token), body, &[]).await;
        assert_ne!(v["code"], "not_found", "{} {path}: {v}", r.method);
    }
    let documented_ops: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented_ops,
        ROUTES.len(),
        "nothing documented that is not served"
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // and nothing is served that is not documented
    let (status, v) = get(&h, "/v1/members", POS).await;
    assert_eq!((status, &v["code"]), (404, &json!("not_found")));
    let (status, v) = call(&h, "DELETE", "/v1/parkings", Some(CARPARK), None, &[]).await;
    assert_eq!((status, &v["code"]), (405, &json!("method_not_allowed")));
}

#[tokio::test]
async fn adjustments_are_idempotent_under_concurrent_identical_requests() {
    let h = start().await;
    let m = paid_member(&h, 30_000).await;
    assert_eq!(h.balance(&m.openid).await, 300);
    let path = format!("/v1/members/{}/adjustments", m.openid);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let url = format!("{}{path}", base(&h));
        tasks.spawn(async move {
            let res = reqwest::Client::new()
                .post(url)
                .bearer_auth(POS)
                .header("content-type", "application/json")
                .body(r#"{"points": -120, "reference": "REDEEM-1", "reason": "coffee voucher"}"#)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
            (status, v)
        });
    }
    let mut applied = 0;
    while let Some(r) = tasks.join_next().await {
        let (status, v) = r.unwrap();
        match status {
            201 => {
                applied += 1;
                assert_eq!(v, json!({"result": "applied", "balance": 180}));
            }
            200 => assert_eq!(v, json!({"result": "duplicate", "balance": 180})),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(applied, 1);
    assert_eq!(h.balance(&m.openid).await, 180);
    // the same reference with another amount: refused, naming the first; below zero; a stranger
    let refused = |body: Value, path: String| {
        let h = &h;
        async move { post(h, &path, POS, body).await }
    };
    let (status, v) = refused(
        json!({"points": -100, "reference": "REDEEM-1", "reason": "x"}),
        path.clone(),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("adjustment_conflict"))
    );
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(&m.openid) && message.contains("-120"),
        "{v}"
    );
    for (body, path, status, code) in [
        (
            json!({"points": -181, "reference": "REDEEM-2", "reason": ""}),
            path.clone(),
            409,
            "insufficient_points",
        ),
        (
            json!({"points": 5, "reference": "G-1", "reason": ""}),
            "/v1/members/oNobody/adjustments".to_string(),
            404,
            "member_not_found",
        ),
    ] {
        let (s, v) = refused(body, path).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{v}");
    }
    assert_eq!(h.balance(&m.openid).await, 180);
    let (_, page) = get(&h, &format!("/v1/members/{}/ledger?limit=1", m.openid), POS).await;
    assert_eq!(page["entries"][0]["kind"], "adjust");
    assert!(
        page["entries"][0]["rule"]["note"]
            .as_str()
            .unwrap()
            .contains("pos"),
        "the caller is recorded: {page}"
    );
}

#[tokio::test]
async fn the_ledger_pages_newest_first_with_a_cursor() {
    let h = start().await;
    let m = quiet_member(&h, true);
    for i in 1..=5 {
        pay(&h, &m.openid, i * 1_000);
    }
    quiet(&h).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/members/{}/ledger?limit=2&cursor={c}", m.openid),
            None => format!("/v1/members/{}/ledger?limit=2", m.openid),
        };
        let (status, page) = get(&h, &path, MINIPROGRAM).await;
        assert_eq!(status, 200, "{page}");
        for e in page["entries"].as_array().unwrap() {
            seen.push(e["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    for bad in ["limit=0", "limit=101", "limit=x", "cursor=-1", "cursor=abc"] {
        let (status, v) = get(
            &h,
            &format!("/v1/members/{}/ledger?{bad}", m.openid),
            MINIPROGRAM,
        )
        .await;
        let field = bad.split('=').next().unwrap();
        assert_eq!(
            (status, &v["code"], &v["field"]),
            (400, &json!("invalid_field"), &json!(field)),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn parkings_are_relayed_once_through_429s_and_repeats() {
    let h = start().await;
    let m = paid_member(&h, 1_000).await;
    h.sim
        .fail_next(Endpoint::Parkings, FaultKind::TooManyRequests, 3);
    let event = json!({"openid": m.openid, "plate_number": "粤B888888", "state": "IN",
                       "time": "2026-12-01T10:43:39+08:00"});
    let body = serde_json::to_vec(&event).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (url, body) = (format!("{}/v1/parkings", base(&h)), body.clone());
        tasks.spawn(async move {
            let res = reqwest::Client::new()
                .post(url)
                .bearer_auth(CARPARK)
                .header("idempotency-key", "gate-3-0001")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 202);
            let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
            v["id"].as_i64().unwrap()
        });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(id) = tasks.join_next().await {
        ids.insert(id.unwrap());
    }
    assert_eq!(ids.len(), 1, "one event, one id: {ids:?}");
    let id = *ids.first().unwrap();
    // the same key for another event: refused, nothing stored
    let mut other = event.clone();
    other["state"] = json!("OUT");
    let (status, v) = call(
        &h,
        "POST",
        "/v1/parkings",
        Some(CARPARK),
        Some(serde_json::to_vec(&other).unwrap()),
        &[("idempotency-key", "gate-3-0001")],
    )
    .await;
    assert_eq!(
        (status, &v["code"]),
        (409, &json!("idempotency_conflict")),
        "{v}"
    );
    // without a key, the event's own fields are the key
    let (s1, a) = post(&h, "/v1/parkings", CARPARK, other.clone()).await;
    let (s2, b) = post(&h, "/v1/parkings", CARPARK, other.clone()).await;
    assert_eq!(
        (s1, s2, &a["duplicate"], &b["duplicate"]),
        (202, 202, &json!(false), &json!(true))
    );
    assert_eq!(a["id"], b["id"]);
    quiet(&h).await;
    let relayed = h.sim.parkings();
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    assert_eq!(relayed[0]["plate_number"], "粤B888888");
    assert_eq!(relayed[0]["brandid"], 1000, "brandid from the config");
    assert_eq!(
        relayed[0]["appid"],
        json!(m.appid),
        "appid from her payment"
    );
    // three 429s shared between the two events' relays, each retried with back-off
    let (status, v) = get(&h, &format!("/v1/parkings/{id}"), CARPARK).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&v["relay"], &v["state"]),
        (&json!("done"), &json!("IN")),
        "{v}"
    );
    let (_, w) = get(&h, &format!("/v1/parkings/{}", a["id"]), CARPARK).await;
    assert_eq!(
        (&w["relay"], &w["state"]),
        (&json!("done"), &json!("OUT")),
        "{w}"
    );
    assert_eq!(
        v["attempts"].as_i64().unwrap() + w["attempts"].as_i64().unwrap(),
        2 + 3
    );
    let (status, v) = get(&h, "/v1/parkings/999", CARPARK).await;
    assert_eq!((status, &v["code"]), (404, &json!("parking_not_found")));
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let h = start().await;
    let m = paid_member(&h, 10_000).await;
    let adjust = format!("/v1/members/{}/adjustments", m.openid);
    let raw = |s: &str| Some(s.as_bytes().to_vec());
    let long = "o".repeat(65);
    let park = |k: &str, v: Value| {
        let mut p = json!({"openid": m.openid, "plate_number": "粤B1", "state": "IN",
                           "time": "2026-12-01T10:43:39+08:00"});
        p[k] = v;
        Some(serde_json::to_vec(&p).unwrap())
    };
    // (method, path, token, body, status, code, field)
    type Case<'a> = (
        &'a str,
        String,
        &'a str,
        Option<Vec<u8>>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            adjust.clone(),
            POS,
            raw("{\"points\": 5,"),
            400,
            "malformed_json",
            None,
        ),
        (
            "POST",
            adjust.clone(),
            POS,
            raw("{\"points\": 5, \"reference\": \"R\", \"reason\": \"\", \"extra\": 1}"),
            400,
            "unknown_field",
            Some("extra"),
        ),
        (
            "POST",
            adjust.clone(),
            POS,
            raw("{\"points\": \"5\", \"reference\": \"R\", \"reason\": \"\"}"),
            400,
            "invalid_field",
            Some("points"),
        ),
        (
            "POST",
            adjust.clone(),
            POS,
            raw("{\"reference\": \"R\", \"reason\": \"\"}"),
            400,
            "missing_field",
            Some("points"),
        ),
        (
            "POST",
            adjust.clone(),
            POS,
            raw("{\"points\": 0, \"reference\": \"R\", \"reason\": \"\"}"),
            400,
            "invalid_field",
            Some("points"),
        ),
        (
            "POST",
            adjust.clone(),
            POS,
            raw("{\"points\": 5, \"reference\": \"R\\u0007\", \"reason\": \"\"}"),
            400,
            "invalid_field",
            Some("reference"),
        ),
        (
            "POST",
            adjust.clone(),
            POS,
            Some(vec![b' '; 10 * 1024 * 1024]),
            413,
            "body_too_large",
            None,
        ),
        (
            "GET",
            format!("/v1/members/{long}"),
            POS,
            None,
            400,
            "invalid_field",
            Some("openid"),
        ),
        (
            "POST",
            format!("/v1/members/{long}/adjustments"),
            POS,
            raw("{\"points\": 5, \"reference\": \"R\", \"reason\": \"\"}"),
            400,
            "invalid_field",
            Some("openid"),
        ),
        (
            "POST",
            "/v1/parkings".into(),
            CARPARK,
            park("openid", json!(long)),
            400,
            "invalid_field",
            Some("openid"),
        ),
        (
            "POST",
            "/v1/parkings".into(),
            CARPARK,
            park("plate_number", json!("粤B\u{1}1")),
            400,
            "invalid_field",
            Some("plate_number"),
        ),
        (
            "POST",
            "/v1/parkings".into(),
            CARPARK,
            park("time", json!("2026-12-01 10:43")),
            400,
            "invalid_field",
            Some("time"),
        ),
        (
            "POST",
            "/v1/parkings".into(),
            CARPARK,
            park("state", json!("PARKED")),
            400,
            "invalid_field",
            Some("state"),
        ),
        (
            "POST",
            "/v1/parkings".into(),
            CARPARK,
            park("brandid", json!("1000")),
            400,
            "invalid_field",
            Some("brandid"),
        ),
        (
            "POST",
            "/v1/parkings".into(),
            CARPARK,
            raw("[1, 2]"),
            400,
            "malformed_json",
            None,
        ),
    ];
    for (method, path, token, body, status, code, field) in cases {
        let (s, v) = call(&h, method, &path, Some(token), body, &[]).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {v}"
        );
        if let Some(f) = field {
            assert_eq!(v["field"].as_str(), Some(f), "{method} {path}: {v}");
        }
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    quiet(&h).await;
    assert_eq!(h.balance(&m.openid).await, 100, "no adjustment stored");
    assert!(h.sim.parkings().is_empty(), "no parking relayed");
    let status = h.store.status().await.unwrap();
    assert_eq!(
        status.syncs.values().sum::<i64>(),
        1,
        "only the payment's sync: {status:?}"
    );
}

#[tokio::test]
async fn the_mall_api_runs_on_its_own_threads_at_a_lower_priority() {
    let h = start().await;
    let (status, _) = get(&h, "/v1/openapi.json", MINIPROGRAM).await;
    assert_eq!(status, 200);
    // /proc/self/task/*/stat: comm in parentheses, niceness is the 17th field after it
    let mut found = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        if comm.contains("pointsync-mall") {
            let nice: i32 = rest.split(' ').nth(16).unwrap().parse().unwrap();
            found.push(nice);
        }
    }
    assert!(!found.is_empty(), "the mall API's thread exists");
    assert!(
        found.iter().all(|n| *n == 10),
        "mall_api.nice = 10 by default: {found:?}"
    );
}
