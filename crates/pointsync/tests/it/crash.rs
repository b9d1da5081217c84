//! Real `kill -9` of a `pointsync serve` child process: at each named moment, and at random
//! moments during bursts (seeded; the seed is printed, so a failure can be replayed with
//! `POINTSYNC_CRASH_SEED`; `POINTSYNC_CRASH_TRIALS` sets the number of trials). The invariants
//! hold after every trial.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use pointsync::store::Store;
use pointsync::store::sqlite::SqliteStore;
use rand::{Rng, SeedableRng};
use wechatpay_sim::{
    GenerateSpec, NewMember, NewPayment, PushConfig, Sandbox, SimConfig, Simulator, TrustMode,
};

use crate::harness::{assert_invariants, fast_push, free_port, spawn_serve, wait_quiet};

struct Rig {
    sim: Simulator,
    store: SqliteStore,
    config: PathBuf,
    public: String,
    admin: String,
    /// More `POINTSYNC__…` settings for every start.
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::init(&dir.path().join("sandbox"), TrustMode::Cert).unwrap();
        let (public, admin) = (free_port(), free_port());
        let sim = Simulator::start(SimConfig {
            push: PushConfig {
                notify_url: Some(format!("http://{public}/wechatpay/notify")),
                ..fast_push()
            },
            ..SimConfig::new(sandbox.clone())
        })
        .await
        .unwrap();
        let config =
            pointsync::demo::write_config(dir.path(), &sandbox, &sim.base_url(), "").unwrap();
        let store =
            SqliteStore::open_path(&dir.path().join("pointsync.db"), Duration::from_secs(5))
                .await
                .unwrap();
        Self {
            sim,
            store,
            config,
            public,
            admin,
            env: Vec::new(),
            _dir: dir,
        }
    }

    /// Starts `pointsync serve` and waits until it answers /healthz, which it does only once its
    /// callback listener is bound: the contract's goal is acknowledging again within 5 s of a
    /// restart, asserted here for every start, the restarts after each kill included.
    async fn spawn(&self, crash_at: Option<&str>) -> Child {
        let mut env = self.env.clone();
        if let Some(p) = crash_at {
            env.push((pointsync::crash::ENV.to_string(), p.to_string()));
        }
        let (child, took) = spawn_serve(&self.config, &self.public, &self.admin, &env).await;
        assert!(
            took < Duration::from_secs(5),
            "pointsync serve took {took:?} to answer after a (re)start; the goal is 5 s"
        );
        child
    }

    async fn quiet(&self, timeout: Duration) {
        wait_quiet(&self.sim, &self.store, timeout).await;
    }
}

fn wait_killed(child: &mut Child, timeout: Duration) {
    let deadline = wechatpay::clock::monotonic() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.signal(), Some(9), "killed by SIGKILL, got {status}");
            return;
        }
        assert!(
            wechatpay::clock::monotonic() < deadline,
            "the crash point was not reached"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_each_named_moment() {
    for (point, expected_calls) in [
        ("before_commit", 1),
        ("after_commit", 1),
        ("before_send", 1),
        ("after_204", 2),
    ] {
        let rig = Rig::new().await;
        let mut child = rig.spawn(Some(point)).await;
        let m = rig
            .sim
            .add_member(NewMember {
                push: false,
                ..NewMember::default()
            })
            .unwrap();
        let tx = rig
            .sim
            .pay(NewPayment {
                openid: m.openid,
                amount: 4_200,
                ..NewPayment::default()
            })
            .unwrap();
        wait_killed(&mut child, Duration::from_secs(20));
        let mut child = rig.spawn(None).await;
        rig.quiet(Duration::from_secs(30)).await;
        assert_invariants(&rig.sim, &rig.store).await;
        let calls: Vec<_> = rig
            .sim
            .syncs()
            .into_iter()
            .filter(|c| c.transaction_id == tx.transaction_id)
            .collect();
        assert_eq!(calls.len(), expected_calls, "{point}: {calls:?}");
        assert!(
            calls.iter().all(|c| c.body == calls[0].body),
            "{point}: resends are byte-identical"
        );
        let delivery = rig.sim.delivery(&tx.transaction_id).unwrap();
        match point {
            // no 2xx was sent; WeChat's retry stored it once
            "before_commit" | "after_commit" => assert!(
                delivery.attempts >= 2 && delivery.delivered,
                "{point}: {delivery:?}"
            ),
            _ => assert!(delivery.delivered),
        }
        if matches!(point, "before_send" | "after_204") {
            // the killed process's lease expired and the new process's rescuer returned the row
            let text = crate::harness::scrape(&rig.admin).await;
            assert!(
                crate::harness::metric(&text, "pointsync_syncs_total", "rescued") >= 1.0,
                "{point}: {text}"
            );
        }
        assert_eq!(
            rig.store
                .audit()
                .await
                .unwrap()
                .credits
                .get(&tx.transaction_id),
            Some(&42),
            "{point}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill_9_at_random_moments_during_bursts_converges() {
    let trials: u64 = std::env::var("POINTSYNC_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("POINTSYNC_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash trials: {trials}, seed {seed} (replay with POINTSYNC_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rig = Rig::new().await;
    let mut kills = 0;
    for trial in 0..trials {
        let mut child = rig.spawn(None).await;
        let shared = rig.sim.shared().clone();
        let spec = GenerateSpec {
            count: 40,
            seed: seed.wrapping_add(trial),
            members: 8,
            rate_per_sec: Some(400.0),
            refund_share: 0.2,
            manual_share: 0.1,
        };
        let generator =
            tokio::spawn(async move { wechatpay_sim::control::generate(&shared, spec).await });
        for _ in 0..rng.random_range(1..=2) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..120))).await;
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            child = rig.spawn(None).await;
        }
        generator.await.unwrap().unwrap();
        rig.quiet(Duration::from_secs(60)).await;
        assert_invariants(&rig.sim, &rig.store).await;
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("trial {trial}: ok ({kills} kills so far, seed {seed})");
    }
    let audit = rig.store.audit().await.unwrap();
    assert_eq!(
        audit.credits.len() as u64,
        trials * 40,
        "every payment credited once"
    );
}

const CARPARK: &str = "carpark-token-0123456789abcdef012345678";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parkings_are_relayed_through_kill_9_before_and_after_wechats_204() {
    for (point, expected_calls) in [("before_send", 1), ("after_204", 2)] {
        let mut rig = Rig::new().await;
        let mall = free_port();
        let digest: String = pointsync::config::token_digest(CARPARK)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        rig.env = vec![
            ("POINTSYNC__MALL_API__LISTEN".into(), mall.clone()),
            (
                "POINTSYNC__MALL_API__TOKENS".into(),
                format!(
                    r#"[{{name = "carpark", sha256 = "{digest}", scopes = ["parkings:write"]}}]"#
                ),
            ),
            ("POINTSYNC__WECHATPAY__BRANDID".into(), "1000".into()),
        ];
        let mut child = rig.spawn(Some(point)).await;
        let m = rig
            .sim
            .add_member(NewMember {
                push: false,
                ..NewMember::default()
            })
            .unwrap();
        let event = serde_json::json!({"openid": m.openid, "plate_number": "粤B7", "state": "IN",
                                       "time": "2026-12-01T10:00:00+08:00", "appid": m.appid});
        let post = || {
            reqwest::Client::new()
                .post(format!("http://{mall}/v1/parkings"))
                .bearer_auth(CARPARK)
                .header("content-type", "application/json")
                .body(event.to_string())
                .send()
        };
        // the relay may reach its kill point before the 202 is on the wire: the car park then
        // sees the connection cut and sends the same event again once the service is back
        let answered = match post().await {
            Ok(res) => {
                assert_eq!(res.status().as_u16(), 202, "{point}");
                true
            }
            Err(e) => {
                assert!(e.is_request() || e.is_connect(), "{point}: {e}");
                false
            }
        };
        wait_killed(&mut child, Duration::from_secs(20));
        let mut child = rig.spawn(None).await;
        if !answered {
            let again = post().await.unwrap().status().as_u16();
            assert!(
                again == 200 || again == 202,
                "{point}: the resent event is accepted once: {again}"
            );
        }
        rig.quiet(Duration::from_secs(30)).await;
        let calls = rig.sim.parkings();
        assert_eq!(calls.len(), expected_calls, "{point}: {calls:?}");
        assert!(
            calls.iter().all(|c| *c == calls[0]),
            "{point}: a resend is the stored request"
        );
        let status = rig.store.status().await.unwrap();
        assert_eq!(status.syncs.get("done"), Some(&1), "{point}: {status:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
