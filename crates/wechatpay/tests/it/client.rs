//! The async and blocking clients against the simulator over real loopback HTTP.

use std::time::Duration;

use wechatpay::businesscircle::{
    AuthorizeState, CommitStatusQuery, ParkingRequest, ParkingState, PointsCommitStatus,
    PointsNotifyRequest, UserAuthorizationQuery,
};
use wechatpay::explain::SignDifference;
use wechatpay::testing::{keys, rfc3339};
use wechatpay::{Error, VerifyError};
use wechatpay_sim::{
    Endpoint, FaultConfig, FaultKind, NewMember, NewPayment, SimConfig, SimOptions, Simulator,
    TrustMode,
};

async fn sim(mode: TrustMode) -> Simulator {
    Simulator::start(SimConfig::test(mode)).await.unwrap()
}

fn paid(sim: &Simulator) -> (wechatpay_sim::Member, wechatpay_sim::Transaction) {
    let m = sim
        .add_member(NewMember {
            push: false,
            ..NewMember::default()
        })
        .unwrap();
    let tx = sim
        .pay(NewPayment {
            openid: m.openid.clone(),
            amount: 12_345,
            ..NewPayment::default()
        })
        .unwrap();
    (m, tx)
}

/// A loopback URL nothing listens on: bind a port, learn it, close it.
fn refusing_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

async fn authorization(
    client: &wechatpay::Client,
    m: &wechatpay_sim::Member,
) -> Result<wechatpay::businesscircle::UserAuthorization, Error> {
    let q = UserAuthorizationQuery::new(&m.appid);
    client
        .v3()
        .businesscircle()
        .user_authorizations(&m.openid)
        .get(&q)
        .await
}

async fn commit_status(
    client: &wechatpay::Client,
    m: &wechatpay_sim::Member,
) -> Result<wechatpay::businesscircle::CommitStatus, Error> {
    let q = CommitStatusQuery::new(1000, &m.appid);
    client
        .v3()
        .businesscircle()
        .users(&m.openid)
        .points()
        .commit_status()
        .get(&q)
        .await
}

async fn notify(
    client: &wechatpay::Client,
    tx: &wechatpay_sim::Transaction,
) -> Result<wechatpay::Response, Error> {
    client
        .v3()
        .businesscircle()
        .points()
        .notify()
        .post(&notify_req(tx))
        .await
}

fn notify_req(tx: &wechatpay_sim::Transaction) -> PointsNotifyRequest {
    PointsNotifyRequest::new(
        &tx.transaction_id,
        &tx.appid,
        &tx.openid,
        true,
        123,
        rfc3339(1_700_000_000),
    )
    .total_points(888)
}

#[tokio::test]
async fn all_four_apis_in_every_trust_mode() {
    for mode in [TrustMode::Cert, TrustMode::Pubkey, TrustMode::Migrating] {
        let sim = sim(mode).await;
        let client = sim.client_builder().build().unwrap();
        let (m, tx) = paid(&sim);
        let bc = client.v3().businesscircle();

        let res = bc.points().notify().post(&notify_req(&tx)).await.unwrap();
        assert_eq!(res.status, 204, "{mode:?}");
        assert!(res.body.is_empty());
        let expected = if mode == TrustMode::Cert {
            keys::PLATFORM_SERIAL
        } else {
            keys::PUBKEY_ID
        };
        assert_eq!(
            res.verified_by, expected,
            "{mode:?}: answer signed per mode"
        );
        let syncs = sim.syncs();
        assert_eq!(syncs.len(), 1);
        assert!(syncs[0].body.contains("\"increased_points\":123"));

        let auth = bc
            .user_authorizations(&m.openid)
            .get(&UserAuthorizationQuery::new(&m.appid))
            .await
            .unwrap();
        assert_eq!(auth.authorize_state, AuthorizeState::Authorized);
        let unknown = bc
            .user_authorizations("oNOBODY")
            .get(&UserAuthorizationQuery::new(&m.appid))
            .await
            .unwrap();
        assert_eq!(unknown.authorize_state, AuthorizeState::Unauthorized);

        let status = bc
            .users(&m.openid)
            .points()
            .commit_status()
            .get(&CommitStatusQuery::new(1000, &m.appid))
            .await
            .unwrap();
        assert_eq!(
            status.points_commit_status,
            Some(PointsCommitStatus::Finished)
        );

        let park = ParkingRequest::new(
            1000,
            &m.appid,
            &m.openid,
            "粤B888888",
            ParkingState::In,
            rfc3339(1_700_000_000),
        );
        assert_eq!(bc.parkings().post(&park).await.unwrap().status, 204);
        assert_eq!(sim.parkings()[0]["plate_number"], "粤B888888");
    }
}

#[tokio::test]
async fn commit_status_accepts_an_empty_204_and_pending() {
    let sim = sim(TrustMode::Cert).await;
    let client = sim.client_builder().build().unwrap();
    let (m, _tx) = paid(&sim);
    let s = commit_status(&client, &m).await.unwrap();
    assert_eq!(s.points_commit_status, Some(PointsCommitStatus::Pending));
    sim.set_options(SimOptions {
        commit_status_204: true,
        ..SimOptions::default()
    });
    let s = commit_status(&client, &m).await.unwrap();
    assert_eq!(s.points_commit_status, None);
}

#[tokio::test]
async fn raw_chain_reaches_any_endpoint_with_vars_and_query() {
    let sim = sim(TrustMode::Cert).await;
    let client = sim.client_builder().build().unwrap();
    let (m, tx) = paid(&sim);
    let res = client
        .chain("v3/businesscircle/user-authorizations/{openid}")
        .var("openid", &m.openid)
        .query("appid", &m.appid)
        .get()
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    let v: serde_json::Value = res.json().unwrap();
    assert_eq!(v["authorize_state"], "AUTHORIZED");
    let res = client
        .chain("v3/businesscircle/points/notify")
        .json(&notify_req(&tx))
        .post()
        .await
        .unwrap();
    assert_eq!(res.status, 204);
    // an unknown path: WeChat's 404, typed
    let e = client.chain("v3/nothing/here").get().await.unwrap_err();
    assert_eq!(e.api().unwrap().code, "RESOURCE_NOT_EXISTS");
}

#[tokio::test]
async fn param_errors_name_the_field_and_are_not_retryable() {
    let sim = sim(TrustMode::Cert).await;
    let client = sim.client_builder().build().unwrap();
    let (_m, tx) = paid(&sim);
    // bypass SDK validation with the raw chain: the simulator must check like WeChat
    let mut body = serde_json::to_value(notify_req(&tx)).unwrap();
    body["points_update_time"] = "yesterday".into();
    let e = client
        .chain("v3/businesscircle/points/notify")
        .json(&body)
        .post()
        .await
        .unwrap_err();
    let api = e.api().unwrap();
    assert_eq!((api.status, api.code.as_str()), (400, "PARAM_ERROR"));
    assert_eq!(api.detail.as_ref().unwrap()["field"], "/points_update_time");
    assert!(api.signed, "4xx answers are signed");
    assert!(!e.is_retryable());
    assert!(e.may_have_reached_wechat());
    // SDK-side validation stops the same request before sending
    let bad = PointsNotifyRequest {
        points_update_time: "yesterday".into(),
        ..notify_req(&tx)
    };
    let e = client
        .v3()
        .businesscircle()
        .points()
        .notify()
        .post(&bad)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Validation(ref v) if v.field == "points_update_time"),
        "{e}"
    );
    assert!(!e.may_have_reached_wechat());
    // business: unknown transaction
    let unknown = PointsNotifyRequest {
        transaction_id: "4200000000000000000000".into(),
        ..notify_req(&tx)
    };
    let e = client
        .v3()
        .businesscircle()
        .points()
        .notify()
        .post(&unknown)
        .await
        .unwrap_err();
    assert_eq!(e.api().unwrap().status, 404);
}

#[tokio::test]
async fn sign_error_is_explained() {
    let sim = sim(TrustMode::Cert).await;
    // The merchant's client signs with a key that does not belong to its certificate.
    let client = sim
        .client_builder()
        .private_key_pem(keys::OTHER_KEY_PEM)
        .build()
        .unwrap();
    let (_m, tx) = paid(&sim);
    let e = notify(&client, &tx).await.unwrap_err();
    let api = e.api().unwrap();
    assert_eq!((api.status, api.code.as_str()), (401, "SIGN_ERROR"));
    let ex = api.sign_explanation.as_ref().expect("explanation");
    assert_eq!(ex.difference, SignDifference::KeyMismatch);
    assert_eq!(ex.wechat_length, Some(ex.our_length));
    assert!(e.to_string().contains("private key does not belong"), "{e}");
}

#[tokio::test]
async fn answer_signed_with_the_wrong_key_fails_verification() {
    let sim = sim(TrustMode::Cert).await;
    let client = sim.client_builder().build().unwrap();
    let (_m, tx) = paid(&sim);
    sim.set_options(SimOptions {
        sign_with_wrong_key: true,
        ..SimOptions::default()
    });
    let e = notify(&client, &tx).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Verify {
                source: VerifyError::BadSignature { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.may_have_reached_wechat());
    assert_eq!(sim.syncs().len(), 1, "the request did reach WeChat");
}

#[tokio::test]
async fn faults_map_to_typed_retryable_errors() {
    let sim = sim(TrustMode::Cert).await;
    let client = sim
        .client_builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let (_m, tx) = paid(&sim);
    let cases = [
        (FaultKind::TooManyRequests, Some(429)),
        (FaultKind::SystemError, Some(500)),
        (FaultKind::BadGateway, Some(502)),
        (FaultKind::ServiceUnavailable, Some(503)),
        (FaultKind::Reset, None),
        (FaultKind::Hang, None),
    ];
    for (fault, status) in cases {
        sim.fail_next(Endpoint::PointsNotify, fault, 1);
        let e = notify(&client, &tx).await.unwrap_err();
        assert!(e.is_retryable(), "{fault:?}: {e}");
        assert!(e.may_have_reached_wechat(), "{fault:?}: {e}");
        assert_eq!(e.api().map(|a| a.status), status, "{fault:?}: {e}");
        if let Some(a) = e.api() {
            assert!(!a.signed, "gateway errors are unsigned");
        }
    }
    // latency only delays
    sim.fail_next(Endpoint::PointsNotify, FaultKind::Latency { ms: 200 }, 1);
    let t = wechatpay::clock::monotonic();
    notify(&client, &tx).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(sim.counters().faults, 7);
}

#[tokio::test]
async fn global_qps_limit_answers_429() {
    let sim = sim(TrustMode::Cert).await;
    let client = sim.client_builder().build().unwrap();
    let (m, _tx) = paid(&sim);
    sim.set_faults(FaultConfig {
        rules: vec![],
        qps_limit: Some(5),
    });
    let mut limited = 0;
    for _ in 0..20 {
        if let Err(e) = authorization(&client, &m).await {
            assert_eq!(e.api().unwrap().code, "FREQUENCY_LIMITED");
            limited += 1;
        }
    }
    assert!(limited >= 10, "only {limited} of 20 limited");
    assert_eq!(sim.counters().rate_limited, limited);
}

#[tokio::test]
async fn gets_retry_only_when_enabled_and_posts_never() {
    let sim = sim(TrustMode::Cert).await;
    let (m, tx) = paid(&sim);
    let plain = sim.client_builder().build().unwrap();
    let retrying = sim.client_builder().retry_gets(3).build().unwrap();
    sim.fail_next(Endpoint::UserAuthorizations, FaultKind::TooManyRequests, 2);
    authorization(&retrying, &m).await.unwrap();
    sim.fail_next(Endpoint::UserAuthorizations, FaultKind::TooManyRequests, 1);
    assert!(authorization(&plain, &m).await.is_err());
    sim.fail_next(Endpoint::PointsNotify, FaultKind::SystemError, 1);
    let before = sim.counters().requests;
    assert!(
        retrying
            .v3()
            .businesscircle()
            .points()
            .notify()
            .post(&notify_req(&tx))
            .await
            .is_err()
    );
    assert_eq!(
        sim.counters().requests,
        before + 1,
        "a POST is never retried by the SDK"
    );
}

#[tokio::test]
async fn a_custom_base_url_has_no_backup_unless_one_is_given() {
    let sim = sim(TrustMode::Cert).await;
    let (m, _tx) = paid(&sim);
    let dead_url = refusing_url();
    // a test server as the base URL, no backup set: nothing may fail over to WeChat's backup
    let client = sim.client_builder().base_url(&dead_url).build().unwrap();
    let err = authorization(&client, &m).await.unwrap_err();
    match &err {
        wechatpay::Error::Transport { url, .. } => {
            assert!(
                url.starts_with(&dead_url),
                "only the custom URL was tried: {url}"
            )
        }
        e => panic!("expected a transport error, got {e}"),
    }
    assert!(!client.on_backup(), "no fail-over without a backup");
    // WeChat's own primary keeps WeChat's backup by default; an explicit backup is used as given
    let explicit = sim
        .client_builder()
        .base_url(&dead_url)
        .backup_url(Some(sim.base_url()))
        .build()
        .unwrap();
    authorization(&explicit, &m).await.unwrap();
    assert!(explicit.on_backup());
    // both down: the error names the real cause and both hosts tried
    let dead2_url = refusing_url();
    let both = sim
        .client_builder()
        .base_url(&dead_url)
        .backup_url(Some(dead2_url.clone()))
        .build()
        .unwrap();
    let msg = authorization(&both, &m).await.unwrap_err().to_string();
    assert!(
        msg.contains(&dead_url) && msg.contains(&dead2_url) && msg.contains("connection refused"),
        "{msg}"
    );
}

#[tokio::test]
async fn fails_over_to_backup_and_back() {
    let sim = sim(TrustMode::Cert).await;
    let (m, _tx) = paid(&sim);
    // a primary that refuses connections: bind, learn the port, close
    let dead_url = refusing_url();
    let client = sim
        .client_builder()
        .base_url(&dead_url)
        .backup_url(Some(sim.base_url()))
        .failback_after(Duration::from_millis(300))
        .build()
        .unwrap();
    authorization(&client, &m).await.unwrap();
    assert!(client.on_backup(), "failed over");
    // while failed over, requests go straight to the backup
    authorization(&client, &m).await.unwrap();
    assert!(client.on_backup());
    // the primary comes back on the same port
    let primary = Simulator::start(SimConfig {
        listen: dead_url.trim_start_matches("http://").parse().unwrap(),
        ..SimConfig::test(TrustMode::Cert)
    })
    .await
    .unwrap();
    // wait out the fail-back delay
    let deadline = wechatpay::clock::monotonic() + Duration::from_secs(5);
    while client.on_backup() {
        assert!(
            wechatpay::clock::monotonic() < deadline,
            "fail-back delay never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = primary.counters().requests;
    authorization(&client, &m).await.unwrap();
    assert!(!client.on_backup(), "failed back");
    assert_eq!(
        primary.counters().requests,
        before + 1,
        "the request went to the primary"
    );
}

#[tokio::test]
async fn certificates_download_and_public_key_mode_hint() {
    let sim = sim(TrustMode::Cert).await;
    // bootstrap: trust only the public key, download the platform certificate
    let client = sim
        .client_builder()
        .trust_store({
            let mut t = wechatpay::TrustStore::new();
            t.add_public_key_pem(keys::PUBKEY_ID, keys::PUBKEY_PEM)
                .unwrap();
            t
        })
        .build()
        .unwrap();
    let certs = client.refresh_certificates().await.unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].serial_no, keys::PLATFORM_SERIAL);
    assert!(client.trust_store().contains(keys::PLATFORM_SERIAL));

    let pk = sim_pubkey().await;
    let client = pk.client_builder().build().unwrap();
    let e = client.certificates().await.unwrap_err();
    let api = e.api().unwrap();
    assert_eq!(api.code, "RESOURCE_NOT_EXISTS");
    assert!(api.hint.as_deref().unwrap().contains("PUB_KEY_ID_"), "{e}");
}

async fn sim_pubkey() -> Simulator {
    sim(TrustMode::Pubkey).await
}

#[test]
fn owned_requests_are_sent_by_either_client_with_one_definition() {
    use wechatpay::businesscircle::{CommitStatusRequest, UserAuthorizationRequest};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(Simulator::start(SimConfig::test(TrustMode::Cert)))
        .unwrap();
    let (m, tx) = paid(&sim);
    let auth = UserAuthorizationRequest {
        openid: m.openid.clone(),
        query: UserAuthorizationQuery::new(&m.appid),
    };
    let pending = CommitStatusRequest {
        openid: m.openid.clone(),
        query: CommitStatusQuery::new(1000, &m.appid),
    };
    let async_client = sim.client_builder().build().unwrap();
    let (a, p) = rt.block_on(async {
        (
            async_client.send(&auth).await.unwrap(),
            async_client.send(&pending).await.unwrap(),
        )
    });
    let blocking = sim.client_builder().build_blocking().unwrap();
    let (a2, p2) = (
        blocking.send(&auth).unwrap(),
        blocking.send(&pending).unwrap(),
    );
    assert_eq!(p.points_commit_status, Some(PointsCommitStatus::Pending));
    let n = blocking.send(&notify_req(&tx)).unwrap();
    let after = rt.block_on(async_client.send(&pending)).unwrap();
    assert_eq!(
        after.points_commit_status,
        Some(PointsCommitStatus::Finished)
    );
    assert_eq!(
        (a.authorize_state.clone(), &a.openid),
        (AuthorizeState::Authorized, &m.openid)
    );
    assert_eq!((a, p), (a2, p2), "both clients decode the same answer");
    assert_eq!(n.status, 204);
    // a request that fails its field rules is refused before anything is sent
    let before = sim.counters().requests;
    let bad = UserAuthorizationRequest {
        openid: String::new(),
        query: UserAuthorizationQuery::new(&m.appid),
    };
    assert!(matches!(blocking.send(&bad), Err(Error::Validation(_))));
    // so is a raw chain that cannot be built, on either client
    let unbuilt = blocking.chain("v3/x/{openid}").get().unwrap_err();
    assert!(unbuilt.to_string().contains("{openid}"), "{unbuilt}");
    let unbuilt = rt
        .block_on(async_client.chain("v3/x/{openid}").get())
        .unwrap_err();
    assert!(unbuilt.to_string().contains("{openid}"), "{unbuilt}");
    assert_eq!(sim.counters().requests, before, "nothing was sent");
}

#[test]
fn blocking_client_has_the_same_surface() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for mode in [TrustMode::Cert, TrustMode::Pubkey, TrustMode::Migrating] {
        let sim = rt
            .block_on(Simulator::start(SimConfig::test(mode)))
            .unwrap();
        let client = sim.client_builder().build_blocking().unwrap();
        let (m, tx) = paid(&sim);
        let bc = client.v3().businesscircle();
        assert_eq!(
            bc.points().notify().post(&notify_req(&tx)).unwrap().status,
            204
        );
        let auth = bc
            .user_authorizations(&m.openid)
            .get(&UserAuthorizationQuery::new(&m.appid))
            .unwrap();
        assert_eq!(auth.authorize_state, AuthorizeState::Authorized);
        let s = bc
            .users(&m.openid)
            .points()
            .commit_status()
            .get(&CommitStatusQuery::new(1000, &m.appid))
            .unwrap();
        assert_eq!(s.points_commit_status, Some(PointsCommitStatus::Finished));
        let park = ParkingRequest::new(
            1000,
            &m.appid,
            &m.openid,
            "粤B1",
            ParkingState::Out,
            rfc3339(1_700_000_000),
        );
        assert_eq!(bc.parkings().post(&park).unwrap().status, 204);
        let raw = client
            .chain("v3/businesscircle/user-authorizations/{openid}")
            .var("openid", &m.openid)
            .query("appid", &m.appid)
            .get()
            .unwrap();
        assert_eq!(raw.status, 200);
        if mode != TrustMode::Pubkey {
            assert_eq!(
                client.certificates().unwrap()[0].serial_no,
                keys::PLATFORM_SERIAL
            );
        }
        drop(sim);
    }
}

#[tokio::test]
async fn requests_outside_the_clock_window_are_rejected_by_wechat() {
    let sim = sim(TrustMode::Cert).await;
    let now = wechatpay::clock::Clock::now(&wechatpay::clock::SystemClock);
    let client = sim
        .client_builder()
        .clock(std::sync::Arc::new(wechatpay::clock::FixedClock(now - 400)))
        .build()
        .unwrap();
    let (m, _) = paid(&sim);
    let e = authorization(&client, &m).await.unwrap_err();
    assert_eq!(e.api().unwrap().code, "SIGN_ERROR");
}

#[tokio::test]
async fn migrating_mode_signs_with_the_certificate_unless_the_request_names_the_public_key() {
    let sim = sim(TrustMode::Migrating).await;
    let (m, _) = paid(&sim);
    let mut cert_only = wechatpay::TrustStore::new();
    cert_only
        .add_certificate_pem(keys::PLATFORM_CERT_PEM)
        .unwrap();
    let client = wechatpay::Client::builder()
        .mchid(keys::MCHID)
        .serial(keys::MERCHANT_SERIAL)
        .private_key_pem(keys::MERCHANT_KEY_PEM)
        .trust_store(cert_only)
        .base_url(sim.base_url())
        .backup_url(None)
        .build()
        .unwrap();
    let res = client
        .chain("v3/businesscircle/user-authorizations/{openid}")
        .var("openid", &m.openid)
        .query("appid", &m.appid)
        .get()
        .await
        .unwrap();
    assert_eq!(res.verified_by, keys::PLATFORM_SERIAL);
    let both = sim.client_builder().build().unwrap();
    let res = both
        .chain("v3/businesscircle/user-authorizations/o1")
        .query("appid", "wx1")
        .get()
        .await
        .unwrap();
    assert_eq!(
        res.verified_by,
        keys::PUBKEY_ID,
        "a client trusting the public key sends Wechatpay-Serial"
    );
}

#[tokio::test]
async fn a_timestamp_outside_the_window_is_explained_as_a_clock_problem() {
    // WeChat's clock (the simulator's) is 10 minutes ahead of ours
    let ahead = wechatpay::clock::unix_ms() / 1000 + 600;
    let sim = Simulator::start(SimConfig {
        clock: std::sync::Arc::new(wechatpay::clock::FixedClock(ahead)),
        ..SimConfig::test(TrustMode::Cert)
    })
    .await
    .unwrap();
    let (m, _) = paid(&sim);
    let client = sim.client_builder().build().unwrap();
    let err = authorization(&client, &m).await.unwrap_err();
    let api = err.api().expect("WeChat answered");
    assert_eq!((api.status, api.code.as_str()), (401, "SIGN_ERROR"));
    let skew = api.clock_skew_secs.expect("from the Date header");
    assert!((595..=605).contains(&skew), "{skew}");
    assert!(
        api.sign_explanation.is_none(),
        "no sign-string remark for a clock problem: {err}"
    );
    let hint = api.hint.as_deref().unwrap_or_default();
    assert!(
        hint.contains("clock problem") && hint.contains("behind") && hint.contains("NTP"),
        "{hint}"
    );
    // on time, the Date header says so too
    let on_time = sim_pubkey().await;
    let (m, _) = paid(&on_time);
    let res = on_time
        .client_builder()
        .build()
        .unwrap()
        .chain("v3/businesscircle/user-authorizations/{openid}")
        .var("openid", &m.openid)
        .query("appid", &m.appid)
        .get()
        .await
        .unwrap();
    assert!(res.clock_skew_secs.is_some_and(|s| s.abs() <= 2), "{res:?}");
}
