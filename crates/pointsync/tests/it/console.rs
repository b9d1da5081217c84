//! The operator console: server-side checks here, and the pages driven in a real headless
//! Chromium by `tests/browser/console.py` (Debian's chromium and chromium-driver, Python's
//! selenium; `.ci/run` installs them and sets POINTSYNC_BROWSER_TESTS so CI fails rather than
//! skips when they are missing).

use std::path::Path;
use std::time::Duration;

use pointsync::store::Store;

use crate::harness::{Harness, fast_push};

fn browser_ready() -> Result<(), String> {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(bin).exists() {
            return Err(format!(
                "{bin} is missing (apt-get install chromium chromium-driver)"
            ));
        }
    }
    let selenium = std::process::Command::new("python3")
        .args(["-c", "import selenium"])
        .status()
        .is_ok_and(|s| s.success());
    if !selenium {
        return Err("python3 cannot import selenium (pip install selenium)".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    if let Err(why) = browser_ready() {
        if std::env::var_os("POINTSYNC_BROWSER_TESTS").is_some() {
            panic!("browser tests are required here: {why}");
        }
        eprintln!("SKIPPED: the console's browser test: {why}");
        return;
    }
    let _heavy = crate::harness::HEAVY.lock().await;
    let h = Harness::start(fast_push(), &[]).await;
    // an authorized member who paid, and another whose sync WeChat refuses (parked)
    let (m, _) = h.authorized_member_pays(10_000);
    let (m2, _) = h.member_pays(2_000);
    h.sim.set_authorization(&m2.openid, false, false).unwrap();
    h.quiet(Duration::from_secs(20)).await;
    let status = h.store.status().await.unwrap();
    let parked = status
        .parked
        .iter()
        .find(|p| p.state == "parked")
        .expect("a parked sync")
        .id;
    // what the page must show: `pointsync status --json`, the operator's own command
    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("status.json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pointsync"))
        .args(["status", "--json", "--config"])
        .arg(h.config_path())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&status_file, &o.stdout).unwrap();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.py");
    let admin = format!("http://{}", h.running().admin_addr);
    let openid = m.openid.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(&script)
            .arg(&admin)
            .arg(&status_file)
            .arg(parked.to_string())
            .arg(&openid)
            .arg(&shots)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("console: all checks passed"), "{text}");
    // what the browser did is in the store
    let view = h.store.member(&m.openid).await.unwrap().unwrap();
    assert_eq!(view.balance, 100 - 5, "the adjustment made in the browser");
}

#[tokio::test]
async fn console_forms_refuse_cross_site_posts_and_a_wrong_token() {
    let h = Harness::start(fast_push(), &[]).await;
    let (m, _) = h.authorized_member_pays(10_000);
    h.quiet(Duration::from_secs(10)).await;
    let admin = format!("http://{}", h.running().admin_addr);
    let page = reqwest::get(format!("{admin}/members/{}", m.openid))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |csrf: String, extra: Option<(&'static str, &'static str)>| {
        let mut req = http
            .post(format!("{admin}/members/{}/adjust", m.openid))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}&points=-1&reference=X-1&reason=test"));
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        req.send()
    };
    // another site's form, and a forged token: refused, nothing changed
    let r = post(csrf.clone(), Some(("sec-fetch-site", "cross-site")))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(csrf.clone(), Some(("origin", "https://evil.example")))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post("forged".into(), None).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(h.balance(&m.openid).await, 100);
    // the console's own form: applied
    let r = post(csrf, Some(("sec-fetch-site", "same-origin")))
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(h.balance(&m.openid).await, 99);
}

#[tokio::test]
async fn an_admin_token_guards_the_console_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-admin-token-0123456789\n").unwrap();
    let tf = token_file.clone();
    let h = Harness::start_with(fast_push(), &[], move |c| {
        c.service.admin_token_file = Some(tf);
    })
    .await;
    let admin = format!("http://{}", h.running().admin_addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, auth: Option<&str>| {
        let mut r = http.get(format!("{admin}{path}"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(
        get("/healthz", None).await.unwrap().status(),
        200,
        "liveness stays open"
    );
    for path in ["/", "/metrics", "/parked", "/readyz"] {
        assert_eq!(get(path, None).await.unwrap().status(), 401, "{path}");
        assert_eq!(
            get(path, Some("Bearer wrong")).await.unwrap().status(),
            401,
            "{path}"
        );
    }
    let ok = get("/", Some("Bearer s3cret-admin-token-0123456789"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // a browser logs in once and gets a cookie
    let login = get("/login?token=s3cret-admin-token-0123456789", None)
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let with_cookie = http
        .get(format!("{admin}/parked"))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), 200);
}
