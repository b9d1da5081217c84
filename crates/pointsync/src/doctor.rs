//! `pointsync doctor`: the preflight a merchant runs before pointing WeChat at the service. Each
//! check is one line — passed, failed (with what was found and how to fix it) or skipped because
//! an earlier failure leaves nothing to check — and the command succeeds only when all pass.

use std::time::Duration;

use http::Method;
use serde::Serialize;
use wechatpay::{Error, RawRequest, VerifyError};

use crate::config::Config;
use crate::store::Store;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// ✔
    Pass,
    /// ✘
    Fail,
    /// – nothing to check (an earlier failure, or not used by this merchant).
    Skip,
}

/// One line of the doctor's report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short stable name.
    pub check: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub found: String,
    /// How to fix it (failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(check: &'static str, found: impl Into<String>) -> Self {
        Self {
            check,
            verdict: Verdict::Pass,
            found: found.into(),
            fix: None,
        }
    }
    fn fail(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            verdict: Verdict::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
    fn skip(check: &'static str, why: impl Into<String>) -> Self {
        Self {
            check,
            verdict: Verdict::Skip,
            found: why.into(),
            fix: None,
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = match self.verdict {
            Verdict::Pass => "✔",
            Verdict::Fail => "✘",
            Verdict::Skip => "–",
        };
        write!(f, "{mark} {:<14} {}", self.check, self.found)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// Whether every check passed (skips are fine only for what the merchant does not use).
pub fn all_pass(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.verdict != Verdict::Fail)
}

/// The clock may be this far from WeChat's.
pub const CLOCK_TOLERANCE_SECS: i64 = 60;

/// A platform certificate must stay valid at least this long.
pub const CERT_MARGIN_SECS: i64 = 30 * 86_400;

/// Runs every check for `config` (already parsed: a config that does not parse is reported by
/// the caller). `probe` also sends a request through `service.public_url`.
pub async fn run<S: Store>(config: &Config, probe: bool, now_unix: i64) -> Vec<Check> {
    let mut out = vec![Check::pass("config", "parses and passes validation")];
    let exposed = config.exposed_secrets();
    out.push(if exposed.is_empty() {
        Check::pass(
            "key files",
            "private key and APIv3 key readable by their owner only",
        )
    } else {
        Check::fail("key files", exposed.join("; "), "chmod 600 the key files")
    });
    let client = match config.client() {
        Ok(c) => {
            out.push(Check::pass(
                "private key",
                format!(
                    "{} readable, RSA ≥ 2048; APIv3 key 32 bytes",
                    config.wechatpay.private_key.display()
                ),
            ));
            Some(c)
        }
        Err(e) => {
            out.push(Check::fail(
                "private key",
                e.to_string(),
                "point the key at the merchant's apiclient_key.pem (RSA 2048) and the APIv3 key file",
            ));
            None
        }
    };
    match &client {
        Some(c) => out.extend(wechat_checks(c, now_unix).await),
        None => {
            for name in ["signature", "trust", "apiv3 key", "clock"] {
                out.push(Check::skip(name, "needs a client (see private key)"));
            }
        }
    }
    out.push(database::<S>(config).await);
    out.push(listeners(config).await);
    out.extend(callback_url(config, probe).await);
    out
}

/// One signed, harmless call (`GET /v3/certificates`) tells whether WeChat accepts the key and
/// serial, which key WeChat signs with, and WeChat's clock; in certificate mode the certificates
/// then prove the APIv3 key.
async fn wechat_checks(client: &wechatpay::Client, now_unix: i64) -> Vec<Check> {
    let req = RawRequest::new(Method::GET, "/v3/certificates", bytes::Bytes::new());
    let result = client.execute(&req).await;
    let mut out = Vec::new();
    let (skew, clock_problem) = match &result {
        Ok(r) => (r.clock_skew_secs, false),
        Err(e) => {
            let api = e.api();
            let skew = api.and_then(|a| a.clock_skew_secs);
            let clock_problem = api.is_some_and(|a| {
                a.status == 401
                    && a.hint
                        .as_deref()
                        .is_some_and(|h| h.contains("clock problem"))
            });
            (skew, clock_problem)
        }
    };
    // signature
    out.push(match &result {
        Err(Error::Transport { .. }) => Check::fail(
            "signature",
            result
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default(),
            "check the network path to WeChat Pay (and wechatpay.base_url)",
        ),
        Err(Error::Api(a)) if a.status == 401 && clock_problem => Check::skip(
            "signature",
            "cannot be judged while the clock is off (see clock)",
        ),
        Err(Error::Api(a)) if a.status == 401 => Check::fail(
            "signature",
            format!("WeChat Pay refused the signature: {a}"),
            a.sign_explanation
                .as_ref()
                .map(ToString::to_string)
                .or_else(|| a.hint.clone())
                .unwrap_or_else(|| "check mchid, serial and the private key".into()),
        ),
        _ => Check::pass(
            "signature",
            format!(
                "WeChat Pay accepted the signature of mchid {}",
                client.mchid()
            ),
        ),
    });
    // trust: which key WeChat signs with
    let trust = client.trust_store();
    out.push(match &result {
        Err(Error::Verify {
            source: VerifyError::UnknownSerial { serial, .. },
            ..
        }) => Check::fail(
            "trust",
            format!("WeChat Pay signs with {serial}, which wechatpay.trust does not hold"),
            "add WeChat's current platform certificate (wxpay certificates) or public key to wechatpay.trust",
        ),
        Err(Error::Verify { source, .. }) => Check::fail(
            "trust",
            format!("WeChat's answer does not verify: {source}"),
            "trust WeChat's own key, not another one",
        ),
        Ok(r) => expiry(&trust, &r.verified_by, now_unix),
        Err(Error::Api(a)) if a.signed => Check::pass("trust", "WeChat's answer verifies"),
        Err(Error::Api(_)) => Check::skip("trust", "WeChat's error answer carried no signature"),
        Err(_) => Check::skip("trust", "no answer from WeChat Pay"),
    });
    // the APIv3 key decrypts WeChat's certificates (certificate mode)
    out.push(match &result {
        Ok(_) => match client.certificates().await {
            Ok(certs) => Check::pass(
                "apiv3 key",
                format!("decrypts WeChat's {} platform certificate(s)", certs.len()),
            ),
            Err(e @ Error::Decrypt { .. }) => Check::fail(
                "apiv3 key",
                format!("cannot decrypt WeChat's certificates: {e}"),
                "set wechatpay.apiv3_key_file to the APIv3 key configured at 商户平台 → API安全",
            ),
            Err(e) => Check::skip("apiv3 key", format!("certificates not checked: {e}")),
        },
        Err(Error::Api(a)) if a.status == 404 => Check::skip(
            "apiv3 key",
            "public-key mode: no platform certificates to decrypt",
        ),
        Err(_) => Check::skip("apiv3 key", "needs WeChat's certificates (see above)"),
    });
    // clock
    out.push(match skew {
        Some(s) if s.abs() <= CLOCK_TOLERANCE_SECS => {
            Check::pass("clock", format!("within {} s of WeChat Pay's", s.abs()))
        }
        Some(s) => Check::fail(
            "clock",
            format!(
                "this machine's clock is {} s {} WeChat Pay's",
                s.abs(),
                if s > 0 { "behind" } else { "ahead of" }
            ),
            "sync the clock (NTP); WeChat refuses signatures 5 minutes off",
        ),
        None => Check::skip("clock", "WeChat's answer had no Date header"),
    });
    out
}

fn expiry(trust: &wechatpay::TrustStore, verified_by: &str, now_unix: i64) -> Check {
    let Some(left) = trust
        .get(verified_by)
        .and_then(|k| k.expires_at())
        .map(|at| at - now_unix)
    else {
        return Check::pass("trust", format!("WeChat signs with {verified_by}, trusted"));
    };
    let days = left.div_euclid(86_400);
    if left < CERT_MARGIN_SECS {
        Check::fail(
            "trust",
            format!("WeChat signs with {verified_by}, trusted, but it expires in {days} days"),
            "download WeChat's next platform certificate (wxpay certificates) and trust it",
        )
    } else {
        Check::pass(
            "trust",
            format!("WeChat signs with {verified_by}, trusted, valid {days} more days"),
        )
    }
}

async fn database<S: Store>(config: &Config) -> Check {
    match S::check(&config.service.database).await {
        Ok(version) => Check::pass(
            "database",
            format!(
                "{} reachable, writable, schema {version}",
                config.service.database
            ),
        ),
        Err(e) => Check::fail(
            "database",
            e.to_string(),
            match e {
                crate::store::StoreError::NotFound { .. }
                | crate::store::StoreError::SchemaMismatch { .. } => "run pointsync migrate",
                crate::store::StoreError::ReadOnly { .. } => {
                    "make the database file and its folder writable by the service's user"
                }
                _ => "check service.database",
            },
        ),
    }
}

async fn listeners(config: &Config) -> Check {
    let mut taken = Vec::new();
    for (key, addr) in [
        ("service.public_listen", config.service.public_listen),
        ("service.admin_listen", config.service.admin_listen),
    ] {
        if let Err(e) = tokio::net::TcpListener::bind(addr).await {
            taken.push(format!("{key} {addr}: {e}"));
        }
    }
    if taken.is_empty() {
        Check::pass(
            "listeners",
            format!(
                "{} and {} can be bound",
                config.service.public_listen, config.service.admin_listen
            ),
        )
    } else {
        Check::fail(
            "listeners",
            taken.join("; "),
            "free the port (is pointsync already running?) or choose another",
        )
    }
}

async fn callback_url(config: &Config, probe: bool) -> Vec<Check> {
    let Some(url) = &config.service.public_url else {
        return vec![Check::fail(
            "callback url",
            "service.public_url is not set",
            "set service.public_url to the HTTPS URL registered at WeChat Pay",
        )];
    };
    let mut out = vec![match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => Check::pass("callback url", format!("{url} is HTTPS")),
        Ok(_) => Check::fail(
            "callback url",
            format!("{url} is not HTTPS"),
            "WeChat Pay calls HTTPS URLs only: put a TLS proxy in front (deploy/nginx.conf)",
        ),
        Err(e) => Check::fail(
            "callback url",
            format!("{url}: {e}"),
            "give the full URL registered at WeChat Pay",
        ),
    }];
    if probe {
        out.push(send_probe(url).await);
    }
    out
}

/// Sends a probe through the public URL: only a proxy that forwards the raw body and the
/// `Wechatpay-*` headers intact gets back the digest the doctor computed itself.
async fn send_probe(url: &str) -> Check {
    let nonce = wechatpay::crypto::random_token(32);
    let body = format!("{{\"id\":\"DOCTOR-{nonce}\",\"resource\":{{\"ciphertext\":\"{nonce}\"}}}}");
    let mut headers = http::HeaderMap::new();
    let pairs = [
        ("wechatpay-serial", "PUB_KEY_ID_DOCTOR".to_string()),
        ("wechatpay-signature", format!("doctor{nonce}==")),
        ("wechatpay-timestamp", "1700000000".to_string()),
        ("wechatpay-nonce", nonce.clone()),
        (
            "wechatpay-signature-type",
            "WECHATPAY2-SHA256-RSA2048".to_string(),
        ),
    ];
    for (k, v) in &pairs {
        if let Ok(v) = http::HeaderValue::from_str(v) {
            headers.insert(*k, v);
        }
    }
    let expected = crate::service::probe_digest(&headers, body.as_bytes());
    let sent = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(5))
        .headers(headers)
        .header(crate::service::DOCTOR_PROBE, "1")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Err(e) => Check::fail(
            "probe",
            format!("{url} cannot be reached: {e}"),
            "open the URL to WeChat Pay (DNS, firewall, TLS certificate)",
        ),
        Ok(r) => {
            let status = r.status();
            let seen = r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["probe"].as_str().map(str::to_string));
            match seen {
                Some(d) if d == expected => Check::pass(
                    "probe",
                    "reached pointsync with the raw body and Wechatpay-* headers intact",
                ),
                Some(_) => Check::fail(
                    "probe",
                    "reached pointsync, but the body or a Wechatpay-* header was changed on the way",
                    "make the proxy pass the body byte for byte and every Wechatpay-* header (deploy/nginx.conf)",
                ),
                None => Check::fail(
                    "probe",
                    format!("{url} answered HTTP {status}, not pointsync's callback path"),
                    "route the URL to service.callback_path on the public listener",
                ),
            }
        }
    }
}
