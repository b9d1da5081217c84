//! The `pointsync` command: clear configuration errors, and the operator commands on a real database.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use pointsync::store::Store;
use wechatpay_sim::{NewMember, NewPayment};

use crate::harness::{Harness, fast_push};

fn pointsync(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pointsync"));
    c.args(args).env("RUST_LOG", "error");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A valid config (the demo's, with a fresh sandbox) in `dir`; its database is `dir/pointsync.db`.
fn demo_config(dir: &Path) -> String {
    let sandbox =
        wechatpay_sim::Sandbox::init(&dir.join("sandbox"), wechatpay_sim::TrustMode::Cert).unwrap();
    pointsync::demo::write_config(dir, &sandbox, "http://127.0.0.1:9", "")
        .unwrap()
        .display()
        .to_string()
}

/// `pointsync serve` with its callback listener on `public` and the admin one on any port; for
/// runs that must fail at start-up.
fn serve(config: &str, public: &str) -> Output {
    pointsync(
        &["serve", "--config", config],
        &[
            ("POINTSYNC__SERVICE__PUBLIC_LISTEN", public),
            ("POINTSYNC__SERVICE__ADMIN_LISTEN", "127.0.0.1:0"),
        ],
    )
}

fn write(dir: &Path, text: &str) -> String {
    let p = dir.join("bad.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const MINIMAL: &str = r#"
[wechatpay]
mchid = "1900000001"
serial = "ABCDEF"
private_key = "missing_key.pem"
apiv3_key_file = "apiv3.key"
trust = ["cert.pem"]
"#;

#[test]
fn bad_config_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = pointsync(&["status", "--config", "/nonexistent/pointsync.toml"], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/pointsync.toml"),
        "{}",
        stderr(&o)
    );

    let cases = [
        (
            format!("{MINIMAL}\n[dispatcher]\nqps = \"fast\"\n"),
            "dispatcher.qps",
        ),
        (format!("{MINIMAL}\n[dispatcher]\nspeed = 3\n"), "speed"),
        (
            format!("{MINIMAL}\n[rules]\npoints_per_yuan = -1.0\n"),
            "rules.points_per_yuan",
        ),
        (
            format!(
                "{MINIMAL}\n[[rules.stores]]\nshop_number = \"S1\"\nno_points_remarks = \"😀\"\n"
            ),
            "rules.stores[0].no_points_remarks",
        ),
        (
            MINIMAL.replace("trust = [\"cert.pem\"]", "trust = []"),
            "wechatpay.trust",
        ),
        (MINIMAL.replace("mchid = \"1900000001\"\n", ""), "mchid"),
        ("this is not toml".to_string(), "bad.toml"),
        // a syntax error names its line and column
        (
            format!("{MINIMAL}\n[dispatcher]\nqps = = 3\n"),
            "line 10, column 7",
        ),
        // the console and metrics are not opened to the network without a token
        (
            format!("[service]\nadmin_listen = \"0.0.0.0:9090\"\n{MINIMAL}"),
            "service.admin_token_file",
        ),
        // a callback waiting for company must still be acknowledged in time
        (
            format!("[service]\ncommit_wait_ms = 1000\n{MINIMAL}"),
            "service.commit_wait_ms",
        ),
        // a listener wants IP:PORT and says so
        (
            format!("[service]\npublic_listen = \"localhost:8080\"\n{MINIMAL}"),
            "expects IP:PORT",
        ),
    ];
    for (text, key) in cases {
        let path = write(dir.path(), &text);
        let o = pointsync(&["status", "--config", &path], &[]);
        let e = stderr(&o);
        assert!(!o.status.success(), "{key}");
        assert!(e.contains(key) && e.contains("bad.toml"), "{key}: {e}");
        assert_eq!(e.lines().count(), 1, "one line: {e}");
    }
    // an environment override is checked like the file
    let path = write(dir.path(), MINIMAL);
    let o = pointsync(
        &["status", "--config", &path],
        &[("POINTSYNC__DISPATCHER__CONCURRENCY", "-2")],
    );
    assert!(
        stderr(&o).contains("dispatcher.concurrency"),
        "{}",
        stderr(&o)
    );
    // serve needs the key files: the missing private key is named
    let o = serve(&path, "127.0.0.1:0");
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("wechatpay.trust") || e.contains("wechatpay.private_key"),
        "{e}"
    );
}

#[tokio::test]
async fn operator_commands_read_the_live_database() {
    let h = Harness::start(fast_push(), &[]).await;
    let m = h.sim.add_member(NewMember::default()).unwrap();
    let tx = h
        .sim
        .pay(NewPayment {
            openid: m.openid.clone(),
            amount: 12_300,
            shop_number: Some("S003".into()),
            ..NewPayment::default()
        })
        .unwrap();
    h.sim.refund(&tx.transaction_id, 2_300).unwrap();
    h.quiet(Duration::from_secs(10)).await;
    let config = h.config_path().display().to_string();

    let o = pointsync(&["member", &m.openid, "--config", &config], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("balance 200") && out.contains("credit") && out.contains("debit"),
        "{out}"
    );
    assert!(
        out.contains("\"milli_points_per_yuan\":2000"),
        "the rule behind the credit: {out}"
    );
    // finished-tool output: the authorization in words, a time on every ledger line
    assert!(out.contains("authorization: authorized"), "{out}");
    assert!(!out.contains("Some(") && !out.contains("None"), "{out}");
    assert!(out.contains("credited today: 246"), "{out}");
    for line in out.lines().skip(2) {
        assert!(line.contains("+08:00"), "a time on every entry: {line}");
    }

    let o = pointsync(&["status", "--config", &config], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("syncs:  done 1") && out.contains("oldest pending sync: none"),
        "{out}"
    );
    let o = pointsync(&["status", "--config", &config, "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["syncs"]["done"], 1);

    // park one sync, re-drive it from the command line
    let (m2, tx2) = h.member_pays(500);
    h.sim.set_authorization(&m2.openid, false, false).unwrap();
    h.quiet(Duration::from_secs(10)).await;
    let text = crate::harness::scrape(h.running().admin_addr).await;
    assert_eq!(
        crate::harness::metric(&text, "pointsync_sync_backlog", "parked"),
        1.0,
        "the backlog gauge is read at the scrape: {text}"
    );
    let o = pointsync(&["status", "--config", &config], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("parked #2 {}", tx2.transaction_id)),
        "{out}"
    );
    // the reason as a sentence with WeChat's code and message, not raw JSON
    assert!(
        out.contains("WeChat Pay answered HTTP 400 INVALID_REQUEST: ")
            && out.contains("[Request-ID ")
            && !out.contains("null"),
        "{out}"
    );
    // an id that is not parked is an error, and nothing is re-queued
    let o = pointsync(
        &["sync", "retry", "--parked", "2", "99", "--config", &config],
        &[],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("no parked sync #99"),
        "{}",
        stderr(&o)
    );
    h.sim.set_authorization(&m2.openid, true, false).unwrap();
    let o = pointsync(
        &["sync", "retry", "--parked", "2", "--config", &config],
        &[],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 parked syncs re-queued"),
        "{}",
        stderr(&o)
    );
    h.quiet(Duration::from_secs(10)).await;
    assert_eq!(h.store.status().await.unwrap().syncs.get("done"), Some(&2));

    let o = pointsync(&["member", "oNOBODY", "--config", &config], &[]);
    assert!(!o.status.success() && stderr(&o).contains("no member oNOBODY"));

    // points redeemed at the mall's desk, while the service runs: once per reference, never
    // below zero
    let adjust = |points: &str, reference: &str| {
        pointsync(
            &[
                "adjust",
                &m.openid,
                points,
                "--reference",
                reference,
                "--reason",
                "停车兑换",
                "--config",
                &config,
            ],
            &[],
        )
    };
    let o = adjust("-150", "DESK-1");
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("balance 50"),
        "{}",
        stderr(&o)
    );
    let o = adjust("-150", "DESK-1");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("applied before; nothing changed; balance 50"),
        "{}",
        stderr(&o)
    );
    // the same reference with another amount is refused, naming the first
    let o = adjust("-100", "DESK-1");
    assert!(
        !o.status.success() && stderr(&o).contains("DESK-1 was applied before as -150 to"),
        "{}",
        stderr(&o)
    );
    let o = adjust("-51", "DESK-2");
    assert!(
        !o.status.success() && stderr(&o).contains("would make it negative"),
        "{}",
        stderr(&o)
    );
    let view = h.store.member(&m.openid).await.unwrap().unwrap();
    assert_eq!(view.balance, 50);
    let o = pointsync(&["migrate", "--config", &config], &[]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("schema up to date (6 daily cap index)"),
        "{}",
        stderr(&o)
    );
    let fresh = tempfile::tempdir().unwrap();
    let db = fresh.path().join("new.db");
    let o = pointsync(
        &["migrate", "--config", &config],
        &[("POINTSYNC__SERVICE__DATABASE", db.to_str().unwrap())],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(
            "applied: 1 init\napplied: 2 adjustments\napplied: 3 outbox requests\napplied: 4 health\napplied: 5 mall api\napplied: 6 daily cap index\nschema now at version 6 daily cap index"
        ),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn the_admin_listener_is_separate_from_the_callback_listener() {
    let h = Harness::start(fast_push(), &[]).await;
    let admin = format!("http://{}", h.running().admin_addr);
    let public = format!("http://{}", h.running().public_addr);
    assert!(h.running().admin_addr.ip().is_loopback());
    for path in ["/healthz", "/readyz", "/metrics", "/admin/status"] {
        assert_eq!(
            reqwest::get(format!("{admin}{path}"))
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
        assert_eq!(
            reqwest::get(format!("{public}{path}"))
                .await
                .unwrap()
                .status(),
            404,
            "{path} is not public"
        );
    }
    let metrics = crate::harness::scrape(h.running().admin_addr).await;
    assert!(metrics.contains("pointsync_sync_backlog"), "{metrics}");
}

#[test]
fn the_readme_config_example_parses() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let block = readme
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let c = pointsync::config::Config::parse(
        block,
        Path::new("/etc/pointsync/pointsync.toml"),
        std::iter::empty(),
    )
    .unwrap();
    assert_eq!(
        c.service.database.sqlite_path(),
        Some(Path::new("/etc/pointsync/pointsync.db"))
    );
    assert_eq!(
        c.rules.stores[0].no_points_remarks.as_deref(),
        Some("商品不参与积分活动")
    );
    let env = [(
        "POINTSYNC__WECHATPAY__MCHID".to_string(),
        "1900000002".to_string(),
    )];
    let c = pointsync::config::Config::parse(block, Path::new("x.toml"), env.into_iter()).unwrap();
    assert_eq!(
        c.wechatpay.mchid, "1900000002",
        "environment overrides the file"
    );
}

#[tokio::test]
async fn the_demo_reports_a_record_that_matches_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let report = pointsync::demo::run(pointsync::demo::DemoOptions {
        dir: Some(dir.path().join("demo")),
        payments: 120,
        members: 15,
        rate: 300.0,
        burst_429: 10,
        progress: false,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(report.records_match, "{report}");
    assert_eq!(
        (report.credited, report.synced, report.parked),
        (120, 120, 0)
    );
    assert!(
        report.rate_limited >= 10 && report.points_issued > 0 && report.refunds > 0,
        "{report}"
    );
    let text = report.to_string();
    assert!(text.contains("matches the ledger"), "{text}");
    // deliveries are explained against notifications, and the folder is named with how to look
    let n = &report.notifications;
    assert_eq!((n.payments, n.authorizations), (120, 15), "{text}");
    assert!(report.callbacks_sent >= n.total(), "{text}");
    assert!(
        text.contains("extra deliveries are WeChat's retries"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pointsync status --config {}",
            dir.path().join("demo/pointsync.toml").display()
        )),
        "{text}"
    );
    // the same seed gives the same day
    let again = pointsync::demo::run(pointsync::demo::DemoOptions {
        dir: Some(dir.path().join("demo2")),
        payments: 120,
        members: 15,
        rate: 300.0,
        burst_429: 10,
        progress: false,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        (
            &again.notifications,
            again.credited,
            again.points_issued,
            again.points_deducted,
            again.refunds
        ),
        (
            &report.notifications,
            report.credited,
            report.points_issued,
            report.points_deducted,
            report.refunds
        )
    );
}

#[test]
fn the_demo_in_a_log_prints_lines_not_carriage_returns() {
    let dir = tempfile::tempdir().unwrap();
    let o = pointsync(
        &[
            "demo",
            "--payments",
            "300",
            "--members",
            "20",
            "--rate",
            "60",
            "--dir",
            dir.path().join("d").to_str().unwrap(),
        ],
        &[],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        !out.contains('\r'),
        "stdout is not a terminal here: {out:?}"
    );
    assert!(
        out.lines().filter(|l| l.contains("callbacks")).count() >= 2,
        "a progress line every few seconds: {out}"
    );
}

#[test]
fn serve_on_a_read_only_database_exits_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    let o = pointsync(&["migrate", "--config", &config], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let db = dir.path().join("pointsync.db");
    assert!(db.exists(), "the demo config keeps its database beside it");
    let _guard = crate::harness::make_read_only(&db);
    let o = serve(&config, "127.0.0.1:0");
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains(&db.display().to_string()) && err.contains("read-only"),
        "{err}"
    );
    // the operator's read commands still work on it, and refuse to write
    let o = pointsync(&["status", "--config", &config], &[]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("syncs:"),
        "{}",
        stderr(&o)
    );
    let o = pointsync(&["member", "oNOBODY", "--config", &config], &[]);
    assert!(stderr(&o).contains("no member oNOBODY"), "{}", stderr(&o));
}

#[test]
fn read_commands_never_migrate_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    let db = dir.path().join("pointsync.db");
    // a database of an older schema, as a running older service would have it
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(include_str!("../../migrations/sqlite/0001_init.sql"))
            .unwrap();
        c.execute_batch("PRAGMA user_version = 1").unwrap();
    }
    let o = pointsync(&["status", "--config", &config], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("schema version 1") && stderr(&o).contains("pointsync migrate"),
        "{}",
        stderr(&o)
    );
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1, "status left the schema alone");
    let o = pointsync(
        &["status", "--config", &config, "--json"],
        &[("POINTSYNC__SERVICE__DATABASE", "/nonexistent/x.db")],
    );
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[test]
fn serve_names_the_listener_key_it_cannot_bind() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let o = serve(&config, &taken.local_addr().unwrap().to_string());
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("key `service.public_listen`: cannot bind"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_lease_that_a_claimed_row_can_outlive_is_refused_naming_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    type Env<'a> = &'a [(&'a str, &'a str)];
    // (overrides, keys the error must name)
    let cases: [(Env, &[&str]); 2] = [
        (
            &[("POINTSYNC__WECHATPAY__TIMEOUT_MS", "10000")],
            &["wechatpay.timeout_ms", "dispatcher.lease_ms"],
        ),
        (
            &[
                ("POINTSYNC__DISPATCHER__QPS", "1"),
                ("POINTSYNC__DISPATCHER__CONCURRENCY", "16"),
                ("POINTSYNC__DISPATCHER__LEASE_MS", "5000"),
                ("POINTSYNC__WECHATPAY__TIMEOUT_MS", "3000"),
            ],
            &[
                "dispatcher.concurrency",
                "dispatcher.qps",
                "dispatcher.lease_ms",
            ],
        ),
    ];
    for (env, keys) in cases {
        let o = pointsync(&["status", "--config", &config], env);
        let e = stderr(&o);
        assert!(!o.status.success(), "{env:?} accepted");
        for k in keys {
            assert!(e.contains(k), "{env:?}: {e}");
        }
    }
}

#[test]
fn serve_warns_about_secret_files_other_users_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    let key = dir.path().join("sandbox/merchant/apiclient_key.pem");
    let apiv3 = dir.path().join("sandbox/apiv3.key");
    for f in [&key, &apiv3] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // a taken port makes serve stop right after its start-up checks
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let serve = || {
        pointsync(
            &["serve", "--config", &config],
            &[
                ("POINTSYNC__SERVICE__PUBLIC_LISTEN", taken.as_str()),
                ("RUST_LOG", "warn"),
            ],
        )
    };
    let o = serve();
    let err = stderr(&o);
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes when not on a terminal: {err:?}"
    );
    for (k, f) in [
        ("wechatpay.private_key", &key),
        ("wechatpay.apiv3_key_file", &apiv3),
    ] {
        assert!(
            err.contains(k) && err.contains(&f.display().to_string()) && err.contains("chmod 600"),
            "{k}: {err}"
        );
    }
    // owner-only files: no warning
    for f in [&key, &apiv3] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let o = serve();
    assert!(!o.status.success(), "the port is still taken");
    assert!(
        !stderr(&o).contains("readable by other users"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn serve_checks_keys_before_creating_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    std::fs::remove_file(dir.path().join("sandbox/merchant/apiclient_key.pem")).unwrap();
    let o = serve(&config, "127.0.0.1:0");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("wechatpay.private_key"),
        "{}",
        stderr(&o)
    );
    assert!(
        !dir.path().join("pointsync.db").exists(),
        "no database is created for a config that cannot serve"
    );
}

#[test]
fn a_database_that_cannot_be_opened_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    let db = dir.path().join("no/such/folder/pointsync.db");
    let o = pointsync(
        &["migrate", "--config", &config],
        &[("POINTSYNC__SERVICE__DATABASE", db.to_str().unwrap())],
    );
    let e = stderr(&o);
    assert!(!o.status.success());
    assert_eq!(e.matches(db.to_str().unwrap()).count(), 1, "{e}");
    assert!(e.contains("cannot be opened"), "{e}");
}

#[test]
fn with_json_logs_every_line_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let o = pointsync(
        &["serve", "--config", &config],
        &[
            ("POINTSYNC__SERVICE__LOG_FORMAT", "json"),
            (
                "POINTSYNC__SERVICE__PUBLIC_LISTEN",
                &taken.local_addr().unwrap().to_string(),
            ),
            ("RUST_LOG", "info"),
        ],
    );
    assert!(!o.status.success());
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(all.contains("cannot bind"), "{all}");
    for line in all.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

#[tokio::test]
async fn serve_runs_the_worker_threads_it_is_given() {
    // one per core by default; `TOKIO_WORKER_THREADS` (README) sets another number
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    let port = crate::harness::free_port;
    let (public, admin) = (port(), port());
    let env = [("TOKIO_WORKER_THREADS".to_string(), "3".to_string())];
    let (mut child, _) =
        crate::harness::spawn_serve(Path::new(&config), &public, &admin, &env).await;
    let metrics = crate::harness::scrape(&admin).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        metrics.lines().any(|l| l == "pointsync_runtime_workers 3"),
        "{metrics}"
    );
}

#[tokio::test]
#[should_panic(expected = "cannot bind")]
async fn a_child_exiting_during_start_up_is_reported_with_its_stderr() {
    // what the multi-instance and crash tests print when a `pointsync serve` of theirs dies
    // before it is healthy: its own words, here that its callback port is taken
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let public = taken.local_addr().unwrap().to_string();
    let admin = crate::harness::free_port();
    crate::harness::spawn_serve(Path::new(&config), &public, &admin, &[]).await;
}

#[test]
fn the_deployment_config_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pointsync.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = pointsync::config::Config::parse(&text, &path, std::iter::empty()).unwrap();
    assert_eq!(
        c.service.database.sqlite_path(),
        Some(Path::new("/var/lib/pointsync/pointsync.db")),
        "the systemd unit's StateDirectory"
    );
    assert!(c.service.admin_listen.ip().is_loopback());
    assert_eq!(c.service.log_format, "json");
}

// the commands call the in-process simulator while this thread waits for them
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_member_and_parking_commands_do_what_the_mall_api_does() {
    let h = Harness::start(fast_push(), &[]).await;
    // credited on trust (the harness's rules), her authorization never reported
    let (m, _) = h.member_pays(5_000);
    h.quiet(Duration::from_secs(10)).await;
    let config = h.config_path().display().to_string();
    let env = [("POINTSYNC__WECHATPAY__BRANDID", "1000")];
    let o = pointsync(
        &[
            "members",
            "reconcile",
            "--stale-after",
            "0s",
            "--config",
            &config,
        ],
        &env,
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("reconciled 1 members: 1 authorized, 0 not authorized"),
        "{out}"
    );
    // nothing stale within a day of asking
    let o = pointsync(&["members", "reconcile", "--config", &config], &env);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("reconciled 0 members"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = pointsync(&["member", &m.openid, "--json", "--config", &config], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["balance"], 50);
    assert_eq!(
        (&v["authorization"]["state"], &v["authorization"]["source"]),
        (
            &serde_json::json!("authorized"),
            &serde_json::json!("query")
        )
    );
    assert_eq!(v["pending_points"]["status"], "FINISHED", "{v}");
    // a car in, three times under one key: stored once, relayed once by the running service
    let car_in = || {
        pointsync(
            &[
                "parking",
                "in",
                &m.openid,
                "粤B12345",
                "--key",
                "gate-1-42",
                "--time",
                "2026-12-01T10:00:00+08:00",
                "--config",
                &config,
            ],
            &env,
        )
    };
    let outputs: Vec<_> = (0..3).map(|_| car_in()).collect();
    for o in &outputs {
        assert!(o.status.success(), "{}", stderr(o));
    }
    let last = String::from_utf8_lossy(&outputs[2].stdout);
    assert!(last.contains("parking 1 stored (reported before"), "{last}");
    let o = pointsync(
        &[
            "parking",
            "out",
            &m.openid,
            "粤B\u{1}5",
            "--config",
            &config,
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("invalid_field (plate_number)"),
        "{}",
        stderr(&o)
    );
    // the service relays what the command stored (woken by its poll)
    crate::harness::wait_for("the parking relay", Duration::from_secs(10), || {
        h.sim.parkings().len() == 1
    })
    .await;
    let p = &h.sim.parkings()[0];
    assert_eq!(
        (&p["plate_number"], &p["state"], &p["brandid"]),
        (
            &serde_json::json!("粤B12345"),
            &serde_json::json!("IN"),
            &serde_json::json!(1000)
        )
    );
}

#[test]
fn mall_api_token_settings_are_checked_naming_the_key() {
    let hex = "ab".repeat(32);
    let cases = [
        (
            r#"[{name = "a", scopes = ["members:read"]}]"#.to_string(),
            "key `mall_api.tokens[0]`: give exactly one of",
        ),
        (
            r#"[{name = "a", sha256 = "zz", scopes = []}]"#.to_string(),
            "key `mall_api.tokens[0].sha256`",
        ),
        (
            format!(r#"[{{name = "a", sha256 = "{hex}", scopes = ["members:write"]}}]"#),
            "members:write",
        ),
        (
            format!(
                r#"[{{name = "a", sha256 = "{hex}", scopes = []}}, {{name = "a", sha256 = "{hex}", scopes = []}}]"#
            ),
            "key `mall_api.tokens[1].name`",
        ),
    ];
    for (tokens, expected) in cases {
        let env = [("POINTSYNC__MALL_API__TOKENS".to_string(), tokens.clone())];
        let e = pointsync::config::Config::parse(MINIMAL, Path::new("p.toml"), env.into_iter())
            .unwrap_err()
            .to_string();
        assert!(e.contains(expected), "{tokens}: {e}");
    }
    // a token file is read at start-up: a short token is refused naming the key
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.token");
    std::fs::write(&short, "too-short").unwrap();
    let config = pointsync::config::Config::parse(
        MINIMAL,
        Path::new("p.toml"),
        [(
            "POINTSYNC__MALL_API__TOKENS".to_string(),
            format!(
                r#"[{{name = "pos", token_file = "{}", scopes = []}}]"#,
                short.display()
            ),
        )]
        .into_iter(),
    )
    .unwrap();
    let e = config
        .mall_api
        .unwrap()
        .load_tokens()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mall_api.tokens[0].token_file") && e.contains("shorter than 32"),
        "{e}"
    );
    assert!(
        !e.contains("too-short"),
        "the secret is never repeated: {e}"
    );
}
