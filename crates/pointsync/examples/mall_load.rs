//! Load for the mall API benchmark: member reads (`GET /v1/members/{openid}` and
//! `GET /v1/members/{openid}/ledger?limit=20`, alternately) of random seeded members, over
//! keep-alive connections, for SECONDS. RATE 0 runs closed-loop as fast as CONCURRENCY callers
//! go; a RATE spreads requests evenly at that many per second. Prints one JSON line.
//! Usage: mall_load URL TOKEN MEMBERS SECONDS CONCURRENCY RATE

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [url, token, members, seconds, concurrency, rate] = a.as_slice() else {
        return Err("usage: mall_load URL TOKEN MEMBERS SECONDS CONCURRENCY RATE".into());
    };
    let members: u64 = members.parse()?;
    let seconds: f64 = seconds.parse()?;
    let concurrency: usize = concurrency.parse()?;
    let rate: f64 = rate.parse()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = wechatpay::clock::monotonic();
    let end = started + Duration::from_secs_f64(seconds);
    let one = {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        let (latencies, errors) = (latencies.clone(), errors.clone());
        move |n: u64| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            let (latencies, errors) = (latencies.clone(), errors.clone());
            async move {
                let m = rand::random::<u64>() % members;
                let path = if n % 2 == 0 {
                    format!("{url}/v1/members/oBench{m:08}")
                } else {
                    format!("{url}/v1/members/oBench{m:08}/ledger?limit=20")
                };
                let t = wechatpay::clock::monotonic();
                let ok = match client.get(path).bearer_auth(&token).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if ok {
                    latencies.lock().await.push(ms);
                } else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    if rate > 0.0 {
        let gap = Duration::from_secs_f64(1.0 / rate);
        let mut tick = tokio::time::interval(gap);
        let mut n = 0u64;
        while wechatpay::clock::monotonic() < end {
            tick.tick().await;
            tasks.spawn(one(n));
            n += 1;
            while let Some(r) = tasks.try_join_next() {
                r?;
            }
        }
    } else {
        for w in 0..concurrency as u64 {
            let one = one.clone();
            tasks.spawn(async move {
                let mut n = w;
                while wechatpay::clock::monotonic() < end {
                    one(n).await;
                    n += 1;
                }
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut v = latencies.lock().await.clone();
    v.sort_by(f64::total_cmp);
    let p = |q: f64| {
        v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{{\"requests\":{},\"errors\":{},\"per_sec\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
        v.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        v.len() as f64 / elapsed,
        p(0.5),
        p(0.99)
    );
    Ok(())
}
