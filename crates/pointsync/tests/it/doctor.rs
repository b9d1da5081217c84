//! `pointsync doctor` against the simulator in each trust mode: all green when healthy, and each
//! planted fault gives exactly its one ✘ line and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pointsync::store::Store;
use wechatpay_sim::{Sandbox, SimConfig, Simulator, TrustMode};

struct Rig {
    _sim: Simulator,
    dir: tempfile::TempDir,
    config: PathBuf,
}

async fn rig(mode: TrustMode, sim_clock_ahead: i64) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::init(&dir.path().join("sandbox"), mode).unwrap();
    let mut sim_config = SimConfig::new(sandbox.clone());
    if sim_clock_ahead != 0 {
        sim_config.clock = std::sync::Arc::new(wechatpay::clock::FixedClock(
            wechatpay::clock::unix_ms() / 1000 + sim_clock_ahead,
        ));
    }
    let sim = Simulator::start(sim_config).await.unwrap();
    let config = pointsync::demo::write_config(dir.path(), &sandbox, &sim.base_url(), "").unwrap();
    let o = doctor_cmd(&config, &["migrate"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Rig {
        _sim: sim,
        dir,
        config,
    }
}

fn doctor_cmd(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pointsync"));
    c.args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "error")
        .env("POINTSYNC__SERVICE__PUBLIC_LISTEN", "127.0.0.1:0")
        .env("POINTSYNC__SERVICE__ADMIN_LISTEN", "127.0.0.1:0")
        .env(
            "POINTSYNC__SERVICE__PUBLIC_URL",
            "https://points.example-mall.test/wechatpay/notify",
        );
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Runs the doctor; returns (success, the ✘ lines' check names, the whole output).
fn doctor(rig: &Rig, env: &[(&str, &str)]) -> (bool, Vec<String>, String) {
    let o = doctor_cmd(&rig.config, &["doctor"], env);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let failed = out
        .lines()
        .filter_map(|l| l.strip_prefix("✘ "))
        .map(|l| l.split("  ").next().unwrap_or("").trim().to_string())
        .collect();
    (o.status.success(), failed, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_green_against_a_healthy_simulator_in_every_mode() {
    for mode in [TrustMode::Cert, TrustMode::Pubkey, TrustMode::Migrating] {
        let r = rig(mode, 0).await;
        let (ok, failed, out) = doctor(&r, &[]);
        assert!(ok && failed.is_empty(), "{mode:?}:\n{out}");
        for check in [
            "config",
            "key files",
            "private key",
            "signature",
            "trust",
            "clock",
            "database",
            "listeners",
            "callback url",
        ] {
            assert!(
                out.lines().any(|l| l.starts_with(&format!("✔ {check}"))),
                "{mode:?} {check}:\n{out}"
            );
        }
        let json = doctor_cmd(&r.config, &["doctor", "--json"], &[]);
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert!(v.as_array().unwrap().iter().all(|c| c["verdict"] != "fail"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_planted_fault_gives_exactly_its_one_failed_line() {
    let r = rig(TrustMode::Cert, 0).await;
    let other_apiv3 = r.dir.path().join("other_apiv3.key");
    std::fs::write(&other_apiv3, "0123456789abcdef0123456789ABCDEF\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other_apiv3, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let other = Sandbox::init(&r.dir.path().join("other"), TrustMode::Cert).unwrap();
    let other_cert = other
        .dir
        .as_ref()
        .unwrap()
        .join("wechat/platform_cert.pem")
        .display()
        .to_string();
    let untrusted = format!("[\"{other_cert}\"]");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    type Env<'a> = Vec<(&'a str, &'a str)>;
    // (fault, environment, the one check that must fail)
    let cases: Vec<(&str, Env, &str)> = vec![
        (
            "wrong serial",
            vec![(
                "POINTSYNC__WECHATPAY__SERIAL",
                "1234567890ABCDEF1234567890ABCDEF12345678",
            )],
            "signature",
        ),
        (
            "wrong APIv3 key",
            vec![(
                "POINTSYNC__WECHATPAY__APIV3_KEY_FILE",
                other_apiv3.to_str().unwrap(),
            )],
            "apiv3 key",
        ),
        (
            "untrusted WeChat key",
            vec![("POINTSYNC__WECHATPAY__TRUST", untrusted.as_str())],
            "trust",
        ),
        (
            "taken port",
            vec![("POINTSYNC__SERVICE__PUBLIC_LISTEN", taken_addr.as_str())],
            "listeners",
        ),
        (
            "non-HTTPS callback URL",
            vec![(
                "POINTSYNC__SERVICE__PUBLIC_URL",
                "http://points.example-mall.test/wechatpay/notify",
            )],
            "callback url",
        ),
    ];
    for (fault, env, check) in cases {
        let (ok, failed, out) = doctor(&r, &env);
        assert!(!ok, "{fault}: exit 0\n{out}");
        assert_eq!(failed, vec![check.to_string()], "{fault}:\n{out}");
    }
    // a read-only database
    let db = r.dir.path().join("pointsync.db");
    {
        let _guard = crate::harness::make_read_only(&db);
        let (ok, failed, out) = doctor(&r, &[]);
        assert!(!ok);
        assert_eq!(failed, vec!["database".to_string()], "read-only:\n{out}");
    }
    // WeChat's clock 10 minutes off ours
    let skewed = rig(TrustMode::Cert, 600).await;
    let (ok, failed, out) = doctor(&skewed, &[]);
    assert!(!ok);
    assert_eq!(failed, vec!["clock".to_string()], "clock:\n{out}");
    assert!(
        out.contains("600 s behind") || out.contains("behind"),
        "{out}"
    );
}

/// `pointsync doctor --probe` with `service.public_url` set to `url`; its output.
async fn probe_through(config: &Path, url: String) -> String {
    let config = config.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let o = doctor_cmd(
            &config,
            &["doctor", "--probe"],
            &[("POINTSYNC__SERVICE__PUBLIC_URL", url.as_str())],
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_passes_only_through_an_intact_path_to_the_callback() {
    let h = crate::harness::Harness::start(crate::harness::fast_push(), &[]).await;
    let public = h.running().public_addr;
    let config = h.config_path();
    let out = probe_through(&config, format!("http://{public}/wechatpay/notify")).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("✔ probe") && l.contains("intact")),
        "{out}"
    );
    let out = probe_through(&config, format!("http://{public}/somewhere/else")).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("✘ probe") && l.contains("404")),
        "{out}"
    );
    // a proxy that forwards the body but drops a Wechatpay-* header fails the probe
    let target = format!("http://{public}/wechatpay/notify");
    let proxy =
        axum::Router::new().fallback(move |headers: http::HeaderMap, body: bytes::Bytes| {
            let target = target.clone();
            async move {
                let mut forwarded = headers.clone();
                forwarded.remove("wechatpay-signature");
                forwarded.remove(http::header::HOST);
                let r = reqwest::Client::new()
                    .post(&target)
                    .headers(forwarded)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                (status, r.bytes().await.unwrap())
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, proxy).await });
    let out = probe_through(&config, format!("http://{proxy_addr}/wechatpay/notify")).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("✘ probe") && l.contains("changed on the way")),
        "{out}"
    );
    // a probe is answered without storing anything
    assert!(h.store.status().await.unwrap().inbox.is_empty());
}
