//! The simulator's callbacks, pushed over real loopback HTTP to a receiver built on the SDK's
//! axum extractor: verification, retry schedule, duplicates, probes; and `init`'s sandbox files.

mod checks;
mod control;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use wechatpay::notify::axum::VerifiedNotification;
use wechatpay::notify::{Event, NotifyParser};
use wechatpay_sim::{NewMember, NewPayment, PushConfig, Sandbox, SimConfig, Simulator, TrustMode};

#[derive(Clone)]
struct Receiver {
    parser: Arc<NotifyParser>,
    seen: Arc<Mutex<Vec<(String, Event)>>>,
    fail_first: Arc<AtomicU32>,
    slow_first: Arc<AtomicU32>,
}

impl axum::extract::FromRef<Receiver> for Arc<NotifyParser> {
    fn from_ref(r: &Receiver) -> Self {
        r.parser.clone()
    }
}

async fn receive(
    State(r): State<Receiver>,
    VerifiedNotification(n): VerifiedNotification,
) -> http::StatusCode {
    if r.slow_first.load(Ordering::SeqCst) > 0 {
        r.slow_first.fetch_sub(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if r.fail_first.load(Ordering::SeqCst) > 0 {
        r.fail_first.fetch_sub(1, Ordering::SeqCst);
        return http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.seen.lock().unwrap().push((n.id, n.event));
    http::StatusCode::NO_CONTENT
}

async fn receiver(sandbox: &Sandbox, fail_first: u32) -> (String, Receiver) {
    let r = Receiver {
        parser: Arc::new(NotifyParser::new(
            sandbox.trust_store(),
            sandbox.apiv3_key.clone(),
        )),
        seen: Arc::default(),
        fail_first: Arc::new(AtomicU32::new(fail_first)),
        slow_first: Arc::default(),
    };
    let app = Router::new()
        .route("/notify", post(receive))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, r)
}

async fn start(mode: TrustMode, fail_first: u32, push: PushConfig) -> (Simulator, Receiver) {
    let sandbox = Sandbox::test(mode);
    let (url, r) = receiver(&sandbox, fail_first).await;
    let config = SimConfig {
        push: PushConfig {
            notify_url: Some(url),
            ..push
        },
        ..SimConfig::new(sandbox)
    };
    (Simulator::start(config).await.unwrap(), r)
}

/// A member (no authorization callback) who pays 100 fen: one payment callback.
fn pay_100(sim: &Simulator) {
    let m = sim
        .add_member(NewMember {
            push: false,
            ..NewMember::default()
        })
        .unwrap();
    sim.pay(NewPayment {
        openid: m.openid,
        amount: 100,
        ..NewPayment::default()
    })
    .unwrap();
}

fn fast() -> PushConfig {
    PushConfig {
        time_scale: 0.0005,
        timeout_ms: 2000,
        ..PushConfig::default()
    }
}

#[tokio::test]
async fn pushed_callbacks_verify_in_every_mode() {
    for mode in [TrustMode::Cert, TrustMode::Pubkey, TrustMode::Migrating] {
        let (sim, r) = start(mode, 0, fast()).await;
        let m = sim.add_member(NewMember::default()).unwrap();
        let tx = sim
            .pay(NewPayment {
                openid: m.openid.clone(),
                amount: 9_900,
                shop_number: Some("S003".into()),
                sub_mchid: None,
            })
            .unwrap();
        sim.manual_apply(&tx.transaction_id).unwrap();
        sim.refund(&tx.transaction_id, 3_300).unwrap();
        sim.refund(&tx.transaction_id, 6_600).unwrap();
        assert!(
            sim.refund(&tx.transaction_id, 1).is_err(),
            "cannot refund more than paid"
        );
        assert!(sim.settle(Duration::from_secs(10)).await);
        let seen = r.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 5, "{mode:?}");
        let types: Vec<&str> = seen.iter().map(|(_, e)| e.event_type()).collect();
        assert_eq!(
            types
                .iter()
                .filter(|t| **t == "MALL_AUTH.ACTIVATE_CARD")
                .count(),
            1
        );
        assert_eq!(
            types
                .iter()
                .filter(|t| **t == "MALL_TRANSACTION.SUCCESS")
                .count(),
            2
        );
        assert_eq!(
            types
                .iter()
                .filter(|t| **t == "MALL_REFUND.SUCCESS")
                .count(),
            2
        );
        let tags: Vec<Option<String>> = seen
            .iter()
            .filter_map(|(_, e)| match e {
                Event::MallTransaction(t) => Some(t.commit_tag.clone()),
                _ => None,
            })
            .collect();
        assert!(
            tags.contains(&None) && tags.iter().any(Option::is_some),
            "manual application carries commit_tag"
        );
        let ids: std::collections::HashSet<&String> = seen.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), 5, "each push has its own notification id");
        for (_, e) in &seen {
            if let Event::MallRefund(rf) = e {
                assert_eq!(rf.pay_amount, 9_900);
                assert_eq!(rf.shop_number, "S003");
            }
        }
    }
}

#[tokio::test]
async fn failed_answers_are_retried_on_schedule_until_acknowledged() {
    let (sim, r) = start(TrustMode::Cert, 3, fast()).await;
    pay_100(&sim);
    assert!(sim.settle(Duration::from_secs(10)).await);
    let d = sim.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].attempts, 4, "3 failures then success");
    let lat = sim.ack_latency();
    assert_eq!(lat.count, 1, "only the acknowledged delivery is measured");
    assert!(lat.p50_ms > 0.0 && lat.p99_ms >= lat.p50_ms);
    assert!(d[0].delivered);
    assert_eq!(r.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn schedules_run_out_and_give_up() {
    // the receiver never acknowledges: payments get 1 + 15 sends, authorizations 1 + 10
    let (sim, _r) = start(
        TrustMode::Cert,
        u32::MAX,
        PushConfig {
            time_scale: 0.00005,
            ..fast()
        },
    )
    .await;
    let m = sim.add_member(NewMember::default()).unwrap();
    sim.pay(NewPayment {
        openid: m.openid,
        amount: 100,
        ..NewPayment::default()
    })
    .unwrap();
    assert!(sim.settle(Duration::from_secs(20)).await);
    let by_type: HashMap<String, (u32, bool)> = sim
        .deliveries()
        .into_iter()
        .map(|d| (d.event_type, (d.attempts, d.gave_up)))
        .collect();
    assert_eq!(by_type["MALL_TRANSACTION.SUCCESS"], (16, true));
    assert_eq!(by_type["MALL_AUTH.ACTIVATE_CARD"], (11, true));
}

#[tokio::test]
async fn duplicates_and_probes() {
    let (sim, r) = start(
        TrustMode::Cert,
        0,
        PushConfig {
            duplicate_rate: 1.0,
            probe_rate: 1.0,
            ..fast()
        },
    )
    .await;
    pay_100(&sim);
    assert!(sim.settle(Duration::from_secs(10)).await);
    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "delivered twice under the same id");
    assert_eq!(seen[0].0, seen[1].0);
    assert_eq!(
        sim.counters().probes_accepted,
        0,
        "the SDK receiver rejects every probe"
    );
}

#[tokio::test]
async fn generated_stream_is_seeded_and_complete() {
    let (sim, r) = start(TrustMode::Cert, 0, fast()).await;
    let spec = wechatpay_sim::GenerateSpec {
        count: 30,
        seed: 7,
        members: 5,
        rate_per_sec: None,
        refund_share: 0.3,
        manual_share: 0.2,
    };
    let txs = sim.generate(spec.clone()).await.unwrap();
    assert_eq!(txs.len(), 30);
    assert!(sim.settle(Duration::from_secs(10)).await);
    let seen = r.seen.lock().unwrap().len();
    assert_eq!(seen, sim.deliveries().len());
    assert!(
        seen > 35,
        "members, payments, manual applications and refunds: {seen}"
    );
    // same seed, same amounts
    let (sim2, _r2) = start(TrustMode::Cert, 0, fast()).await;
    let txs2 = sim2.generate(spec).await.unwrap();
    let amounts = |t: &[wechatpay_sim::Transaction]| t.iter().map(|t| t.amount).collect::<Vec<_>>();
    assert_eq!(amounts(&txs), amounts(&txs2));
}

#[test]
fn init_writes_a_complete_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Sandbox::init(&dir.path().join("sb"), TrustMode::Migrating).unwrap();
    for f in [
        "sandbox.json",
        "merchant/apiclient_key.pem",
        "merchant/apiclient_cert.pem",
        "wechat/platform_cert.pem",
        "wechat/platform_key.pem",
        "wechat/pub_key.pem",
        "wechat/pub_key_private.pem",
        "apiv3.key",
        "wxpay.env",
    ] {
        let path = dir.path().join("sb").join(f);
        assert!(path.exists(), "{f}");
        // keys and the APIv3 key are secrets: readable by the owner only
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} has mode {mode:o}");
    }
    for d in ["", "merchant", "wechat"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("sb").join(d))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "folder sb/{d} has mode {mode:o}");
    }
    let env = std::fs::read_to_string(dir.path().join("sb/wxpay.env")).unwrap();
    assert!(env.contains(&format!("WECHATPAY_MCHID={}", sb.info.mchid)));
    assert!(
        env.contains(&format!("{}=", sb.info.pubkey_id)),
        "public key trusted with its id"
    );
    assert_eq!(sb.trust_store().ids().len(), 2);
    let cert = wechatpay::trust::parse_certificate_pem(
        &std::fs::read_to_string(dir.path().join("sb/merchant/apiclient_cert.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(cert.serial, sb.info.merchant_serial);
    assert!(
        Sandbox::init(&dir.path().join("sb"), TrustMode::Cert).is_err(),
        "never overwrites a sandbox"
    );
}

#[tokio::test]
async fn a_receiver_slower_than_the_push_timeout_counts_as_a_failure() {
    let (sim, r) = start(TrustMode::Cert, 0, fast()).await;
    // the timeout is read per push, so changing it on a running simulator takes effect
    sim.set_push(PushConfig {
        timeout_ms: 100,
        ..sim_push(&sim)
    });
    r.slow_first.store(1, Ordering::SeqCst);
    pay_100(&sim);
    assert!(sim.settle(Duration::from_secs(10)).await);
    let d = &sim.deliveries()[0];
    assert_eq!(d.attempts, 2, "timed out once, then acknowledged");
    assert!(d.delivered);
}

fn sim_push(sim: &Simulator) -> PushConfig {
    sim.shared().push_config()
}

#[test]
fn serve_logs_each_answer_and_push_and_warns_without_a_notify_url() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    Sandbox::init(&sb, TrustMode::Cert).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let run = |notify: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wechatpay-sim"));
        cmd.args(["serve", sb.to_str().unwrap(), "--listen", &listen])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(url) = notify {
            cmd.args(["--notify-url", url, "--time-scale", "0.001"]);
        }
        let mut child = cmd.spawn().unwrap();
        // wxpay.env follows --listen once it serves
        let deadline = wechatpay::clock::monotonic() + Duration::from_secs(10);
        while !std::fs::read_to_string(sb.join("wxpay.env"))
            .is_ok_and(|e| e.contains(&format!("WECHATPAY_BASE_URL=http://{listen}")))
        {
            assert!(wechatpay::clock::monotonic() < deadline, "never served");
            std::thread::sleep(Duration::from_millis(20));
        }
        let http = reqwest::blocking::Client::new();
        let base = format!("http://{listen}");
        let post = |path: &str, body: serde_json::Value| -> serde_json::Value {
            let res = http
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .unwrap();
            serde_json::from_slice(&res.bytes().unwrap()).unwrap()
        };
        let m = post("/sim/members", serde_json::json!({"push": false}));
        post(
            "/sim/payments",
            serde_json::json!({"openid": m["openid"], "amount": 100}),
        );
        std::thread::sleep(Duration::from_millis(300));
        child.kill().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let _ = child.wait();
        err
    };
    let err = run(None);
    assert!(err.contains("no --notify-url"), "{err}");
    assert!(
        err.contains("answered") && err.contains("/sim/payments") && err.contains("status=200"),
        "{err}"
    );
    // with a notify URL (nobody listening there), each push attempt is a line
    let err = run(Some("http://127.0.0.1:9/notify"));
    assert!(!err.contains("no --notify-url"), "{err}");
    assert!(
        err.contains("callback pushed") && err.contains("MALL_TRANSACTION.SUCCESS"),
        "{err}"
    );
}
