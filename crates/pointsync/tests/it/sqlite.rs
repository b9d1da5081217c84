//! The SQLite backend: the contract suite on a real file, then what only SQLite has (the write
//! lock, read-only files, the I/O error of a file refusing writes, the in-place upgrade).

use std::time::Duration;

use pointsync::store::sqlite::SqliteStore;
use pointsync::store::{Database, Ingested, OpenOptions, Store};

use crate::contract::{Backend, T0, ctx, paced_payments, payment, slow_payments_wait_for_no_one};

/// Fresh SQLite files in a temporary folder.
pub struct Sqlite;

impl Backend for Sqlite {
    type S = SqliteStore;
    const LEASES_ON_RECEIPT: bool = true;
    async fn fresh() -> Option<(crate::contract::Keep, SqliteStore)> {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_path(&dir.path().join("p.db"), Duration::from_secs(5))
            .await
            .unwrap();
        Some((Box::new(dir), s))
    }
}

mod contract {
    crate::contract_suite!(super::Sqlite);
}

/// A fresh store on a file of its own, with the file's path (and the folder that holds it).
async fn on_file(busy_timeout: Duration) -> (tempfile::TempDir, std::path::PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let s = SqliteStore::open_path(&path, busy_timeout).await.unwrap();
    (dir, path, s)
}

/// Callbacks arriving closer together than the commit wait share commits (one fsync for several
/// at a moderate rate), each stored and answered after its commit; callbacks arriving further
/// apart — the first ones after a burst too — commit one by one at once, none waiting for company
/// that is not coming.
#[tokio::test]
async fn brisk_callbacks_share_commits_and_slow_ones_commit_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let wait = Duration::from_millis(500);
    let opts = OpenOptions {
        commit_wait: wait,
        ..OpenOptions::default()
    };
    let s = SqliteStore::open(&Database::Sqlite(dir.path().join("p.db")), &opts)
        .await
        .unwrap();
    let brisk = paced_payments(&s, "B", 60, Duration::from_millis(2)).await;
    assert!(
        brisk
            .iter()
            .all(|(i, _)| *i == Ingested::Payment { points: 10 }),
        "{brisk:?}"
    );
    let shared = s.commits();
    assert!(
        shared * 3 <= 60,
        "60 callbacks 2 ms apart took {shared} commits: fewer than three shared each"
    );
    slow_payments_wait_for_no_one(&s, "S", wait).await;
    assert_eq!(
        s.commits() - shared,
        3,
        "3 callbacks 700 ms apart, one commit each"
    );
    // every one of them is stored, with its sync
    let status = s.status().await.unwrap();
    assert_eq!(status.inbox.get("applied"), Some(&63), "{status:?}");
    assert_eq!(status.syncs.values().sum::<i64>(), 63, "{status:?}");
}

#[tokio::test]
async fn a_lock_held_too_long_names_the_database_and_loses_nothing() {
    let (_dir, path, s) = on_file(Duration::from_millis(300)).await;
    let rules = crate::contract::trusting();
    assert_eq!(
        s.ingest(&payment("L1", "o1", 1_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 10 }
    );
    // another process (here: another connection) takes the write lock and keeps it
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = s
        .ingest(&payment("L2", "o1", 2_000, "S1"), &ctx(&rules))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, pointsync::store::StoreError::Locked { .. }),
        "{err:?}"
    );
    assert!(
        text.contains(&path.display().to_string()) && text.contains("locked"),
        "{text}"
    );
    other.execute_batch("ROLLBACK").unwrap();
    // what was committed before is intact, and the retried callback (WeChat retries on 5xx) lands
    assert_eq!(
        s.ingest(&payment("L2", "o1", 2_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 20 }
    );
    let m = s.member("o1").await.unwrap().unwrap();
    assert_eq!((m.balance, m.entries.len()), (30, 2));
    let audit = s.audit().await.unwrap();
    assert!(audit.unbalanced_members.is_empty() && audit.payments_without_sync.is_empty());
}

#[tokio::test]
async fn a_read_only_database_is_refused_at_open_with_its_name_and_its_data_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let rules = crate::contract::trusting();
    {
        let s = SqliteStore::open_path(&path, Duration::from_secs(2))
            .await
            .unwrap();
        s.ingest(&payment("R1", "o1", 5_000, "S1"), &ctx(&rules))
            .await
            .unwrap();
    }
    // the writer thread checkpoints nothing on its own; make sure the -wal content is in the file
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let guard = crate::harness::make_read_only(&path);
    let err = SqliteStore::open_path(&path, Duration::from_secs(2))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, pointsync::store::StoreError::ReadOnly { .. }),
        "{err:?}"
    );
    assert!(
        text.contains(&path.display().to_string()) && text.contains("read-only"),
        "{text}"
    );
    drop(guard);
    let s = SqliteStore::open_path(&path, Duration::from_secs(2))
        .await
        .unwrap();
    let m = s.member("o1").await.unwrap().unwrap();
    assert_eq!(m.balance, 50);
}

#[tokio::test]
async fn a_version_1_database_upgrades_in_place_keeping_its_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(include_str!("../../migrations/sqlite/0001_init.sql"))
            .unwrap();
        c.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at) VALUES ('o9', 1, '', '', 42, 0);
             INSERT INTO ledger (openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at)
             VALUES ('o9', 'credit', 'T9', '', 42, 42, 0, '{}', 0);
             INSERT INTO outbox (transaction_id, payload, state, due_at, created_at)
             VALUES ('T9', '{\"transaction_id\":\"T9\"}', 'pending', 0, 0);",
        )
        .unwrap();
    }
    let s = SqliteStore::open_path(&path, Duration::from_secs(2))
        .await
        .unwrap();
    let m = s.member("o9").await.unwrap().unwrap();
    assert_eq!((m.balance, m.entries.len()), (42, 1));
    let a = pointsync::store::Adjustment {
        openid: "o9".into(),
        points: -2,
        reference: "X".into(),
        reason: String::new(),
    };
    assert_eq!(
        s.adjust(&a, false, T0).await.unwrap(),
        pointsync::store::Adjusted::Applied { balance: 40 }
    );
    // a sync enqueued by version 1 (body only) is sent as the points sync it was
    let c = s.claim("w", T0, 1_000, 10).await.unwrap();
    assert_eq!(
        (
            c[0].method.as_str(),
            c[0].path.as_str(),
            c[0].payload.as_str()
        ),
        (
            "POST",
            "/v3/businesscircle/points/notify",
            r#"{"transaction_id":"T9"}"#
        )
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 6);
}

#[tokio::test]
async fn a_write_error_names_the_database_and_the_store_recovers() {
    let (d, s) = Sqlite::fresh().await.unwrap();
    let d = d.downcast::<tempfile::TempDir>().unwrap();
    let rules = crate::contract::trusting();
    s.ingest(&payment("W1", "o1", 1_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    let path = d.path().join("p.db");
    let guard = crate::harness::make_read_only(&path.with_extension("db-wal"));
    let err = s
        .ingest(&payment("W2", "o1", 2_000, "S1"), &ctx(&rules))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, pointsync::store::StoreError::Io { .. }),
        "{err:?}"
    );
    assert!(
        text.contains(&path.display().to_string()) && text.contains("I/O"),
        "{text}"
    );
    drop(guard);
    assert_eq!(
        s.ingest(&payment("W2", "o1", 2_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 20 }
    );
    assert_eq!(s.member("o1").await.unwrap().unwrap().balance, 30);
}

#[tokio::test]
async fn a_full_disk_refuses_writes_and_once_freed_the_wal_is_truncated_and_writes_land() {
    let Some(fs) = crate::harness::Tmpfs::mount("16m") else {
        return;
    };
    let path = fs.path().join("p.db");
    let s = SqliteStore::open_path(&path, Duration::from_secs(2))
        .await
        .unwrap();
    let rules = crate::contract::trusting();
    for i in 0..50 {
        s.ingest(&payment(&format!("A{i}"), "o1", 1_000, "S1"), &ctx(&rules))
            .await
            .unwrap();
    }
    // no reserve here: the disk fills completely and SQLite itself refuses
    fs.fill(0);
    let mut refused = 0;
    for i in 0..200 {
        if let Err(e) = s
            .ingest(&payment(&format!("B{i}"), "o1", 1_000, "S1"), &ctx(&rules))
            .await
        {
            assert_eq!(e.cause(), "io", "{e}");
            refused += 1;
        }
    }
    assert!(refused > 0, "a full disk refuses writes");
    fs.free();
    // writes land again, and the WAL is checkpointed and truncated
    let after = s
        .ingest(&payment("AFTER", "o1", 1_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    assert_eq!(after, Ingested::Payment { points: 10 });
    let wal = path.with_extension("db-wal");
    let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    // the writer truncates right after answering the first write that lands
    crate::harness::wait_for("the WAL to be truncated", Duration::from_secs(5), || {
        size() < 64 * 1024
    })
    .await;
    // nothing acknowledged was lost
    let audit = s.audit().await.unwrap();
    for i in 0..50 {
        assert!(audit.credits.contains_key(&format!("A{i}")));
    }
    assert!(audit.credits.contains_key("AFTER"));
}

/// The commits in an SQLite WAL file: the frames of its current generation (their salts are the
/// header's) that end a transaction (their header gives the database's size after the commit).
fn wal_commits(db: &std::path::Path) -> usize {
    let wal = std::fs::read(format!("{}-wal", db.display())).unwrap();
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let page = be(&wal[8..12]) as usize;
    let salts = &wal[16..24];
    wal[32..]
        .chunks_exact(24 + page)
        .take_while(|f| &f[8..16] == salts)
        .filter(|f| be(&f[4..8]) != 0)
        .count()
}

#[tokio::test]
async fn a_finished_sends_outcome_waits_to_share_the_next_callbacks_commit() {
    use pointsync::store::{Lease, SyncOutcome};
    let (_dir, path, s) = on_file(Duration::from_secs(5)).await;
    let rules = crate::contract::trusting();
    let lease = Lease {
        owner: "A",
        lease_ms: 600_000,
    };
    let mut leased = Vec::new();
    for i in 0..10 {
        let p = payment(&format!("W{i}"), "o1", 1_000, "S1");
        let (_, c) = s.ingest_leased(&p, &ctx(&rules), &lease).await.unwrap();
        leased.push(c.expect("leased on receipt"));
    }
    let before = wal_commits(&path);
    for (i, c) in leased.iter().enumerate() {
        // the outcome is queued; a callback comes a millisecond later, after the writer has
        // taken the outcome
        let mut done = std::pin::pin!(s.complete(c, "A", &SyncOutcome::Done, T0 + 1));
        let queued = std::future::poll_fn(|cx| std::task::Poll::Ready(done.as_mut().poll(cx)));
        assert!(queued.await.is_pending(), "answered only after a commit");
        tokio::time::sleep(Duration::from_millis(1)).await;
        let p = payment(&format!("X{i}"), "o2", 1_000, "S1");
        assert_eq!(
            s.ingest(&p, &ctx(&rules)).await.unwrap(),
            Ingested::Payment { points: 10 }
        );
        assert!(done.await.unwrap(), "the lease was held");
    }
    let commits = wal_commits(&path) - before;
    // without the wait each outcome would commit alone: 20 commits; a slow machine may split a
    // pair now and then
    assert!(
        (10..=12).contains(&commits),
        "10 outcomes and 10 callbacks took {commits} commits"
    );
    // alone, an outcome commits after waiting in vain, and is seen by the readers
    let p = payment("Y", "o3", 1_000, "S1");
    let (_, c) = s.ingest_leased(&p, &ctx(&rules), &lease).await.unwrap();
    let before = wal_commits(&path);
    assert!(
        s.complete(&c.unwrap(), "A", &SyncOutcome::Done, T0 + 2)
            .await
            .unwrap()
    );
    assert_eq!(wal_commits(&path), before + 1);
    let status = s.status().await.unwrap();
    assert_eq!(
        (status.syncs.get("done"), status.syncs.get("pending")),
        (Some(&11), Some(&10))
    );
}

#[tokio::test]
async fn a_callback_failing_midway_leaves_nothing_alone_or_among_others() {
    let (_dir, path, s) = on_file(Duration::from_secs(5)).await;
    let rules = crate::contract::trusting();
    // the outbox refuses one transaction's sync: its callback fails after its payment, ledger and
    // balance are written
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox WHEN NEW.transaction_id = 'BAD'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        .unwrap();
    let bad = payment("BAD", "o1", 5_000, "S1");
    // alone: the only job of its group
    let err = s.ingest(&bad, &ctx(&rules)).await.unwrap_err();
    assert!(err.to_string().contains("refused by the test"), "{err}");
    assert!(
        s.member("o1").await.unwrap().is_none(),
        "nothing of it kept"
    );
    // among others written at once: it alone fails
    let others: Vec<_> = (0..20)
        .map(|i| payment(&format!("G{i}"), "o1", 1_000, "S1"))
        .collect();
    let bad_ctx = ctx(&rules);
    let (bad_again, stored) = tokio::join!(s.ingest(&bad, &bad_ctx), async {
        let mut set = tokio::task::JoinSet::new();
        for p in others {
            let s = s.clone();
            let rules = rules.clone();
            set.spawn(async move { s.ingest(&p, &ctx(&rules)).await });
        }
        set.join_all().await
    });
    assert!(bad_again.is_err());
    assert!(
        stored
            .iter()
            .all(|r| matches!(r, Ok(Ingested::Payment { points: 10 })))
    );
    let m = s.member("o1").await.unwrap().unwrap();
    assert_eq!((m.balance, m.entries.len()), (200, 20));
    let audit = s.audit().await.unwrap();
    assert!(audit.unbalanced_members.is_empty() && audit.payments_without_sync.is_empty());
    // the store goes on: the next callback is written
    assert_eq!(
        s.ingest(&payment("AFTER", "o2", 1_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 10 }
    );
}
