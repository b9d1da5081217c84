//! Store throughput on a real SQLite file: payments ingested one at a time (each waits for its
//! durable commit), then with 64 callers at once (group commit), then claim + complete.
//! Usage: cargo run --release -p pointsync --example ingest_bench [N] [STORES]
//! STORES: how many per-store rules the mall has (default 0), each with a rate of its own.

use std::sync::Arc;
use std::time::Duration;

use pointsync::rules::{Rules, StoreRule, UnknownAuthorization};
use pointsync::store::sqlite::SqliteStore;
use pointsync::store::{Incoming, IngestContext, Store, SyncOutcome};
use wechatpay::notify::{Event, MallTransaction};

fn payment(i: usize) -> Incoming {
    let t = MallTransaction {
        mchid: "1230000109".into(),
        merchant_name: "广场".into(),
        shop_name: "店".into(),
        shop_number: "S1".into(),
        appid: "wx1".into(),
        openid: format!("o{}", i % 500),
        time_end: "2026-11-27T10:00:00+08:00".into(),
        amount: 10_000,
        transaction_id: format!("T{i:019}"),
        commit_tag: None,
        extra: Default::default(),
    };
    let event = Event::MallTransaction(t);
    Incoming {
        notification_id: format!("EV-{i}"),
        event_type: event.event_type().into(),
        plaintext: String::from_utf8(event.to_resource_json()).unwrap_or_default(),
        event,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4000);
    let dir = tempfile::tempdir()?;
    let store =
        SqliteStore::open_path(&dir.path().join("bench.db"), Duration::from_secs(5)).await?;
    let stores: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let rules = Arc::new(Rules {
        stores: (0..stores)
            .map(|i| StoreRule {
                shop_number: format!("S{i}"),
                points_per_yuan: Some(2.0),
                exclude: false,
                no_points_remarks: None,
            })
            .collect(),
        // every payment credited and its sync enqueued, as from an authorized member
        unknown_authorization: UnknownAuthorization::Credit,
        ..Rules::default()
    });
    let now = pointsync::service::now_ms();

    let t = wechatpay::clock::monotonic();
    for i in 0..n {
        let ctx = IngestContext {
            rules: &rules,
            partner_mode: false,
            now_ms: now,
        };
        store.ingest(&payment(i), &ctx).await?;
    }
    println!(
        "ingest one at a time: {:.0}/s",
        n as f64 / t.elapsed().as_secs_f64()
    );

    let t = wechatpay::clock::monotonic();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..64 {
        let (store, rules) = (store.clone(), rules.clone());
        tasks.spawn(async move {
            for i in (n + w..2 * n).step_by(64) {
                let ctx = IngestContext {
                    rules: &rules,
                    partner_mode: false,
                    now_ms: now,
                };
                store.ingest(&payment(i), &ctx).await.expect("ingest");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    println!(
        "ingest, 64 callers at once (group commit): {:.0}/s",
        n as f64 / t.elapsed().as_secs_f64()
    );

    let t = wechatpay::clock::monotonic();
    let mut done = 0;
    loop {
        let claimed = store.claim("bench", now, 60_000, 64).await?;
        if claimed.is_empty() {
            break;
        }
        for c in &claimed {
            store.complete(c, "bench", &SyncOutcome::Done, now).await?;
            done += 1;
        }
    }
    println!(
        "claim (64 at a time) + complete one by one: {:.0}/s ({done} syncs)",
        done as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}
