//! `wxpay` end to end against the simulator, with a sandbox made by `wechatpay-sim init`:
//! output and exit codes.

use std::path::Path;
use std::process::{Command, Output};

use wechatpay::notify::{Event, MallAuth};
use wechatpay::testing::{CallbackSigner, CallbackSpec};
use wechatpay::{ApiV3Key, PrivateKey};
use wechatpay_sim::{NewMember, NewPayment, Sandbox, SimConfig, SimOptions, Simulator, TrustMode};

struct Env {
    rt: tokio::runtime::Runtime,
    sim: Option<Simulator>,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(mode: TrustMode) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::init(&dir.path().join("sb"), mode).unwrap();
        let sim = rt
            .block_on(Simulator::start(SimConfig::new(sandbox)))
            .unwrap();
        sim.sandbox().write_env(&sim.base_url()).unwrap();
        Self {
            rt,
            sim: Some(sim),
            dir,
        }
    }
    fn sim(&self) -> &Simulator {
        self.sim.as_ref().unwrap()
    }
    fn sb(&self) -> std::path::PathBuf {
        self.dir.path().join("sb")
    }
    /// Runs wxpay with the sandbox's wxpay.env applied, as a user who sourced it would.
    fn wxpay(&self, args: &[&str]) -> Output {
        self.wxpay_with(args, &[])
    }

    /// `wxpay` with the sandbox's environment, then `extra` variables over it.
    fn wxpay_with(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxpay"));
        for line in std::fs::read_to_string(self.sb().join("wxpay.env"))
            .unwrap()
            .lines()
        {
            if let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                cmd.env(k, v);
            }
        }
        cmd.envs(extra.iter().copied());
        cmd.args(args).output().unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let sim = self.sim.take();
        self.rt.block_on(async move { drop(sim) });
    }
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn requests_print_status_and_body_and_exit_zero_only_when_verified() {
    for mode in [TrustMode::Cert, TrustMode::Pubkey, TrustMode::Migrating] {
        let env = Env::new(mode);
        let m = env
            .sim()
            .add_member(NewMember {
                push: false,
                ..NewMember::default()
            })
            .unwrap();
        let tx = env
            .sim()
            .pay(NewPayment {
                openid: m.openid.clone(),
                amount: 500,
                ..NewPayment::default()
            })
            .unwrap();

        let o = env.wxpay(&[
            "GET",
            "/v3/businesscircle/user-authorizations/{openid}",
            "--var",
            &format!("openid={}", m.openid),
            "--query",
            &format!("appid={}", m.appid),
        ]);
        assert_eq!(o.status.code(), Some(0), "{mode:?}: {}", text(&o.stderr));
        // stdout is the body alone (pipe it to jq); the status and ids go to stderr
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["authorize_state"], "AUTHORIZED", "{v}");
        let err = text(&o.stderr);
        assert!(err.starts_with("HTTP 200"), "{err}");
        assert!(
            err.contains("Request-ID: ") && err.contains("Verified-By: "),
            "{err}"
        );

        let body = serde_json::json!({"transaction_id": tx.transaction_id, "appid": tx.appid, "openid": tx.openid,
            "earn_points": true, "increased_points": 5, "points_update_time": "2024-01-01T10:00:00+08:00"});
        let file = env.dir.path().join("body.json");
        std::fs::write(&file, body.to_string()).unwrap();
        let o = env.wxpay(&[
            "POST",
            "/v3/businesscircle/points/notify",
            "--json",
            &format!("@{}", file.display()),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert!(text(&o.stderr).starts_with("HTTP 204"));
        assert!(o.stdout.is_empty(), "a 204 has no body to print");
        assert_eq!(
            env.sim().syncs()[0].body,
            body.to_string(),
            "the file's bytes are sent as they are"
        );
    }
}

#[test]
fn failures_exit_non_zero_with_one_line_naming_the_cause() {
    let env = Env::new(TrustMode::Cert);
    // 400 PARAM_ERROR → exit 1
    let o = env.wxpay(&[
        "POST",
        "/v3/businesscircle/points/notify",
        "--json",
        r#"{"transaction_id":"1"}"#,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("PARAM_ERROR") && err.contains("appid"),
        "{err}"
    );
    // 401 SIGN_ERROR with its explanation: sign with a key that is not the certificate's
    let other = env.dir.path().join("other.pem");
    std::fs::write(&other, wechatpay::testing::keys::OTHER_KEY_PEM).unwrap();
    let o = env.wxpay(&[
        "--private-key",
        other.to_str().unwrap(),
        "GET",
        "/v3/businesscircle/user-authorizations/o1",
        "--query",
        "appid=wx1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("SIGN_ERROR") && err.contains("private key does not belong"),
        "{err}"
    );
    // answer signed with the wrong key → verification failure, exit 3
    env.sim().set_options(SimOptions {
        sign_with_wrong_key: true,
        ..SimOptions::default()
    });
    let o = env.wxpay(&[
        "GET",
        "/v3/businesscircle/user-authorizations/o1",
        "--query",
        "appid=wx1",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("signature does not match"),
        "{}",
        text(&o.stderr)
    );
    env.sim().set_options(SimOptions::default());
    // bad config → exit 2
    let o = env.wxpay(&["--trust", "/nonexistent.pem", "GET", "/v3/x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("/nonexistent.pem"),
        "{}",
        text(&o.stderr)
    );
    // nothing listening → exit 4
    let o = env.wxpay(&["--base-url", "http://127.0.0.1:9", "GET", "/v3/x"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("did not reach"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn certificates_are_downloaded_and_verified() {
    let env = Env::new(TrustMode::Cert);
    let out = env.dir.path().join("certs");
    let o = env.wxpay(&["certificates", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let serial = &env.sim().sandbox().info.platform_serial;
    let saved = std::fs::read_to_string(out.join(format!("wechatpay_{serial}.pem"))).unwrap();
    assert_eq!(saved, env.sim().sandbox().platform_cert_pem);

    let pk = Env::new(TrustMode::Pubkey);
    let o = pk.wxpay(&["certificates", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("PUB_KEY_ID_"),
        "{}",
        text(&o.stderr)
    );
}

fn write_capture(dir: &Path, headers: &http::HeaderMap, body: &[u8]) -> (String, String) {
    let h = dir.join("headers.txt");
    let b = dir.join("body.json");
    let mut lines = String::from("POST /notify HTTP/1.1\r\n");
    for (k, v) in headers {
        lines.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap()));
    }
    std::fs::write(&h, lines).unwrap();
    std::fs::write(&b, body).unwrap();
    (h.display().to_string(), b.display().to_string())
}

/// `wxpay callback --headers H --body B [--now T]`.
fn doctor(env: &Env, headers: &str, body: &str, now: Option<i64>) -> Output {
    let now = now.map(|t| t.to_string());
    let mut args = vec!["callback", "--headers", headers, "--body", body];
    if let Some(t) = &now {
        args.extend(["--now", t.as_str()]);
    }
    env.wxpay(&args)
}

#[test]
fn callback_doctor_decrypts_or_names_the_cause() {
    let env = Env::new(TrustMode::Cert);
    let sb = env.sim().sandbox();
    let signer = CallbackSigner::new(
        PrivateKey::from_pem_file(env.sb().join("wechat/platform_key.pem")).unwrap(),
        &sb.info.platform_serial,
        ApiV3Key::from_file(env.sb().join("apiv3.key")).unwrap(),
    );
    let event = Event::MallAuth(MallAuth {
        openid: "oDOCTOR".into(),
        code: "1".into(),
        mchid: sb.info.mchid.clone(),
        auth_type: wechatpay::notify::AuthType::RegisteredMode,
        extra: Default::default(),
    });
    let captured_at = 1_700_000_000;
    let cb = signer.build(&event, &CallbackSpec::at(captured_at));
    let (h, b) = write_capture(env.dir.path(), &cb.headers, &cb.body);
    let o = doctor(&env, &h, &b, Some(captured_at));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["event_type"], "MALL_AUTH.ACTIVATE_CARD");
    assert_eq!(v["resource"]["openid"], "oDOCTOR");
    // the same capture checked now: far outside the window
    let o = doctor(&env, &h, &b, None);
    assert_eq!(o.status.code(), Some(3));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1);
    assert!(err.contains("timestamp_window"), "{err}");
    // tampered body
    let mut body = cb.body.clone();
    body.push(b' ');
    let (h, b) = write_capture(env.dir.path(), &cb.headers, &body);
    let o = doctor(&env, &h, &b, Some(captured_at));
    assert_eq!(o.status.code(), Some(3));
    assert!(
        text(&o.stderr).contains("bad_signature"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn transport_errors_name_the_cause_and_an_empty_trust_variable_means_unset() {
    let env = Env::new(TrustMode::Cert);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let o = env.wxpay(&[
        "GET",
        "/v3/businesscircle/user-authorizations/o1",
        "--query",
        "appid=wx1",
        "--base-url",
        &dead_url,
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&dead_url) && err.contains("connection refused"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    // WECHATPAY_TRUST= (empty): not a file named "", but no trusted key at all
    let o = env.wxpay_with(
        &["GET", "/v3/businesscircle/user-authorizations/o1"],
        &[("WECHATPAY_TRUST", "")],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("empty trust store"), "{err}");
}
