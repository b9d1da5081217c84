//! The PostgreSQL backend: the same contract suite on the server at `POINTSYNC_TEST_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`, trust auth), a fresh database per test,
//! dropped after it. Without a server the tests are skipped with a message on stderr, unless
//! `POINTSYNC_REQUIRE_POSTGRES=1` (CI sets it), which makes an unreachable server a failure.

use std::time::Duration;

use pointsync::store::postgres::PgStore;
use pointsync::store::{Database, OpenOptions, Store};
use sqlx::Connection as _;

use crate::contract::Keep;

fn admin_url() -> String {
    std::env::var("POINTSYNC_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The URL of database `name` on the test server.
fn url_of(name: &str) -> String {
    let mut u = url::Url::parse(&admin_url()).unwrap();
    u.set_path(&format!("/{name}"));
    u.to_string()
}

/// Every test using the server holds this shared; the test that restarts the server holds it
/// alone, so it never cuts another test's connections.
static SERVER: std::sync::LazyLock<std::sync::Arc<tokio::sync::RwLock<()>>> =
    std::sync::LazyLock::new(Default::default);

/// The server to oneself (for restarting it), until the guard drops.
pub async fn server_alone() -> tokio::sync::OwnedRwLockWriteGuard<()> {
    SERVER.clone().write_owned().await
}

/// A fresh database on the test server, or `None` (skipped, said) when there is no server. The
/// server is shared with other tests until the guard drops.
pub async fn fresh_database() -> Option<(DropDatabase, Database)> {
    let shared = SERVER.clone().read_owned().await;
    let (mut guard, db) = fresh_database_unlocked().await?;
    guard.1 = Some(shared);
    Some((guard, db))
}

/// A fresh database without the shared hold (for a test holding [`server_alone`]).
pub async fn fresh_database_unlocked() -> Option<(DropDatabase, Database)> {
    let admin = match sqlx::PgConnection::connect(&admin_url()).await {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("POINTSYNC_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "PostgreSQL is required (POINTSYNC_REQUIRE_POSTGRES=1) but {} is unreachable: {e}",
                admin_url()
            );
            eprintln!(
                "SKIPPED: PostgreSQL tests: {} is unreachable ({e}); set POINTSYNC_TEST_POSTGRES",
                admin_url()
            );
            return None;
        }
    };
    let name = format!("pointsync_test_{:016x}", rand::random::<u64>());
    let mut admin = admin;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    Some((
        DropDatabase(name.clone(), None),
        Database::parse(&url_of(&name)).unwrap(),
    ))
}

/// No other session of this database is left inside a transaction (a callback dropped mid-`BEGIN`
/// once left one, its locks stalling every rescuer); `on` is any connection to the database.
pub async fn assert_no_transaction_left_open(on: impl sqlx::PgExecutor<'_>) {
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT left(query, 120) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND state LIKE 'idle in transaction%'",
    )
    .fetch_all(on)
    .await
    .unwrap();
    assert!(
        open.is_empty(),
        "connections left inside a transaction: {open:?}"
    );
}

/// A connection of its own to `db` inside a transaction holding `openid`'s member lock (bound as a
/// parameter), until it commits or closes.
async fn hold_member(db: &Database, openid: &str) -> sqlx::PgConnection {
    let mut holder = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("member:{openid}"))
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}

/// A connection holding the shared rate's row (`rate_limit`) locked in an open transaction,
/// until it commits or drops.
async fn hold_rate_row(db: &Database) -> sqlx::PgConnection {
    let mut holder = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT tokens FROM rate_limit WHERE name = 'wechat' FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}

/// A store on `db` whose instances share an outgoing rate of `qps` syncs per second.
async fn rated_store(db: &Database, qps: f64) -> PgStore {
    let opts = OpenOptions {
        rate_qps: qps,
        ..OpenOptions::default()
    };
    PgStore::open(db, &opts).await.unwrap()
}

/// Drops the test database when the test ends (and lets go of the server).
pub struct DropDatabase(String, Option<tokio::sync::OwnedRwLockReadGuard<()>>);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let name = self.0.clone();
        // a runtime of its own: the test's may be shutting down
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

pub struct Postgres;

impl crate::contract::Backend for Postgres {
    type S = PgStore;
    const LEASES_ON_RECEIPT: bool = true;
    async fn fresh() -> Option<(Keep, PgStore)> {
        let (guard, db) = fresh_database().await?;
        let s = PgStore::open(
            &db,
            &OpenOptions {
                busy_timeout: Duration::from_secs(5),
                ..OpenOptions::default()
            },
        )
        .await
        .unwrap();
        Some((Box::new(guard), s))
    }
}

mod contract {
    crate::contract_suite!(super::Postgres);
}

#[tokio::test]
async fn the_url_password_never_shows_and_migrate_is_idempotent_under_a_lock() {
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let with_password =
        Database::parse(&db.to_string().replace("postgres@", "postgres:s3cret@")).unwrap();
    assert!(
        !with_password.to_string().contains("s3cret"),
        "{with_password}"
    );
    assert!(!format!("{with_password:?}").contains("s3cret"));
    // two migrators at once: one applies, the other finds it done
    let (a, b) = tokio::join!(PgStore::migrate(&db), PgStore::migrate(&db));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.applied.len() + b.applied.len(),
        3,
        "every migration applied once: {a:?} {b:?}"
    );
    assert_eq!(PgStore::check(&db).await.unwrap(), "3 outbox vacuum");
    // the outbox, a queue, is vacuumed after a fixed number of changes, not a fifth of its rows
    let mut c = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    let options: Vec<String> =
        sqlx::query_scalar("SELECT unnest(reloptions) FROM pg_class WHERE relname = 'outbox'")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert!(
        options.contains(&"autovacuum_vacuum_scale_factor=0".to_string())
            && options.contains(&"autovacuum_vacuum_threshold=10000".to_string()),
        "{options:?}"
    );
    let ro = PgStore::open_read_only(&db).await.unwrap();
    assert!(matches!(
        ro.probe_write(0).await,
        Err(pointsync::store::StoreError::Closed { .. })
    ));
    // a wrong password is refused naming the database, never the password
    let wrong = Database::parse("postgres://nobody:hunter2@127.0.0.1:1/none").unwrap();
    let e = PgStore::open_read_only(&wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(!e.contains("hunter2") && e.contains("127.0.0.1"), "{e}");
}

/// Leases run on the database server's clock: an instance whose clock is an hour ahead (or one
/// just resumed with a stale clock) neither rescues another's live lease early nor gets a lease
/// longer or shorter than the configured one.
#[tokio::test]
async fn leases_run_on_the_database_clock_whatever_an_instance_clock_says() {
    use crate::contract::{ctx, payment, trusting};
    use pointsync::store::SyncOutcome;
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = PgStore::open(&db, &OpenOptions::default()).await.unwrap();
    let rules = trusting();
    s.ingest(&payment("T1", "o1", 10_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    const HOUR: i64 = 3_600_000;
    let wall = pointsync::clock::now_ms;
    let before = wall();
    // instance A's clock runs an hour ahead: its lease is still 30 s on the server's clock
    let a = s
        .claim("A", wall() + HOUR, 30_000, 10)
        .await
        .unwrap()
        .remove(0);
    let after = wall();
    let pool = sqlx::PgPool::connect(&db.to_string()).await.unwrap();
    let until: i64 = sqlx::query_scalar("SELECT lease_until FROM outbox WHERE id = $1")
        .bind(a.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        (before + 30_000 - 1_000..=after + 30_000 + 1_000).contains(&until),
        "the lease ends 30 s from the server's now, not the instance's: {} ms off",
        until - before - 30_000
    );
    // instance B's clock runs two hours ahead: its rescuer finds no expired lease, it claims nothing
    assert_eq!(s.rescue(wall() + 2 * HOUR).await.unwrap(), 0);
    assert!(
        s.claim("B", wall() + 2 * HOUR, 30_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A, resumed with a clock an hour behind, renews: again 30 s on the server's clock
    assert!(s.renew(&a, "A", wall() - HOUR, 30_000).await.unwrap());
    let renewed: i64 = sqlx::query_scalar("SELECT lease_until FROM outbox WHERE id = $1")
        .bind(a.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        renewed >= until && renewed <= wall() + 30_000 + 1_000,
        "{renewed} vs {until}"
    );
    assert!(
        s.complete(&a, "A", &SyncOutcome::Done, wall())
            .await
            .unwrap()
    );
    pool.close().await;
}

/// `n` payments stored and their syncs claimed by owner "A" (a 30 s lease), with the claim's time.
async fn claimed_payments(s: &PgStore, n: usize) -> (Vec<pointsync::store::Claimed>, i64) {
    use crate::contract::{ctx, payment, trusting};
    let rules = trusting();
    for i in 0..n {
        s.ingest(&payment(&format!("T{i}"), "o1", 1_000, "S1"), &ctx(&rules))
            .await
            .unwrap();
    }
    let now = pointsync::clock::now_ms();
    let claimed = s.claim("A", now, 30_000, 100).await.unwrap();
    assert_eq!(claimed.len(), n);
    (claimed, now)
}

/// The version of the shared rate's row (its `xmin`): it changes whenever the row is written.
async fn rate_row_version(c: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar("SELECT xmin::TEXT FROM rate_limit WHERE name = 'wechat'")
        .fetch_one(c)
        .await
        .unwrap()
}

/// A claim that finds nothing due (the dispatcher's poll at a quiet hour) neither waits for nor
/// writes the shared rate's row, so its transaction writes nothing; with a row due it takes that
/// row's token from the bucket as before.
#[tokio::test]
async fn a_claim_finding_nothing_due_leaves_the_rate_row_alone() {
    use crate::contract::{ctx, payment, trusting};
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = rated_store(&db, 5.0).await;
    let mut c = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    let before: String = rate_row_version(&mut c).await;
    let mut holder = hold_rate_row(&db).await;
    let now = pointsync::clock::now_ms();
    let empty = tokio::time::timeout(Duration::from_secs(5), s.claim("A", now, 30_000, 10))
        .await
        .expect("a claim finding nothing due waited for the rate's row")
        .unwrap();
    assert!(empty.is_empty(), "{empty:?}");
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let after: String = rate_row_version(&mut c).await;
    assert_eq!(
        after, before,
        "a claim finding nothing due wrote the rate's row"
    );
    let rules = trusting();
    s.ingest(&payment("D1", "o1", 1_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    let claimed = s
        .claim("A", pointsync::clock::now_ms(), 30_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let (spent, tokens): (String, f64) =
        sqlx::query_as("SELECT xmin::TEXT, tokens FROM rate_limit WHERE name = 'wechat'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_ne!(spent, before, "the claim's token was not written");
    assert!(tokens < 5.0, "a token taken: {tokens} left");
}

/// Only the claim right after a full one takes the rate's row without checking that a row is
/// due: finding nothing, it rewrites the row once; the claim after that (the last came back
/// empty) checks again and leaves it alone.
#[tokio::test]
async fn only_a_claim_after_a_full_one_skips_the_check_that_a_row_is_due() {
    use crate::contract::{ctx, payment, trusting};
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = rated_store(&db, 5.0).await;
    let mut c = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    let rules = trusting();
    s.ingest(&payment("F1", "o1", 1_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    let claim = || s.claim("A", pointsync::clock::now_ms(), 30_000, 1);
    assert_eq!(claim().await.unwrap().len(), 1, "full: all it asked for");
    let full: String = rate_row_version(&mut c).await;
    assert!(claim().await.unwrap().is_empty());
    let unchecked: String = rate_row_version(&mut c).await;
    assert_ne!(
        unchecked, full,
        "after a full claim, the next took the rate's row unchecked"
    );
    assert!(claim().await.unwrap().is_empty());
    let checked: String = rate_row_version(&mut c).await;
    assert_eq!(
        checked, unchecked,
        "after an empty claim, the next checked and wrote nothing"
    );
}

/// Outcomes recorded concurrently go in batches, each row still fenced on its own: of 40 claimed
/// rows completed at once, the 10 completed with a stale attempt change nothing and hear `false`.
#[tokio::test]
async fn concurrent_outcomes_are_batched_and_each_is_fenced_on_its_own() {
    use pointsync::store::SyncOutcome;
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = PgStore::open(&db, &OpenOptions::default()).await.unwrap();
    let (claimed, now) = claimed_payments(&s, 40).await;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in claimed.iter().enumerate() {
        let s = s.clone();
        let mut c = c.clone();
        if i % 4 == 0 {
            c.attempt += 1; // an attempt this row never had
        }
        tasks.spawn(async move {
            let ok = s.complete(&c, "A", &SyncOutcome::Done, now).await.unwrap();
            (i, ok)
        });
    }
    let mut outcomes = vec![false; claimed.len()];
    while let Some(r) = tasks.join_next().await {
        let (i, ok) = r.unwrap();
        outcomes[i] = ok;
    }
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 30);
    for (i, ok) in outcomes.iter().enumerate() {
        assert_eq!(*ok, i % 4 != 0, "row {i}");
    }
    let st = s.status().await.unwrap();
    assert_eq!(
        (st.syncs.get("done"), st.syncs.get("inflight")),
        (Some(&30), Some(&10))
    );
}

/// Completes `n` claimed payments one every `gap` (each recorded), and returns how many
/// transactions wrote their outcomes (rows one statement updated share its transaction id);
/// `None` without PostgreSQL.
async fn transactions_for_spaced_outcomes(n: usize, gap: Duration) -> Option<i64> {
    use pointsync::store::SyncOutcome;
    let (_guard, db) = fresh_database().await?;
    let s = PgStore::open(&db, &OpenOptions::default()).await.unwrap();
    let (claimed, now) = claimed_payments(&s, n).await;
    let mut tasks = tokio::task::JoinSet::new();
    for c in claimed {
        let s = s.clone();
        tasks.spawn(async move { s.complete(&c, "A", &SyncOutcome::Done, now).await });
        tokio::time::sleep(gap).await;
    }
    while let Some(r) = tasks.join_next().await {
        assert!(r.unwrap().unwrap(), "each outcome recorded");
    }
    let mut c = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    Some(transactions_that_wrote(&mut c, "outbox WHERE state = 'done'").await)
}

/// Outcomes a few milliseconds apart (a moderate rate) still share a statement: the batch waits
/// a moment for company. Ten outcomes, one every ~2 ms, are written by a few transactions.
#[tokio::test]
async fn outcomes_arriving_milliseconds_apart_share_a_statement() {
    let Some(transactions) = transactions_for_spaced_outcomes(10, Duration::from_millis(2)).await
    else {
        return;
    };
    assert!(
        (1..=4).contains(&transactions),
        "10 outcomes ~2 ms apart were written by {transactions} transactions"
    );
}

/// Outcomes 10 ms apart (200 payments/s behind two instances) share one statement: the batch
/// waits long enough for all eight, where waiting 20 ms would have made three or four.
#[tokio::test]
async fn outcomes_ten_milliseconds_apart_share_one_statement() {
    let Some(transactions) = transactions_for_spaced_outcomes(8, Duration::from_millis(10)).await
    else {
        return;
    };
    assert!(
        transactions <= 2,
        "8 outcomes 10 ms apart were written by {transactions} transactions"
    );
}

/// At a moderate rate (here one callback every 6 ms) callbacks arriving closer together than the
/// commit wait are gathered in one lane and share transactions; further apart — the first ones
/// after a burst too — each is written at once in a transaction of its own.
#[tokio::test]
async fn callbacks_at_a_moderate_rate_share_transactions_and_slow_ones_are_written_at_once() {
    use crate::contract::{paced_payments, slow_payments_wait_for_no_one};
    use pointsync::store::Ingested;
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let wait = Duration::from_millis(500);
    let opts = OpenOptions {
        commit_wait: wait,
        ..OpenOptions::default()
    };
    let s = PgStore::open(&db, &opts).await.unwrap();
    let brisk = paced_payments(&s, "B", 40, Duration::from_millis(6)).await;
    assert!(
        brisk
            .iter()
            .all(|(i, _)| *i == Ingested::Payment { points: 10 }),
        "{brisk:?}"
    );
    let mut c = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    // (payments are never updated here)
    let shared = transactions_that_wrote(&mut c, "payments WHERE transaction_id LIKE 'B%'").await;
    assert!(
        shared * 3 <= 40,
        "40 callbacks 6 ms apart took {shared} transactions: fewer than three shared each"
    );
    slow_payments_wait_for_no_one(&s, "S", wait).await;
    assert_eq!(
        transactions_that_wrote(&mut c, "payments WHERE transaction_id LIKE 'S%'").await,
        3
    );
    let st = s.status().await.unwrap();
    assert_eq!(st.inbox.get("applied"), Some(&43), "{st:?}");
    assert_eq!(st.syncs.values().sum::<i64>(), 43, "{st:?}");
}

/// Payments grouped at a moderate rate lease their syncs on receipt as one written alone does:
/// each caller is handed its sync, as many as the shared rate has tokens for, in transactions that
/// still group several; while another transaction holds the rate's row, a group takes no token
/// and does not wait for it: its syncs stay pending for a claim.
#[tokio::test]
async fn grouped_payments_lease_their_syncs_on_receipt_within_the_shared_rate() {
    use crate::contract::{ctx, trusting};
    use pointsync::store::{Ingested, Lease};
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let opts = OpenOptions {
        commit_wait: Duration::from_millis(500),
        rate_qps: 5.0,
        ..OpenOptions::default()
    };
    let s = PgStore::open(&db, &opts).await.unwrap();
    let rules = std::sync::Arc::new(trusting());
    // `count` payments 6 ms apart (a moderate rate: they group), each asking for a lease
    let paced = |prefix: &'static str, count: usize| {
        crate::contract::paced(&s, prefix, count, Duration::from_millis(6), |s, p| {
            let rules = rules.clone();
            async move {
                let lease = Lease {
                    owner: "A",
                    lease_ms: 30_000,
                };
                s.ingest_leased(&p, &ctx(&rules), &lease).await.unwrap()
            }
        })
    };
    let start = wechatpay::clock::monotonic();
    let stored = paced("L", 40).await;
    let took = start.elapsed().as_secs_f64();
    assert!(
        stored
            .iter()
            .all(|(i, _)| *i == Ingested::Payment { points: 10 }),
        "{stored:?}"
    );
    // a full bucket holds one second's worth (5), refilled at 5/s: as many are leased, each to
    // its own caller, the rest left for a claim
    let handed: Vec<&str> = stored
        .iter()
        .filter_map(|(_, c)| c.as_ref().map(|c| c.transaction_id.as_str()))
        .collect();
    let most = 5.0 + took * 5.0 + 1.0;
    assert!(
        handed.len() >= 5 && handed.len() as f64 <= most,
        "{} of 40 leased in {took:.2} s (at most {most:.0}): {handed:?}",
        handed.len()
    );
    for (i, (_, c)) in stored.iter().enumerate() {
        if let Some(c) = c {
            assert_eq!(c.transaction_id, format!("L{i}"), "handed another's sync");
            assert_eq!(c.attempt, 1);
        }
    }
    let mut c = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    let leased: Vec<String> = sqlx::query_scalar(
        "SELECT transaction_id FROM outbox WHERE state = 'inflight' AND lease_owner = 'A' ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut sorted: Vec<&str> = handed.clone();
    sorted.sort_by_key(|t| t[1..].parse::<u32>().unwrap());
    assert_eq!(leased, sorted, "the rows leased are those handed");
    let transactions =
        transactions_that_wrote(&mut c, "payments WHERE transaction_id LIKE 'L%'").await;
    assert!(
        transactions * 3 <= 40,
        "40 callbacks 6 ms apart took {transactions} transactions: not grouped"
    );
    // another transaction holds the rate's row: the next group neither waits nor leases
    sqlx::query("BEGIN").execute(&mut c).await.unwrap();
    sqlx::query("SELECT tokens FROM rate_limit WHERE name = 'wechat' FOR UPDATE")
        .execute(&mut c)
        .await
        .unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), paced("H", 10))
        .await
        .expect("a group waited for the rate's row");
    assert!(
        held.iter()
            .all(|(i, c)| *i == Ingested::Payment { points: 10 } && c.is_none()),
        "{held:?}"
    );
    sqlx::query("COMMIT").execute(&mut c).await.unwrap();
    let backlog = s.backlog().await.unwrap();
    let n = handed.len() as i64;
    assert_eq!(
        (backlog.get("inflight"), backlog.get("pending")),
        (Some(&n), Some(&(50 - n))),
        "{backlog:?}"
    );
}

/// Callbacks arriving together are written in groups (one transaction for several), each exactly
/// as alone: every payment credited once, every duplicate seen as one, balances adding up; a
/// member another transaction holds stalls only its own callbacks, never the rest of its group
/// or lane; nothing is left mid-transaction.
#[tokio::test]
async fn concurrent_callbacks_are_grouped_each_stored_once_and_a_held_member_stalls_only_its_own() {
    use crate::contract::{ctx, payment, trusting};
    use pointsync::store::{Ingested, Lease};
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = PgStore::open(&db, &OpenOptions::default()).await.unwrap();
    let rules = std::sync::Arc::new(trusting());
    let mut holder = hold_member(&db, "held").await;
    // 12 members × 10 payments, each delivered twice at once; 5 payments of the held member
    let mut free = tokio::task::JoinSet::new();
    let mut held = tokio::task::JoinSet::new();
    for m in 0..12 {
        for i in 0..10 {
            for _ in 0..2 {
                let (s, rules) = (s.clone(), rules.clone());
                let p = payment(&format!("T{m}-{i}"), &format!("o{m}"), 10_000, "S1");
                free.spawn(async move {
                    let lease = Lease {
                        owner: "A",
                        lease_ms: 30_000,
                    };
                    s.ingest_leased(&p, &ctx(&rules), &lease).await.unwrap()
                });
            }
        }
    }
    for i in 0..5 {
        let (s, rules) = (s.clone(), rules.clone());
        let p = payment(&format!("H{i}"), "held", 10_000, "S1");
        held.spawn(async move { s.ingest(&p, &ctx(&rules)).await.unwrap() });
    }
    let (mut outcomes, mut leased) = (Vec::new(), 0);
    let all_free = async {
        while let Some(r) = free.join_next().await {
            let (stored, claimed) = r.unwrap();
            leased += usize::from(claimed.is_some());
            outcomes.push(stored);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), all_free)
        .await
        .expect("the held member stalled other members' callbacks");
    let payments = outcomes
        .iter()
        .filter(|o| matches!(o, Ingested::Payment { points: 100 }))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|o| **o == Ingested::Duplicate)
        .count();
    assert_eq!((payments, duplicates), (120, 120), "{outcomes:?}");
    assert!(
        !held.is_empty() && held.try_join_next().is_none(),
        "the held member waits"
    );
    // (payments are never updated here)
    let transactions =
        transactions_that_wrote(&mut holder, "payments WHERE openid <> 'held'").await;
    assert!(
        (1..100).contains(&transactions),
        "120 payments were written by {transactions} transactions: not grouped"
    );
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    while let Some(r) = held.join_next().await {
        assert_eq!(r.unwrap(), Ingested::Payment { points: 100 });
    }
    for m in 0..12 {
        let member = s.member(&format!("o{m}")).await.unwrap().unwrap();
        assert_eq!(member.balance, 1_000, "o{m}");
        assert_eq!(member.entries.len(), 10, "o{m}");
    }
    assert_eq!(s.member("held").await.unwrap().unwrap().balance, 500);
    let st = s.status().await.unwrap();
    // written alone or in a group, a new payment's sync is leased on receipt (no shared rate
    // here), once: every sync left inflight is one a caller was handed
    assert_eq!(leased, 120, "{leased} of 120 syncs leased on receipt");
    assert_eq!(
        st.syncs.get("inflight").copied().unwrap_or(0),
        leased as i64
    );
    assert_eq!(st.syncs.get("pending").copied(), Some(125 - leased as i64));
    assert_eq!(st.inbox.get("applied"), Some(&125));
    assert_no_transaction_left_open(&mut holder).await;
}

/// The lane of `openid`'s callbacks: its member lock key's hash modulo the 2 lanes of
/// [`by_member`] and [`Paced`].
fn lane_of(openid: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&format!("member:{openid}"), &mut h);
    std::hash::Hasher::finish(&h) % 2
}

/// `n` members whose callbacks share lane `lane`.
fn in_lane(lane: u64, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("o{i}"))
        .filter(|o| lane_of(o) == lane)
        .take(n)
        .collect()
}

/// `n` members whose callbacks share one lane, so callbacks about them sent at once make one
/// group.
fn one_lane(n: usize) -> Vec<String> {
    in_lane(lane_of("o0"), n)
}

/// A refund of 100-yuan payment `txid` naming member `openid`.
fn refund_by(openid: &str, txid: &str, refund_id: &str, amount: i64) -> pointsync::store::Incoming {
    use wechatpay::notify::Event;
    let mut r = crate::contract::refund(txid, refund_id, 10_000, amount);
    if let Event::MallRefund(r) = &mut r.event {
        r.openid = openid.into();
    }
    crate::contract::incoming(r.event)
}

/// Options under which a member's callbacks always go to their hash's lane (no commit wait: a
/// moderate pace would otherwise gather them in one lane, waiting for company), so callbacks sent
/// at once make groups.
fn by_member() -> OpenOptions {
    OpenOptions {
        commit_wait: Duration::ZERO,
        lanes: Some(2),
        ..OpenOptions::default()
    }
}

/// Ingests `callbacks` on `s` all at once: spawned in order on this one thread, they all reach
/// their lane before it takes any. Their outcomes, in order.
async fn ingest_at_once(
    s: &PgStore,
    rules: &std::sync::Arc<pointsync::rules::Rules>,
    callbacks: impl IntoIterator<Item = pointsync::store::Incoming>,
) -> Vec<pointsync::store::Ingested> {
    ingest_leased_at_once(s, rules, None, callbacks)
        .await
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

/// [`ingest_at_once`], each callback's sync asked for on receipt by `owner` (a 30 s lease) when
/// given. Their outcomes and the syncs handed, in order.
async fn ingest_leased_at_once(
    s: &PgStore,
    rules: &std::sync::Arc<pointsync::rules::Rules>,
    owner: Option<&'static str>,
    callbacks: impl IntoIterator<Item = pointsync::store::Incoming>,
) -> Vec<(
    pointsync::store::Ingested,
    Option<pointsync::store::Claimed>,
)> {
    use crate::contract::ctx;
    use pointsync::store::Lease;
    let tasks: Vec<_> = callbacks
        .into_iter()
        .map(|n| {
            let (s, rules) = (s.clone(), rules.clone());
            tokio::spawn(async move {
                match owner {
                    Some(owner) => {
                        let lease = Lease {
                            owner,
                            lease_ms: 30_000,
                        };
                        s.ingest_leased(&n, &ctx(&rules), &lease).await.unwrap()
                    }
                    None => (s.ingest(&n, &ctx(&rules)).await.unwrap(), None),
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// How many transactions, and how many statements within them, wrote the inbox rows `filter`
/// selects (a row's `xmin` is its transaction, its `cmin` the statement within it).
async fn inbox_writers(c: &mut sqlx::PgConnection, filter: &str) -> (i64, i64) {
    sqlx::query_as(&format!(
        "SELECT COUNT(DISTINCT xmin::TEXT), COUNT(DISTINCT (xmin::TEXT, cmin::TEXT)) FROM inbox WHERE {filter}"
    ))
    .fetch_one(c)
    .await
    .unwrap()
}

/// The same callbacks on two fresh databases: `grouped` written all at once (its lanes always the
/// members', no commit wait, so they make groups), `single` one by one.
struct GroupedAndSingle {
    grouped: PgStore,
    single: PgStore,
    grouped_db: Database,
    single_db: Database,
    /// What each callback of the group stored, on `grouped` and on `single`.
    together: Vec<pointsync::store::Ingested>,
    one_by_one: Vec<pointsync::store::Ingested>,
    _drop: (DropDatabase, DropDatabase),
}

impl GroupedAndSingle {
    /// Writes `before` one by one on both, then `group` (`None`: no server).
    async fn write(
        rules: pointsync::rules::Rules,
        before: &[pointsync::store::Incoming],
        group: Vec<pointsync::store::Incoming>,
    ) -> Option<Self> {
        use crate::contract::ctx;
        let ((g1, grouped_db), (g2, single_db)) =
            (fresh_database().await?, fresh_database().await?);
        let rules = std::sync::Arc::new(rules);
        let (grouped, single) = (
            PgStore::open(&grouped_db, &by_member()).await.unwrap(),
            PgStore::open(&single_db, &OpenOptions::default())
                .await
                .unwrap(),
        );
        for s in [&grouped, &single] {
            for n in before {
                s.ingest(n, &ctx(&rules)).await.unwrap();
            }
        }
        let mut one_by_one = Vec::new();
        for n in &group {
            one_by_one.push(single.ingest(n, &ctx(&rules)).await.unwrap());
        }
        let together = ingest_at_once(&grouped, &rules, group).await;
        Some(Self {
            grouped,
            single,
            grouped_db,
            single_db,
            together,
            one_by_one,
            _drop: (g1, g2),
        })
    }

    /// Both stores show `members` alike, and the same sync and inbox counts.
    async fn assert_alike(&self, members: &[String]) {
        assert_eq!(self.together, self.one_by_one);
        for openid in members {
            let (g, s) = (
                self.grouped.member(openid).await.unwrap(),
                self.single.member(openid).await.unwrap(),
            );
            assert_eq!(format!("{g:?}"), format!("{s:?}"), "{openid}");
        }
        let (g, s) = (
            self.grouped.status().await.unwrap(),
            self.single.status().await.unwrap(),
        );
        assert_eq!((g.syncs, g.inbox), (s.syncs, s.inbox));
    }
}

/// A group's callbacks are each decided on what the ones before them wrote, as when written one at
/// a time: an authorization before its member's payment, a second payment under the daily cap, a
/// refund of a payment of the same group, a duplicate, a refund whose member (its payment's, not
/// the one it names) another callback of the group pays, and a refund naming another member than
/// its payment of the same group. Sent together they make one group,
/// one transaction; they leave the same outcomes, balances, ledgers and counts as the same
/// callbacks written one by one on another database.
#[tokio::test]
async fn a_group_decides_each_callback_on_what_those_before_it_wrote() {
    use crate::contract::{auth, payment};
    use pointsync::rules::{Rules, UnknownAuthorization};
    let m = one_lane(7);
    let before = [
        auth(&m[4], true),
        payment("T5", &m[4], 10_000, "S1"),
        auth(&m[5], true),
    ];
    let t1 = payment("T1", &m[0], 10_000, "S1");
    let group = vec![
        auth(&m[0], true),
        t1.clone(),
        payment("T2", &m[0], 10_000, "S1"),
        refund_by(&m[0], "T1", "R1", 5_000),
        t1,
        payment("T3", &m[1], 10_000, "S1"),
        // names m[3], refunds m[4]'s payment, which the next one pays more to
        refund_by(&m[3], "T5", "R5", 10_000),
        payment("T6", &m[4], 10_000, "S1"),
        payment("T7", &m[2], 10_000, "S1"),
        auth(&m[1], true),
        payment("T8", &m[5], 10_000, "S1"),
        // names m[6], refunds the payment just before it
        refund_by(&m[6], "T8", "R8", 4_000),
    ];
    let rules = Rules {
        daily_cap: Some(150),
        unknown_authorization: UnknownAuthorization::Hold,
        ..Rules::default()
    };
    let Some(both) = GroupedAndSingle::write(rules, &before, group).await else {
        return;
    };
    both.assert_alike(&m).await;
    let grouped = &both.grouped;
    let mut c = sqlx::PgConnection::connect(&both.grouped_db.to_string())
        .await
        .unwrap();
    let (transactions, _) = inbox_writers(
        &mut c,
        &format!(
            "transaction_id NOT IN ('{}', '{}', 'T5') OR refund_id = 'R5'",
            m[4], m[5]
        ),
    )
    .await;
    assert_eq!(transactions, 1, "the callbacks were written as one group");
    let payer = grouped.member(&m[0]).await.unwrap().unwrap();
    assert_eq!(
        payer.entries.iter().map(|e| e.points).collect::<Vec<_>>(),
        [100, 50, -50]
    );
    let refunded = grouped.member(&m[4]).await.unwrap().unwrap();
    assert_eq!(
        refunded
            .entries
            .iter()
            .map(|e| (e.points, e.balance_after))
            .collect::<Vec<_>>(),
        [(100, 100), (-100, 0), (50, 50)]
    );
    let partly = grouped.member(&m[5]).await.unwrap().unwrap();
    assert_eq!(
        partly.balance, 60,
        "T8 credited 100, its refund of 40 % debited 40"
    );
    assert_no_transaction_left_open(&mut c).await;
}

/// A store on a fresh database whose callbacks may wait 400 ms for company, and 30 payments in the
/// second lane that set a fast pace (under 2.5 ms apart: each lane waits for company on its own).
struct Paced {
    s: PgStore,
    db: Database,
    rules: std::sync::Arc<pointsync::rules::Rules>,
    _guard: DropDatabase,
}

impl Paced {
    /// `None`: no server.
    async fn open() -> Option<Self> {
        let (guard, db) = fresh_database().await?;
        let opts = OpenOptions {
            commit_wait: Duration::from_millis(400),
            lanes: Some(2),
            ..OpenOptions::default()
        };
        Some(Self {
            s: PgStore::open(&db, &opts).await.unwrap(),
            db,
            rules: std::sync::Arc::new(crate::contract::trusting()),
            _guard: guard,
        })
    }

    /// Ingests a 100-yuan payment `txid` of `openid` in a task of its own. Spawned on the test's
    /// one thread, the tasks reach their lanes at its next await, in order.
    fn send(
        &self,
        txid: String,
        openid: &str,
    ) -> tokio::task::JoinHandle<pointsync::store::Ingested> {
        let n = crate::contract::payment(&txid, openid, 10_000, "S1");
        let (s, rules) = (self.s.clone(), self.rules.clone());
        tokio::spawn(async move { s.ingest(&n, &crate::contract::ctx(&rules)).await.unwrap() })
    }

    /// The 30 pace-setting payments, sent.
    fn set_pace(&self) -> Vec<tokio::task::JoinHandle<pointsync::store::Ingested>> {
        (in_lane(1, 30).iter().enumerate())
            .map(|(i, o)| self.send(format!("TW{i}"), o))
            .collect()
    }

    /// Awaits `tasks`, each a payment credited in full.
    async fn all_paid(tasks: Vec<tokio::task::JoinHandle<pointsync::store::Ingested>>) {
        for t in tasks {
            assert_eq!(
                t.await.unwrap(),
                pointsync::store::Ingested::Payment { points: 100 }
            );
        }
    }
}

/// Faster than a moderate pace (callbacks under 2.5 ms apart), a lane still waits for company
/// until its group's first callback has waited the commit wait. Thirty payments in the second lane
/// set the pace, and six in the first lane come with them; six more come 5 ms later, while the
/// first lane is writing or waiting. All twelve share one transaction, where a lane taking only
/// what was queued when it looked wrote the later six in a transaction of their own.
#[tokio::test]
async fn under_load_a_lane_waits_the_commit_wait_for_company() {
    let Some(p) = Paced::open().await else {
        return;
    };
    let first = in_lane(0, 12);
    let mut tasks = p.set_pace();
    tasks.extend((first[..6].iter().enumerate()).map(|(i, o)| p.send(format!("TL{i}"), o)));
    tokio::time::sleep(Duration::from_millis(5)).await;
    tasks.extend((first[6..].iter().enumerate()).map(|(i, o)| p.send(format!("TL{}", i + 6), o)));
    Paced::all_paid(tasks).await;
    let mut c = sqlx::PgConnection::connect(&p.db.to_string())
        .await
        .unwrap();
    let (transactions, _) = inbox_writers(&mut c, "transaction_id LIKE 'TL%'").await;
    assert_eq!(
        transactions, 1,
        "transactions writing the first lane's twelve"
    );
    assert_no_transaction_left_open(&mut c).await;
}

/// Under load, a callback whose member another transaction holds when its group is written waits
/// the commit wait once more and joins the lane's next group, instead of a transaction of its own.
/// Another connection holds the member of one of two payments sent together under a fast pace;
/// the other payment's group commits; the lock is let go and a third payment comes: the held
/// member's payment shares the third's transaction.
#[tokio::test]
async fn a_callback_whose_member_is_held_joins_the_next_group() {
    let Some(p) = Paced::open().await else {
        return;
    };
    let m = in_lane(0, 3);
    let mut holder = hold_member(&p.db, &m[0]).await;
    let mut tasks = p.set_pace();
    tasks.push(p.send("TH".into(), &m[0]));
    tasks.push(p.send("TX".into(), &m[1]));
    let mut c = sqlx::PgConnection::connect(&p.db.to_string())
        .await
        .unwrap();
    while inbox_writers(&mut c, "transaction_id = 'TX'").await.0 == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    tasks.push(p.send("TY".into(), &m[2]));
    Paced::all_paid(tasks).await;
    let (together, _) = inbox_writers(&mut c, "transaction_id IN ('TH', 'TY')").await;
    assert_eq!(
        together, 1,
        "transactions writing the held member's payment and the next"
    );
    let (apart, _) = inbox_writers(&mut c, "transaction_id IN ('TH', 'TX')").await;
    assert_eq!(
        apart, 2,
        "the held member's payment was not in its first group"
    );
    assert_no_transaction_left_open(&mut c).await;
}

/// A group's callbacks read together are written in one statement, each conditional on its own
/// inbox row: when another transaction takes one's key between the group's snapshot and its
/// write (here a trigger inserts it first), that one is a duplicate, its delivery counted, and it
/// leaves no payment, ledger entry, balance or sync; the others are stored in full.
#[tokio::test]
async fn a_key_taken_under_a_grouped_statement_is_a_duplicate_and_spares_the_others() {
    use crate::contract::{payment, trusting};
    use pointsync::store::Ingested;
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = PgStore::open(&db, &by_member()).await.unwrap();
    let mut c = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION race() RETURNS trigger AS $$
         BEGIN
           IF NEW.transaction_id = 'T-RACE' AND NEW.note IS DISTINCT FROM 'racer' THEN
             INSERT INTO inbox (event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at)
             VALUES (NEW.event_type, NEW.transaction_id, NEW.refund_id, 'EV-RACER', NEW.openid, NEW.resource, NEW.status, 'racer', NEW.received_at);
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql;
         CREATE TRIGGER race BEFORE INSERT ON inbox FOR EACH ROW EXECUTE FUNCTION race();",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let m = one_lane(4);
    let txids = ["T-A", "T-RACE", "T-B", "T-C"];
    let rules = std::sync::Arc::new(trusting());
    let callbacks = txids
        .iter()
        .zip(&m)
        .map(|(t, o)| payment(t, o, 10_000, "S1"));
    let outcomes = ingest_at_once(&s, &rules, callbacks).await;
    assert_eq!(
        outcomes,
        [
            Ingested::Payment { points: 100 },
            Ingested::Duplicate,
            Ingested::Payment { points: 100 },
            Ingested::Payment { points: 100 },
        ]
    );
    assert_eq!(
        inbox_writers(&mut c, "note IS DISTINCT FROM 'racer'").await,
        (1, 1),
        "the four were one group, written in one statement"
    );
    let per_payment: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT t, (SELECT COUNT(*) FROM payments WHERE transaction_id = t),
                (SELECT COUNT(*) FROM ledger WHERE transaction_id = t),
                (SELECT COUNT(*) FROM outbox WHERE transaction_id = t),
                (SELECT deliveries FROM inbox WHERE transaction_id = t)
         FROM UNNEST($1::TEXT[]) AS t ORDER BY t",
    )
    .bind(txids)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        per_payment,
        [
            ("T-A".into(), 1, 1, 1, 1),
            ("T-B".into(), 1, 1, 1, 1),
            ("T-C".into(), 1, 1, 1, 1),
            ("T-RACE".into(), 0, 0, 0, 2),
        ]
    );
    let mut balances = Vec::new();
    for o in &m {
        balances.push(s.member(o).await.unwrap().map_or(0, |v| v.balance));
    }
    assert_eq!(balances, [100, 0, 100, 100]);
    assert_no_transaction_left_open(&mut c).await;
}

/// Every kind of write a group's one statement makes — a refund of a stored payment (its refund
/// totals, a debit, a balance), a payment releasing a refund held for it, a plain payment, an
/// authorization — leaves the outcomes, balances, ledgers and counts the same callbacks leave
/// written one by one on another database.
#[tokio::test]
async fn a_grouped_statement_writes_refunds_releases_and_payments_as_one_by_one() {
    use crate::contract::{auth, payment, trusting};
    let m = one_lane(4);
    // T1 stored; T2's refund held, waiting for T2
    let before = [
        payment("T1", &m[0], 10_000, "S1"),
        refund_by(&m[1], "T2", "R2", 4_000),
    ];
    let group = vec![
        refund_by(&m[0], "T1", "R1", 5_000),
        payment("T2", &m[1], 10_000, "S1"),
        payment("T3", &m[2], 10_000, "S1"),
        auth(&m[3], true),
    ];
    let Some(both) = GroupedAndSingle::write(trusting(), &before, group).await else {
        return;
    };
    both.assert_alike(&m).await;
    let mut c = sqlx::PgConnection::connect(&both.grouped_db.to_string())
        .await
        .unwrap();
    assert_eq!(
        inbox_writers(
            &mut c,
            &format!(
                "refund_id = 'R1' OR transaction_id IN ('T2', 'T3', '{}')",
                m[3]
            )
        )
        .await,
        (1, 1),
        "the four were one group, written in one statement"
    );
    let mut balances = Vec::new();
    for o in &m[..3] {
        balances.push(both.grouped.member(o).await.unwrap().unwrap().balance);
    }
    assert_eq!(
        balances,
        [50, 60, 100],
        "half of T1 refunded; 40 % of T2 refunded on arrival"
    );
    // the rows themselves, but for ids and times
    let mut s1 = sqlx::PgConnection::connect(&both.single_db.to_string())
        .await
        .unwrap();
    for table in [
        "SELECT transaction_id, openid, amount, credited_points, refunded_amount, entitled_debit, not_credited FROM payments ORDER BY 1",
        "SELECT event_type, transaction_id, refund_id, openid, status, note, deliveries::BIGINT FROM inbox ORDER BY 1, 2, 3",
        "SELECT openid, kind, transaction_id, refund_id, points, balance_after, rule FROM ledger ORDER BY id",
        "SELECT transaction_id, method, path, payload, state FROM outbox ORDER BY 1",
    ] {
        let rows = async |c: &mut sqlx::PgConnection| {
            sqlx::query(&format!("SELECT row_to_json(t)::TEXT FROM ({table}) t"))
                .fetch_all(c)
                .await
                .unwrap()
                .iter()
                .map(|r| sqlx::Row::get::<String, _>(r, 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(rows(&mut c).await, rows(&mut s1).await, "{table}");
    }
    assert_no_transaction_left_open(&mut c).await;
}

/// A group's syncs are leased on receipt by the statement that writes them (no update after):
/// in the group's order, as many as the shared rate has tokens for, each its caller's first
/// attempt on the database's clock, the rest pending for a claim. A sync left parked under the
/// same key is replaced by the leased one with its owner and attempt, so that attempt's outcome
/// is recorded (the replacement once kept the old row's attempt count and no owner: the outcome
/// was fenced out and the row stayed in flight, its lease never to expire).
#[tokio::test]
async fn a_grouped_statement_leases_syncs_within_the_shared_rate_and_owns_a_parked_one_it_replaces()
{
    use crate::contract::{payment, trusting};
    use pointsync::store::{Ingested, SyncOutcome};
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    // a full bucket holds one second's worth: 2 tokens
    let opts = OpenOptions {
        rate_qps: 2.0,
        ..by_member()
    };
    let s = PgStore::open(&db, &opts).await.unwrap();
    let mut c = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (transaction_id, payload, state, attempts, due_at, created_at, last_error)
         VALUES ('P0', '{}', 'parked', 3, 0, 0, 'an old failure')",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let m = one_lane(4);
    let rules = std::sync::Arc::new(trusting());
    let group = (0..4).map(|i| payment(&format!("P{i}"), &m[i], 10_000, "S1"));
    let stored = ingest_leased_at_once(&s, &rules, Some("A"), group).await;
    assert!(
        stored
            .iter()
            .all(|(i, _)| *i == Ingested::Payment { points: 100 }),
        "{stored:?}"
    );
    let handed: Vec<(&str, i64)> = stored
        .iter()
        .filter_map(|(_, c)| c.as_ref().map(|c| (c.transaction_id.as_str(), c.attempt)))
        .collect();
    assert_eq!(handed, [("P0", 1), ("P1", 1)], "the first two, in order");
    // transaction id, state, owner, attempts, ms of lease left, last error
    type Sync = (
        String,
        String,
        Option<String>,
        i64,
        Option<i64>,
        Option<String>,
    );
    let rows: Vec<Sync> = sqlx::query_as(
        "SELECT transaction_id, state, lease_owner, attempts,
                    lease_until - (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT, last_error
             FROM outbox ORDER BY transaction_id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for (t, state, owner, attempts, left, error) in &rows {
        let leased = t == "P0" || t == "P1";
        assert_eq!(
            (state.as_str(), owner.as_deref(), *attempts, error),
            if leased {
                ("inflight", Some("A"), 1, &None)
            } else {
                ("pending", None, 0, &None)
            },
            "{t}"
        );
        assert!(
            left.is_some_and(|ms| (25_000..=30_000).contains(&ms)) == leased,
            "{t}: its lease ends {left:?} ms from the server's now"
        );
    }
    let tokens: f64 = sqlx::query_scalar("SELECT tokens FROM rate_limit WHERE name = 'wechat'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(tokens < 1.0, "both tokens spent: {tokens} left");
    // one statement wrote every inbox row and every sync, leased or not
    assert_eq!(
        inbox_writers(&mut c, "transaction_id LIKE 'P%'").await,
        (1, 1)
    );
    let same: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox o JOIN inbox i USING (transaction_id)
         WHERE o.xmin::TEXT = i.xmin::TEXT AND o.cmin::TEXT = i.cmin::TEXT",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(same, 4, "a sync was leased by a statement of its own");
    // the replaced row's attempt is recorded, and it is done
    let p0 = stored[0].1.as_ref().unwrap();
    assert!(s.complete(p0, "A", &SyncOutcome::Done, 0).await.unwrap());
    let backlog = s.backlog().await.unwrap();
    assert_eq!(
        (
            backlog.get("inflight"),
            backlog.get("pending"),
            backlog.get("parked")
        ),
        (Some(&1), Some(&2), None),
        "{backlog:?}"
    );
    assert_no_transaction_left_open(&mut c).await;
}

/// Callbacks written in groups look rows up through their keys: no statement of theirs scans a
/// whole table on every execution, even on plans made while the tables were empty. (A group's
/// snapshot statement once hashed the whole inbox each time: one sequential scan per group, its
/// cost growing with every payment ever stored.) A few scans while the tables are still tiny are
/// the planner's right choice, until autovacuum's statistics say otherwise.
#[tokio::test]
async fn grouped_callbacks_do_not_scan_a_whole_table_per_group() {
    use crate::contract::{ctx, payment, trusting};
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = PgStore::open(&db, &OpenOptions::default()).await.unwrap();
    let rules = std::sync::Arc::new(trusting());
    // rounds of callbacks sent at once on this one thread, so each lane takes them as groups
    let round = |r: usize| {
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let (s, rules) = (s.clone(), rules.clone());
                let p = payment(&format!("T{r}-{i}"), &format!("o{}", i % 12), 1_000, "S1");
                tokio::spawn(async move { s.ingest(&p, &ctx(&rules)).await.unwrap() })
            })
            .collect();
        async move {
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    let mut c = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    let scans = async |c: &mut sqlx::PgConnection| {
        // statistics reach the shared counters a moment after each backend goes idle
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT relname::TEXT, COALESCE(seq_scan, 0) FROM pg_stat_user_tables
             WHERE relname IN ('inbox', 'payments', 'members', 'ledger') ORDER BY 1",
        )
        .fetch_all(&mut *c)
        .await
        .unwrap();
        rows
    };
    // the first rounds, on empty tables, make the connections' plans
    round(0).await;
    round(1).await;
    let before = scans(&mut c).await;
    for r in 2..12 {
        round(r).await;
    }
    let after = scans(&mut c).await;
    let groups = transactions_that_wrote(
        &mut c,
        "payments WHERE transaction_id NOT LIKE 'T0-%' AND transaction_id NOT LIKE 'T1-%'",
    )
    .await;
    assert!(
        (20..200).contains(&groups),
        "240 payments in {groups} transactions: not grouped"
    );
    for ((table, b), (_, a)) in before.iter().zip(&after) {
        assert!(
            (a - b) * 2 < groups,
            "{table}: {} sequential scans for {groups} groups ({before:?} → {after:?})",
            a - b
        );
    }
    let st = s.status().await.unwrap();
    assert_eq!(st.inbox.get("applied"), Some(&288));
}

/// One callback PostgreSQL refuses (text holding a NUL) among callbacks written at once: it alone
/// fails; the group it fell in is rolled back and its other callbacks are written one by one.
#[tokio::test]
async fn a_callback_the_database_refuses_fails_alone_and_its_group_is_written_one_by_one() {
    use crate::contract::{ctx, payment, trusting};
    use pointsync::store::Ingested;
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = PgStore::open(&db, &OpenOptions::default()).await.unwrap();
    let rules = std::sync::Arc::new(trusting());
    let mut good = tokio::task::JoinSet::new();
    let mut bad = None;
    for i in 0..6 {
        for m in 0..8 {
            let (s2, rules2) = (s.clone(), rules.clone());
            let p = payment(&format!("T{m}-{i}"), &format!("o{m}"), 10_000, "S1");
            good.spawn(async move { s2.ingest(&p, &ctx(&rules2)).await.unwrap() });
            if (i, m) == (3, 3) {
                let (s2, rules2) = (s.clone(), rules.clone());
                let mut p = payment("BAD", "o3", 10_000, "S1");
                p.plaintext.push('\0');
                bad = Some(tokio::spawn(
                    async move { s2.ingest(&p, &ctx(&rules2)).await },
                ));
            }
        }
    }
    while let Some(r) = good.join_next().await {
        assert_eq!(r.unwrap(), Ingested::Payment { points: 100 });
    }
    let refused = bad.unwrap().await.unwrap();
    assert!(refused.is_err(), "{refused:?}");
    for m in 0..8 {
        let member = s.member(&format!("o{m}")).await.unwrap().unwrap();
        assert_eq!((member.balance, member.entries.len()), (600, 6), "o{m}");
    }
    let st = s.status().await.unwrap();
    assert_eq!(st.inbox.get("applied"), Some(&48));
    let mut c = sqlx::PgConnection::connect(&db.to_string()).await.unwrap();
    assert_no_transaction_left_open(&mut c).await;
}

/// A callback takes its member's lock with BEGIN, the openid written into the statement as an
/// escaped constant: the key is the same one a bound parameter gives (a holder of that lock holds
/// the callback back), and quotes or backslashes in an openid are data, never SQL.
#[tokio::test]
async fn the_member_lock_taken_with_begin_is_the_bound_key_whatever_the_openid_holds() {
    use crate::contract::{ctx, payment, trusting};
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = PgStore::open(&db, &OpenOptions::default()).await.unwrap();
    let openid = r"o'; DROP TABLE members; --\'\\x";
    let mut holder = hold_member(&db, openid).await;
    let s2 = s.clone();
    let ingest = tokio::spawn(async move {
        let rules = trusting();
        s2.ingest(&payment("T1", openid, 10_000, "S1"), &ctx(&rules))
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !ingest.is_finished(),
        "the callback waits for its member's lock"
    );
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    ingest.await.unwrap().unwrap();
    let m = s
        .member(openid)
        .await
        .unwrap()
        .expect("the member, openid as sent");
    assert_eq!(m.balance, 100);
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert_eq!(tables, 1);
}

/// A callback whose handler is dropped while its transaction waits for the member's lock (WeChat
/// hung up, the handler timed out) still commits once the lock is free, and leaves no connection
/// of the pool inside a transaction. (sqlx returned such a connection to the pool inside the
/// `BEGIN` it was cancelled in: later statements on it ran uncommitted, holding their locks, and
/// stalled every instance's rescuer.)
#[tokio::test]
async fn a_callback_dropped_while_waiting_for_its_member_commits_and_leaves_no_transaction_open() {
    use crate::contract::{ctx, payment, trusting};
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = PgStore::open(&db, &OpenOptions::default()).await.unwrap();
    let rules = trusting();
    let mut holder = hold_member(&db, "o1").await;
    for i in 0..4 {
        let p = payment(&format!("T{i}"), "o1", 10_000, "S1");
        let c = ctx(&rules);
        let dropped = tokio::time::timeout(Duration::from_millis(150), s.ingest(&p, &c)).await;
        assert!(dropped.is_err(), "the callback waits for its member");
    }
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let deadline = wechatpay::clock::monotonic() + Duration::from_secs(10);
    loop {
        let balance = s.member("o1").await.unwrap().map(|m| m.balance);
        if balance == Some(400) {
            break;
        }
        assert!(
            wechatpay::clock::monotonic() < deadline,
            "the dropped callbacks were stored on their own: balance {balance:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // what the pool holds is usable: writes through it commit, nothing is left mid-transaction
    s.adjust(
        &pointsync::store::Adjustment {
            openid: "o1".into(),
            points: 5,
            reference: "R1".into(),
            reason: "check".into(),
        },
        false,
        pointsync::clock::now_ms(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_no_transaction_left_open(&mut holder).await;
    assert_eq!(s.member("o1").await.unwrap().unwrap().balance, 405);
}

/// A sync leased in its callback's transaction spends a token of the instances' shared rate:
/// with none left it stays pending for a claim, and a callback never waits for the bucket's row
/// while another transaction holds it (it leaves the sync to a claim instead).
#[tokio::test]
async fn a_sync_leased_on_receipt_spends_the_shared_rate_and_never_waits_for_its_row() {
    use crate::contract::{ctx, payment, trusting};
    use pointsync::store::{IngestContext, Lease};
    let Some((_guard, db)) = fresh_database().await else {
        return;
    };
    let s = rated_store(&db, 2.0).await;
    let rules = trusting();
    let lease = Lease {
        owner: "A",
        lease_ms: 30_000,
    };
    let now = || IngestContext {
        now_ms: pointsync::clock::now_ms(),
        ..ctx(&rules)
    };
    let mut leased = Vec::new();
    for i in 0..3 {
        let p = payment(&format!("T{i}"), "o1", 1_000, "S1");
        let (_, c) = s.ingest_leased(&p, &now(), &lease).await.unwrap();
        leased.push(c.is_some());
    }
    // a full bucket holds one second's worth (2 tokens): the third waits for a claim
    assert_eq!(leased, [true, true, false]);
    let backlog = s.backlog().await.unwrap();
    assert_eq!(
        (backlog.get("inflight"), backlog.get("pending")),
        (Some(&2), Some(&1)),
        "{backlog:?}"
    );
    assert!(
        s.claim("B", pointsync::clock::now_ms(), 30_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "the leases spent the shared rate: nothing left for a claim yet"
    );
    // another transaction holds the bucket's row: the callback is stored at once, not leased
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut holder = hold_rate_row(&db).await;
    let started = wechatpay::clock::monotonic();
    let p = payment("T9", "o1", 1_000, "S1");
    let stored = tokio::time::timeout(Duration::from_secs(10), s.ingest_leased(&p, &now(), &lease))
        .await
        .expect("the callback does not wait for the bucket's row")
        .unwrap();
    assert_eq!(stored.1, None, "left to a claim");
    assert!(started.elapsed() < Duration::from_secs(5));
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    // the token left in the bucket is the claim's
    let claimed = s
        .claim("B", pointsync::clock::now_ms(), 30_000, 10)
        .await
        .unwrap();
    assert!(
        !claimed.is_empty(),
        "refilled since: the pending syncs are claimed"
    );
}

/// How many transactions wrote the rows of `rows` (`table WHERE …`): rows one transaction wrote
/// last share its id, `xmin`.
async fn transactions_that_wrote(c: &mut sqlx::PgConnection, rows: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(DISTINCT xmin::TEXT) FROM {rows}"))
        .fetch_one(c)
        .await
        .unwrap()
}
