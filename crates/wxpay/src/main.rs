//! `wxpay` — send any WeChat Pay APIv3 request from a shell, signed and verified; download
//! platform certificates; diagnose a captured callback.
//!
//! Exit codes: 0 verified 2xx · 1 WeChat answered non-2xx · 2 usage or configuration error ·
//! 3 the answer (or callback) failed verification · 4 transport error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use wechatpay::notify::NotifyParser;
use wechatpay::{ApiV3Key, Error, TrustStore, blocking::Client};

/// Send WeChat Pay APIv3 requests, signed and verified.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    creds: Creds,
    #[command(subcommand)]
    command: Option<Command>,
    /// HTTP method (GET, POST, PUT, PATCH, DELETE).
    #[arg(required = true)]
    method: Option<String>,
    /// Path template, e.g. /v3/businesscircle/user-authorizations/{openid}.
    #[arg(required = true)]
    path: Option<String>,
    /// JSON body, or @FILE to read it from a file (sent byte for byte).
    #[arg(long)]
    json: Option<String>,
    /// Query parameter K=V (repeatable, in order).
    #[arg(long = "query", value_name = "K=V")]
    query: Vec<String>,
    /// Path template value NAME=VALUE (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
}

#[derive(Args, Debug)]
struct Creds {
    /// Merchant id.
    #[arg(long, env = "WECHATPAY_MCHID", global = true)]
    mchid: Option<String>,
    /// Merchant API certificate serial.
    #[arg(long, env = "WECHATPAY_SERIAL", global = true)]
    serial: Option<String>,
    /// Merchant private key PEM file (PKCS#8 or PKCS#1).
    #[arg(long, env = "WECHATPAY_PRIVATE_KEY", global = true)]
    private_key: Option<PathBuf>,
    /// Trusted WeChat key: a platform certificate PATH, or PUB_KEY_ID_…=PATH (repeatable;
    /// comma-separated in the environment).
    #[arg(
        long,
        env = "WECHATPAY_TRUST",
        value_delimiter = ',',
        global = true,
        value_name = "[ID=]PATH"
    )]
    trust: Vec<String>,
    /// File holding the 32-character APIv3 key.
    #[arg(long, env = "WECHATPAY_APIV3_KEY_FILE", global = true)]
    apiv3_key_file: Option<PathBuf>,
    /// Base URL (default https://api.mch.weixin.qq.com).
    #[arg(long, env = "WECHATPAY_BASE_URL", global = true)]
    base_url: Option<String>,
    /// Request timeout in seconds.
    #[arg(long, default_value_t = 20, global = true)]
    timeout: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Download, decrypt and verify the platform certificates into DIR.
    Certificates {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify and decrypt a captured callback; print the event as JSON.
    Callback {
        /// Headers, one `Name: value` per line.
        #[arg(long)]
        headers: PathBuf,
        /// The raw body bytes.
        #[arg(long)]
        body: PathBuf,
        /// Check against this Unix time (when the callback was received) instead of now.
        #[arg(long)]
        now: Option<i64>,
    },
}

/// A failure with its exit code.
struct Fail(u8, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Api(_) => 1,
            Error::Verify { .. } | Error::Decrypt { .. } => 3,
            Error::Transport { .. } => 4,
            _ => 2,
        };
        Fail(code, e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("wxpay: {}", msg.replace('\n', " "));
            ExitCode::from(code)
        }
    }
}

fn config<T>(r: Result<T, impl std::fmt::Display>) -> Result<T, Fail> {
    r.map_err(|e| Fail(2, e.to_string()))
}

fn trust_store(creds: &Creds) -> Result<TrustStore, Fail> {
    let mut t = TrustStore::new();
    // `WECHATPAY_TRUST=` (empty) means not set, not a file named ""
    for item in creds.trust.iter().filter(|t| !t.trim().is_empty()) {
        let (id, path) = match item.split_once('=') {
            Some((id, path)) => (Some(id), path),
            None => (None, item.as_str()),
        };
        config(
            t.add_file(id, std::path::Path::new(path))
                .map_err(|e| format!("--trust {item}: {e}")),
        )?;
    }
    Ok(t)
}

fn client(creds: &Creds, bootstrap: bool) -> Result<Client, Fail> {
    let mut b = Client::builder()
        .trust_store(trust_store(creds)?)
        .timeout(std::time::Duration::from_secs(creds.timeout))
        .allow_empty_trust_store(bootstrap);
    if let Some(m) = &creds.mchid {
        b = b.mchid(m);
    }
    if let Some(s) = &creds.serial {
        b = b.serial(s);
    }
    if let Some(k) = &creds.private_key {
        b = b.private_key_file(k);
    }
    if let Some(k) = &creds.apiv3_key_file {
        b = b.apiv3_key_file(k);
    }
    if let Some(u) = &creds.base_url {
        b = b.base_url(u).backup_url(None);
    }
    config(b.build_blocking())
}

fn pairs(items: &[String], flag: &str) -> Result<Vec<(String, String)>, Fail> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Fail(2, format!("{flag} `{kv}` must be NAME=VALUE")))
        })
        .collect()
}

fn print_body(body: &[u8]) {
    if body.is_empty() {
        return;
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(_) => println!("{}", String::from_utf8_lossy(body)),
    }
}

fn run(cli: Cli) -> Result<(), Fail> {
    match cli.command {
        Some(Command::Certificates { out }) => {
            let client = client(&cli.creds, true)?;
            let certs = client.certificates()?;
            config(
                std::fs::create_dir_all(&out)
                    .map_err(|e| format!("creating {}: {e}", out.display())),
            )?;
            for c in &certs {
                let path = out.join(format!("wechatpay_{}.pem", c.serial_no));
                config(
                    std::fs::write(&path, &c.pem)
                        .map_err(|e| format!("writing {}: {e}", path.display())),
                )?;
                println!(
                    "{}  valid {} – {}  {}",
                    c.serial_no,
                    c.effective_time,
                    c.expire_time,
                    path.display()
                );
            }
            Ok(())
        }
        Some(Command::Callback { headers, body, now }) => {
            callback(&cli.creds, &headers, &body, now)
        }
        None => {
            let method = cli.method.unwrap_or_default();
            let method = config(
                Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("bad method `{method}`")),
            )?;
            let path = cli.path.unwrap_or_default();
            let client = client(&cli.creds, false)?;
            let mut chain = client.chain(&path);
            for (k, v) in pairs(&cli.vars, "--var")? {
                chain = chain.var(k, v);
            }
            for (k, v) in pairs(&cli.query, "--query")? {
                chain = chain.query(k, v);
            }
            if let Some(json) = &cli.json {
                let bytes = match json.strip_prefix('@') {
                    Some(file) => {
                        config(std::fs::read(file).map_err(|e| format!("reading {file}: {e}")))?
                    }
                    None => json.clone().into_bytes(),
                };
                config(
                    serde_json::from_slice::<serde_json::Value>(&bytes)
                        .map_err(|e| format!("--json is not JSON: {e}")),
                )?;
                chain = chain.body(bytes);
            }
            let res = chain.send(method)?;
            // the body alone on stdout (`wxpay GET … | jq`); the exchange's facts on stderr
            eprintln!("HTTP {}", res.status);
            if let Some(id) = &res.request_id {
                eprintln!("Request-ID: {id}");
            }
            eprintln!("Verified-By: {}", res.verified_by);
            print_body(&res.body);
            Ok(())
        }
    }
}

fn callback(
    creds: &Creds,
    headers: &PathBuf,
    body: &PathBuf,
    now: Option<i64>,
) -> Result<(), Fail> {
    let key_file = creds.apiv3_key_file.as_ref().ok_or_else(|| {
        Fail(
            2,
            "the APIv3 key is needed: --apiv3-key-file or WECHATPAY_APIV3_KEY_FILE".into(),
        )
    })?;
    let key = config(ApiV3Key::from_file(key_file))?;
    let trust = trust_store(creds)?;
    if trust.is_empty() {
        return Err(Fail(
            2,
            "no trusted WeChat key: --trust or WECHATPAY_TRUST".into(),
        ));
    }
    let text = config(
        std::fs::read_to_string(headers).map_err(|e| format!("reading {}: {e}", headers.display())),
    )?;
    let mut map = HeaderMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with("HTTP/") || line.starts_with("POST ") {
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            Fail(
                2,
                format!("{} line {}: not `Name: value`", headers.display(), i + 1),
            )
        })?;
        let name = config(
            HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| format!("line {}: {e}", i + 1)),
        )?;
        let value = config(
            HeaderValue::from_str(value.trim()).map_err(|e| format!("line {}: {e}", i + 1)),
        )?;
        map.append(name, value);
    }
    let raw = config(std::fs::read(body).map_err(|e| format!("reading {}: {e}", body.display())))?;
    let parser = NotifyParser::new(trust, key);
    let n = match now {
        Some(t) => parser.verify_at(&map, &raw, t),
        None => parser.verify(&map, &raw),
    }
    .map_err(|e| Fail(3, format!("callback rejected ({}): {e}", e.cause())))?;
    let resource: serde_json::Value =
        serde_json::from_str(&n.plaintext).unwrap_or(serde_json::Value::Null);
    let out = serde_json::json!({
        "id": n.id, "event_type": n.event_type, "create_time": n.create_time, "summary": n.summary,
        "verified_by": n.serial, "request_id": n.request_id, "resource": resource,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}
