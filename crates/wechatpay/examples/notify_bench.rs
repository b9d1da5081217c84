//! Points-notify benchmark client: N calls to a WeChat-like server (the simulator, in another
//! process), one at a time or with C in flight, on one thread. Prints the client's CPU µs per
//! call (from /proc/self/stat) and its peak RSS (VmHWM). Configured like `wxpay`, from the
//! environment of a sandbox's `wxpay.env`. Run by `bench/sdk.sh`.
//!
//! Usage: notify_bench N CONCURRENCY

use wechatpay::businesscircle::PointsNotifyRequest;

fn proc_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // fields after the command: state(0) … utime(11) stime(12); clock ticks are 100 Hz on Linux
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set; source the sandbox's wxpay.env"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let conc: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let base = env("WECHATPAY_BASE_URL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // One member and one payment, made through the simulator's control API.
        let http = reqwest::Client::new();
        let m: serde_json::Value = http
            .post(format!("{base}/sim/members"))
            .json(&serde_json::json!({"push": false}))
            .send()
            .await?
            .json()
            .await?;
        let tx: serde_json::Value = http
            .post(format!("{base}/sim/payments"))
            .json(&serde_json::json!({"openid": m["openid"], "amount": 10000}))
            .send()
            .await?
            .json()
            .await?;
        let mut b = wechatpay::Client::builder()
            .mchid(env("WECHATPAY_MCHID"))
            .serial(env("WECHATPAY_SERIAL"))
            .private_key_file(env("WECHATPAY_PRIVATE_KEY"))
            .base_url(&base)
            .backup_url(None);
        for t in env("WECHATPAY_TRUST").split(',') {
            let (id, path) = t.split_once('=').map(|(i, p)| (Some(i), p)).unwrap_or((None, t));
            b = b.trust_file(id, path);
        }
        let client = b.build()?;
        let req = PointsNotifyRequest::new(
            tx["transaction_id"].as_str().unwrap_or_default(),
            tx["appid"].as_str().unwrap_or_default(),
            tx["openid"].as_str().unwrap_or_default(),
            true,
            100,
            "2026-11-27T10:00:00+08:00",
        )
        .total_points(100);
        // warm up the connection pool
        for _ in 0..conc.min(n) {
            client.v3().businesscircle().points().notify().post(&req).await?;
        }
        let cpu0 = proc_cpu_secs();
        let t0 = wechatpay::clock::monotonic();
        let per_task = n / conc;
        let mut tasks = Vec::new();
        let local = tokio::task::LocalSet::new();
        for _ in 0..conc {
            let client = client.clone();
            let req = req.clone();
            tasks.push(local.spawn_local(async move {
                for _ in 0..per_task {
                    let res = client.v3().businesscircle().points().notify().post(&req).await?;
                    assert_eq!(res.status, 204);
                }
                Ok::<_, wechatpay::Error>(())
            }));
        }
        local
            .run_until(async {
                for t in tasks {
                    t.await.expect("task")?;
                }
                Ok::<_, wechatpay::Error>(())
            })
            .await?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = proc_cpu_secs() - cpu0;
        let calls = (per_task * conc) as f64;
        println!(
            "calls={} in_flight={} wall_s={:.3} calls_per_s={:.0} client_cpu_us_per_call={:.1} peak_rss_kib={}",
            calls,
            conc,
            wall,
            calls / wall,
            cpu * 1e6 / calls,
            peak_rss_kib()
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
