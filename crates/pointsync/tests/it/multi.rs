//! Several `pointsync serve` processes on one PostgreSQL database behind the simulator acting as
//! a load balancer (`more_notify_urls`: every delivery attempt goes to the next instance, so a
//! duplicate or a retry lands on another one). The invariants I1–I7 hold after each scenario.

use std::process::{Child, Command};
use std::time::Duration;

use pointsync::store::postgres::PgStore;
use pointsync::store::{OpenOptions, Store};
use wechatpay_sim::{GenerateSpec, PushConfig, Sandbox, SimConfig, Simulator, TrustMode};

use crate::harness::{assert_invariants, fast_push, free_port, metric, spawn_serve, wait_quiet};
use crate::postgres::{DropDatabase, fresh_database, fresh_database_unlocked, server_alone};

struct Instance {
    public: String,
    admin: String,
    child: Option<Child>,
}

struct Fleet {
    sim: Simulator,
    store: PgStore,
    config: std::path::PathBuf,
    database: String,
    instances: Vec<Instance>,
    /// More `POINTSYNC__…` settings for every instance.
    env: Vec<(&'static str, String)>,
    _db: DropDatabase,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn new(n: usize) -> Option<Self> {
        Self::on(fresh_database().await?, n).await
    }

    async fn on(
        (db_guard, db): (DropDatabase, pointsync::store::Database),
        n: usize,
    ) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::init(&dir.path().join("sandbox"), TrustMode::Cert).unwrap();
        let instances: Vec<Instance> = (0..n)
            .map(|_| Instance {
                public: free_port(),
                admin: free_port(),
                child: None,
            })
            .collect();
        let urls: Vec<String> = instances
            .iter()
            .map(|i| format!("http://{}/wechatpay/notify", i.public))
            .collect();
        let sim = Simulator::start(SimConfig {
            push: PushConfig {
                notify_url: Some(urls[0].clone()),
                more_notify_urls: urls[1..].to_vec(),
                duplicate_rate: 0.3,
                ..fast_push()
            },
            ..SimConfig::new(sandbox.clone())
        })
        .await
        .unwrap();
        let config =
            pointsync::demo::write_config(dir.path(), &sandbox, &sim.base_url(), "").unwrap();
        let store = PgStore::open(&db, &OpenOptions::default()).await.unwrap();
        let database = match &db {
            pointsync::store::Database::Postgres(u) => u.clone(),
            other => panic!("{other}"),
        };
        Some(Self {
            sim,
            store,
            config,
            database,
            instances,
            env: Vec::new(),
            _db: db_guard,
            _dir: dir,
        })
    }

    async fn start(&mut self, i: usize) {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        env.push(("POINTSYNC__SERVICE__DATABASE".into(), self.database.clone()));
        let inst = &self.instances[i];
        let (child, _) = spawn_serve(&self.config, &inst.public, &inst.admin, &env).await;
        self.instances[i].child = Some(child);
    }

    async fn start_all(&mut self) {
        for i in 0..self.instances.len() {
            self.start(i).await;
        }
    }

    /// The simulator pushes `count` payments (and refunds, `refund_share`) at `rate`/s in the
    /// background.
    fn generate(
        &self,
        count: usize,
        seed: u64,
        rate: f64,
        refund_share: f64,
    ) -> tokio::task::JoinHandle<
        Result<Vec<wechatpay_sim::Transaction>, wechatpay_sim::control::ControlError>,
    > {
        let shared = self.sim.shared().clone();
        let spec = GenerateSpec {
            count,
            seed,
            members: 20,
            rate_per_sec: Some(rate),
            refund_share,
            manual_share: 0.0,
        };
        tokio::spawn(async move { wechatpay_sim::control::generate(&shared, spec).await })
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.instances[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    async fn callbacks_handled(&self, i: usize) -> f64 {
        let text = crate::harness::scrape(&self.instances[i].admin).await;
        [
            "payment",
            "refund",
            "held",
            "authorization",
            "duplicate",
            "manual_credit",
        ]
        .iter()
        .map(|l| metric(&text, "pointsync_callbacks_total", l))
        .sum()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.instances.len() {
            self.kill(i);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgresql_share_the_work_and_survive_kill_9() {
    let _heavy = crate::harness::HEAVY.lock().await;
    let Some(mut fleet) = Fleet::new(3).await else {
        return;
    };
    fleet.start_all().await;
    // a burst: duplicates delivered round-robin, i.e. to other instances, concurrently
    let shared = fleet.sim.shared().clone();
    let spec = GenerateSpec {
        count: 300,
        seed: 11,
        members: 20,
        rate_per_sec: Some(300.0),
        refund_share: 0.2,
        manual_share: 0.1,
    };
    let generator =
        tokio::spawn(async move { wechatpay_sim::control::generate(&shared, spec).await });
    // one instance dies mid-burst; the others take its callbacks' retries and its leased syncs
    tokio::time::sleep(Duration::from_millis(400)).await;
    fleet.kill(1);
    generator.await.unwrap().unwrap();
    // WeChat's retries of what instance 1 would have answered go round-robin too: bring it back
    fleet.start(1).await;
    wait_quiet(&fleet.sim, &fleet.store, Duration::from_secs(60)).await;
    assert_invariants(&fleet.sim, &fleet.store).await;
    assert_no_transaction_left_open(&fleet).await;
    let audit = fleet.store.audit().await.unwrap();
    assert_eq!(audit.credits.len(), 300, "every payment credited once");
    for i in [0, 2] {
        assert!(
            fleet.callbacks_handled(i).await > 0.0,
            "instance {i} received callbacks"
        );
    }
    let c = fleet.sim.counters();
    assert!(
        c.callback_attempts > c.callback_acks,
        "deliveries to the dead instance failed and were retried on the others: {c:?}"
    );
}

async fn metrics_of(fleet: &Fleet, i: usize) -> String {
    crate::harness::scrape(&fleet.instances[i].admin).await
}

/// No instance's connection is left inside a transaction once the fleet is quiet.
async fn assert_no_transaction_left_open(fleet: &Fleet) {
    let admin = sqlx::PgPool::connect(&fleet.database).await.unwrap();
    crate::postgres::assert_no_transaction_left_open(&admin).await;
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_paused_past_its_lease_is_fenced_and_killed_connections_lose_nothing() {
    let _heavy = crate::harness::HEAVY.lock().await;
    let Some(mut fleet) = Fleet::new(3).await else {
        return;
    };
    fleet.start_all().await;
    // slow answers keep syncs in flight on every instance
    fleet.sim.set_faults(wechatpay_sim::FaultConfig {
        rules: vec![wechatpay_sim::FaultRule::rate(
            wechatpay_sim::Endpoint::PointsNotify,
            wechatpay_sim::FaultKind::Latency { ms: 400 },
            1.0,
        )],
        qps_limit: None,
    });
    let shared = fleet.sim.shared().clone();
    let spec = GenerateSpec {
        count: 200,
        seed: 12,
        members: 20,
        rate_per_sec: Some(200.0),
        refund_share: 0.1,
        manual_share: 0.0,
    };
    let generator =
        tokio::spawn(async move { wechatpay_sim::control::generate(&shared, spec).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // instance 0 stops (SIGSTOP) for longer than its 2 s lease: the others take its syncs over
    let pid = fleet.instances[0].child.as_ref().unwrap().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // meanwhile every connection of the database is killed once (pg_terminate_backend)
    let admin = sqlx::PgPool::connect(&fleet.database).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "the instances' connections were there");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    generator.await.unwrap().unwrap();
    fleet.sim.set_faults(wechatpay_sim::FaultConfig::default());
    wait_quiet(&fleet.sim, &fleet.store, Duration::from_secs(60)).await;
    // resends were byte-identical (I6) and the resumed instance changed nothing it lost (I7)
    assert_invariants(&fleet.sim, &fleet.store).await;
    assert_no_transaction_left_open(&fleet).await;
    assert_eq!(fleet.store.audit().await.unwrap().credits.len(), 200);
    let mut rescued = 0.0;
    for i in 1..3 {
        rescued += metric(
            &metrics_of(&fleet, i).await,
            "pointsync_syncs_total",
            "rescued",
        );
    }
    let fenced = metric(
        &metrics_of(&fleet, 0).await,
        "pointsync_syncs_total",
        "fenced_out",
    );
    assert!(
        rescued >= 1.0,
        "the paused instance's leased syncs were rescued by the others (fenced out on resume: {fenced})"
    );
}

/// Kills the connections of claim transactions caught mid-claim: the test holds the shared rate
/// row (which every claim locks first), so the instances' claims queue inside their transactions;
/// those backends are terminated, then the row is let go so work goes on. Returns how many.
async fn kill_claims_mid_transaction(admin: &sqlx::PgPool) -> usize {
    let mut hold = admin.begin().await.unwrap();
    sqlx::query("SELECT tokens FROM rate_limit WHERE name = 'wechat' FOR UPDATE")
        .execute(&mut *hold)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND state = 'active' AND wait_event_type = 'Lock' AND query LIKE '%FROM rate_limit%'",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    hold.commit().await.unwrap();
    killed.into_iter().filter(|k| *k).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_in_the_middle_of_a_claim_lose_nothing() {
    let _heavy = crate::harness::HEAVY.lock().await;
    let Some(mut fleet) = Fleet::new(3).await else {
        return;
    };
    fleet.start_all().await;
    let generator = fleet.generate(200, 14, 100.0, 0.1);
    let admin = sqlx::PgPool::connect(&fleet.database).await.unwrap();
    let mut killed = 0;
    while !generator.is_finished() {
        killed += kill_claims_mid_transaction(&admin).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    generator.await.unwrap().unwrap();
    admin.close().await;
    assert!(
        killed >= 3,
        "claims were caught and killed inside their transactions: {killed}"
    );
    wait_quiet(&fleet.sim, &fleet.store, Duration::from_secs(60)).await;
    assert_invariants(&fleet.sim, &fleet.store).await;
    assert_no_transaction_left_open(&fleet).await;
    assert_eq!(fleet.store.audit().await.unwrap().credits.len(), 200);
    let st = fleet.store.status().await.unwrap();
    assert_eq!(
        st.syncs.keys().collect::<Vec<_>>(),
        vec!["done"],
        "no sync left half-claimed: {:?}",
        st.syncs
    );
    let mut errors = 0.0;
    for i in 0..3 {
        let m = metrics_of(&fleet, i).await;
        errors += m
            .lines()
            .filter(|l| l.starts_with("pointsync_store_errors_total{") && l.contains("claim"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        assert!(
            fleet.instances[i]
                .child
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
                .is_none(),
            "instance {i} is still running"
        );
    }
    eprintln!("{killed} claims killed mid-transaction; {errors} claim errors counted");
    assert!(
        errors >= 1.0,
        "the killed claims were seen and counted as store errors ({killed} killed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_rate_is_the_total_of_all_instances() {
    let _heavy = crate::harness::HEAVY.lock().await;
    let Some(mut fleet) = Fleet::new(3).await else {
        return;
    };
    const QPS: usize = 20;
    fleet.env = vec![("POINTSYNC__DISPATCHER__QPS", QPS.to_string())];
    fleet.start_all().await;
    let shared = fleet.sim.shared().clone();
    let spec = GenerateSpec {
        count: 150,
        seed: 13,
        members: 10,
        rate_per_sec: Some(500.0),
        refund_share: 0.0,
        manual_share: 0.0,
    };
    wechatpay_sim::control::generate(&shared, spec)
        .await
        .unwrap();
    wait_quiet(&fleet.sim, &fleet.store, Duration::from_secs(60)).await;
    assert_invariants(&fleet.sim, &fleet.store).await;
    assert_no_transaction_left_open(&fleet).await;
    // per second of the simulator's clock, after the start (the bucket may spend its one-second
    // burst at first): about QPS, where three separate buckets would send three times as much
    let mut per_second = std::collections::BTreeMap::<i64, usize>::new();
    for c in fleet.sim.syncs() {
        *per_second.entry(c.at).or_default() += 1;
    }
    let steady: Vec<usize> = per_second.values().copied().skip(2).collect();
    let n = steady.len();
    assert!(n >= 3, "{per_second:?}");
    // the last second may be partial; the others carry the limit
    assert!(
        steady[..n - 1].iter().all(|c| *c <= QPS + QPS / 4),
        "more than {QPS}/s in one second: {per_second:?}"
    );
    let (first, last) = (
        *per_second.keys().next().unwrap(),
        *per_second.keys().last().unwrap(),
    );
    let floor = (150 - QPS) / QPS;
    assert!(
        (last - first) as usize >= floor - 1,
        "150 syncs at {QPS}/s in all took {} s: {per_second:?}",
        last - first
    );
    for i in 0..3 {
        assert!(
            metric(
                &metrics_of(&fleet, i).await,
                "pointsync_syncs_total",
                "done"
            ) > 0.0,
            "instance {i} sent some"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_day_runs_across_three_instances_on_postgresql() {
    let _heavy = crate::harness::HEAVY.lock().await;
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let url = match &db {
        pointsync::store::Database::Postgres(u) => u.clone(),
        other => panic!("{other}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let report = pointsync::demo::run(pointsync::demo::DemoOptions {
        dir: Some(dir.path().join("demo")),
        payments: 300,
        members: 30,
        progress: false,
        instances: 3,
        database: Some(url.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(report.records_match, "{report}");
    assert_eq!((report.credited, report.instances), (300, 3));
    assert!(report.to_string().contains("3 instance(s)"));
    // the operator commands work against the URL
    let config = dir.path().join("demo/pointsync.toml");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_pointsync"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("POINTSYNC__SERVICE__DATABASE", &url)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(run(&["migrate"]).contains("schema up to date (3 outbox vacuum)"));
    let status = run(&["status"]);
    assert!(
        status.contains("syncs:  done 300") && status.contains("oldest pending sync: none"),
        "{status}"
    );
    // the same database again: refused, it holds data
    let again = pointsync::demo::run(pointsync::demo::DemoOptions {
        dir: Some(dir.path().join("again")),
        payments: 10,
        progress: false,
        instances: 2,
        database: Some(url),
        ..Default::default()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(again.contains("already holds data"), "{again}");
}

async fn readyz(admin: &str) -> u16 {
    reqwest::get(format!("http://{admin}/readyz"))
        .await
        .map_or(0, |r| r.status().as_u16())
}

fn cluster(action: &str) -> bool {
    Command::new("pg_ctlcluster")
        .args(["15", "main", action])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_stopped_and_restarted_mid_run_loses_nothing_acknowledged() {
    if Command::new("pg_ctlcluster")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: the PostgreSQL restart test: no pg_ctlcluster on this machine");
        return;
    }
    let _heavy = crate::harness::HEAVY.lock().await;
    // no other test may be using the server while it goes down
    let _alone = server_alone().await;
    let Some(db) = fresh_database_unlocked().await else {
        return;
    };
    let Some(mut fleet) = Fleet::on(db, 2).await else {
        return;
    };
    fleet.start_all().await;
    let generator = fleet.generate(200, 14, 100.0, 0.1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // whatever happens below, the server is started again for the tests after this one
    struct StartAgain;
    impl Drop for StartAgain {
        fn drop(&mut self) {
            cluster("start");
        }
    }
    let _start_again = StartAgain;
    assert!(cluster("stop"), "pg_ctlcluster 15 main stop");
    // while it is down: not ready (callbacks answered 5xx, WeChat retries), and no crash
    let admin = fleet.instances[0].admin.clone();
    let deadline = wechatpay::clock::monotonic() + Duration::from_secs(10);
    while readyz(&admin).await == 200 {
        assert!(
            wechatpay::clock::monotonic() < deadline,
            "/readyz stayed 200 with the database down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(cluster("start"), "pg_ctlcluster 15 main start");
    for i in 0..2 {
        let alive = fleet.instances[i]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap();
        assert!(
            alive.is_none(),
            "instance {i} exited while the database was down: {alive:?}"
        );
    }
    generator.await.unwrap().unwrap();
    // the pools reconnect by themselves; WeChat's retries land
    let deadline = wechatpay::clock::monotonic() + Duration::from_secs(30);
    while readyz(&admin).await != 200 {
        assert!(
            wechatpay::clock::monotonic() < deadline,
            "/readyz did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_quiet(&fleet.sim, &fleet.store, Duration::from_secs(90)).await;
    assert_invariants(&fleet.sim, &fleet.store).await;
    assert_no_transaction_left_open(&fleet).await;
    assert_eq!(fleet.store.audit().await.unwrap().credits.len(), 200);
    let text = metrics_of(&fleet, 0).await + &metrics_of(&fleet, 1).await;
    let refused = metric(&text, "pointsync_callbacks_total", "db_error")
        + metric(&text, "pointsync_callbacks_total", "timeout");
    assert!(
        refused > 0.0,
        "callbacks were refused (5xx) while the database was down"
    );
}
