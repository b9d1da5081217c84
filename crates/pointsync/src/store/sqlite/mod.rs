//! The SQLite store: WAL with `synchronous=FULL`, one writer connection on its own thread with
//! group commit, a busy timeout, migrations embedded.
//!
//! A group holding only lease bookkeeping (claims, completions, renewals, releases, rescues)
//! commits with `synchronous=NORMAL`: no fsync of its own, durable with the next full commit. A
//! process crash loses none of it (the WAL is written); a power loss may lose the last of it, which
//! at worst sends a stored sync again, byte-identical — what an expired lease does anyway. Every
//! group with anything else (callbacks, adjustments, parkings, authorizations) is `FULL`.
//!
//! Writes (callbacks, claims, completions, rescues) are queued to the writer thread, which runs
//! every queued job in one `BEGIN IMMEDIATE` transaction — each job inside its own savepoint, so a
//! failing job rolls back alone — commits once (one fsync for the group), and only then answers
//! each caller. Nothing is acknowledged before it is durable, and a caller that goes away (WeChat
//! hung up) cannot leave the writer inside a transaction.
//!
//! `writer.rs` holds the writer thread (groups, savepoints, answers), `write.rs` the jobs (snapshot
//! reads and plan application), `read.rs` the operator queries, `connection.rs` opening, migrating
//! and the read connections.

mod connection;
mod read;
mod reserve;
mod write;
mod writer;

pub(crate) use connection::classify;
use connection::{
    READERS, Readers, migrate_connection, open_connection, open_existing, open_reader,
};
use reserve::Reserve;
use writer::{
    CLAIMING, COMPLETING, Job, Queue, RELEASING, RENEWING, RESCUING, STORING_A_CALLBACK,
    writer_loop,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{
    Adjusted, Adjustment, Audit, Claimed, Database, Incoming, IngestContext, Ingested,
    LearnedAuthorization, Lease, LedgerItem, MemberSummary, MemberView, Migrated, NewParking,
    OpenOptions, ParkingEnqueued, ParkingView, StaleMember, Status, Store, StoreError, SyncOutcome,
};
use crate::domain::OutboxRow;

/// Embedded migrations: (version, name, SQL), applied in order and recorded in `PRAGMA user_version`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "adjustments",
        include_str!("../../../migrations/sqlite/0002_adjustments.sql"),
    ),
    (
        3,
        "outbox requests",
        include_str!("../../../migrations/sqlite/0003_outbox_requests.sql"),
    ),
    (
        4,
        "health",
        include_str!("../../../migrations/sqlite/0004_health.sql"),
    ),
    (
        5,
        "mall api",
        include_str!("../../../migrations/sqlite/0005_mall_api.sql"),
    ),
    (
        6,
        "daily cap index",
        include_str!("../../../migrations/sqlite/0006_daily_cap_index.sql"),
    ),
];

/// The schema version the embedded migrations reach.
pub fn schema() -> String {
    super::schema_of(MIGRATIONS)
}

fn latest() -> i64 {
    super::latest_of(MIGRATIONS)
}

/// SQLite storage. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    jobs: Queue,
    readers: Arc<Readers>,
    path: PathBuf,
    reserve: Arc<Reserve>,
    /// Write transactions committed since it opened.
    commits: Arc<AtomicU64>,
}

fn task_failed(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::unfinished(path.display().to_string(), "a database task", e)
}

fn sqlite_path(db: &Database) -> Result<&Path, StoreError> {
    db.sqlite_path().ok_or_else(|| StoreError::Unavailable {
        database: db.to_string(),
        source: Arc::new(std::io::Error::other("not an SQLite file")),
    })
}

impl SqliteStore {
    /// Opens (creating and migrating) the SQLite file at `path`: [`Store::open`] for a path.
    pub async fn open_path(path: &Path, busy_timeout: Duration) -> Result<Self, StoreError> {
        <Self as Store>::open(
            &Database::Sqlite(path.to_path_buf()),
            &OpenOptions {
                busy_timeout,
                ..OpenOptions::default()
            },
        )
        .await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write transactions committed since it opened: stored callbacks ÷ commits is how many
    /// shared one (group commit).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Stores a callback; given `lease` (owner, lease expiry), the sync it enqueues is leased.
    async fn ingest_with(
        &self,
        n: &Incoming,
        ctx: &IngestContext<'_>,
        lease: Option<(String, i64)>,
    ) -> Result<(Ingested, Option<Claimed>), StoreError> {
        self.reserve.check()?;
        let n = n.clone();
        let rules = Arc::new(ctx.rules.clone());
        let (partner_mode, now_ms) = (ctx.partner_mode, ctx.now_ms);
        self.submit(
            move |c| {
                let ctx = IngestContext {
                    rules: &rules,
                    partner_mode,
                    now_ms,
                };
                let lease = lease
                    .as_ref()
                    .map(|(owner, until)| (owner.as_str(), *until));
                write::ingest_leased(c, &n, &ctx, lease)
            },
            STORING_A_CALLBACK,
        )
        .await
    }

    async fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        what: &'static str,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::new(work, what, tx);
        self.jobs.send(job).map_err(|_| StoreError::Closed {
            database: self.path.display().to_string(),
        })?;
        rx.await.map_err(|e| task_failed(&self.path, e))?
    }

    async fn read<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let c = readers.pick();
            f(&c).map_err(|e| classify(e, &path, what))
        })
        .await
        .map_err(|e| task_failed(&self.path, e))?
    }
}

impl Store for SqliteStore {
    async fn open(db: &Database, opts: &OpenOptions) -> Result<Self, StoreError> {
        let path = sqlite_path(db)?.to_path_buf();
        let p2 = path.clone();
        let busy_timeout = opts.busy_timeout;
        let (writer, readers) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut w = connection::open_writer(&p2, busy_timeout)?;
            migrate_connection(&mut w, &p2)?;
            let readers = (0..READERS)
                .map(|_| open_reader(&p2, busy_timeout))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((w, readers))
        })
        .await
        .map_err(|e| task_failed(&path, e))??;
        let (jobs, rx) = std::sync::mpsc::channel();
        let p3 = path.clone();
        let wait = opts.commit_wait;
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let thread = std::thread::Builder::new()
            .name("pointsync-writer".into())
            .spawn(move || writer_loop(writer, rx, &p3, wait, &counted))
            .map_err(|e| task_failed(&path, e))?;
        Ok(Self {
            jobs: Queue::new(jobs, Some(thread.thread().clone())),
            readers: Arc::new(Readers::new(readers)),
            reserve: Arc::new(Reserve::new(&path, opts.min_free_bytes)),
            path,
            commits,
        })
    }

    async fn open_read_only(db: &Database) -> Result<Self, StoreError> {
        let path = sqlite_path(db)?.to_path_buf();
        let p2 = path.clone();
        let reader = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            open_existing(&p2, true)
        })
        .await
        .map_err(|e| task_failed(&path, e))??;
        // no writer thread: the receiving end is dropped, so a write is refused at once
        let (jobs, _) = std::sync::mpsc::channel();
        Ok(Self {
            jobs: Queue::new(jobs, None),
            readers: Arc::new(Readers::new(vec![reader])),
            reserve: Arc::new(Reserve::new(&path, 0)),
            path,
            commits: Arc::default(),
        })
    }

    async fn check(db: &Database) -> Result<String, StoreError> {
        let path = sqlite_path(db)?.to_path_buf();
        let p2 = path.clone();
        tokio::task::spawn_blocking(move || {
            let c = open_existing(&p2, false)?;
            c.execute_batch(
                "BEGIN IMMEDIATE; UPDATE health SET probed_at = probed_at WHERE id = 1; ROLLBACK",
            )
            .map_err(|e| classify(e, &p2, "a test write"))?;
            Ok(schema())
        })
        .await
        .map_err(|e| task_failed(&path, e))?
    }

    async fn migrate(db: &Database) -> Result<Migrated, StoreError> {
        let path = sqlite_path(db)?.to_path_buf();
        let p2 = path.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let mut c = open_connection(&p2, Duration::from_secs(5), false)?;
            migrate_connection(&mut c, &p2)
        })
        .await
        .map_err(|e| task_failed(&path, e))??;
        Ok(Migrated {
            applied,
            version: schema(),
        })
    }

    async fn ingest(&self, n: &Incoming, ctx: &IngestContext<'_>) -> Result<Ingested, StoreError> {
        Ok(self.ingest_with(n, ctx, None).await?.0)
    }

    async fn ingest_leased(
        &self,
        n: &Incoming,
        ctx: &IngestContext<'_>,
        lease: &Lease<'_>,
    ) -> Result<(Ingested, Option<Claimed>), StoreError> {
        // one machine, one writer: the instance's clock is the store's
        let until = ctx.now_ms + lease.lease_ms;
        self.ingest_with(n, ctx, Some((lease.owner.to_string(), until)))
            .await
    }

    async fn claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let owner = owner.to_string();
        self.submit(
            move |c| write::claim(c, &owner, now_ms, lease_ms, limit),
            CLAIMING,
        )
        .await
    }

    async fn complete(
        &self,
        cl: &Claimed,
        owner: &str,
        outcome: &SyncOutcome,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (cl, owner, outcome) = (cl.clone(), owner.to_string(), outcome.clone());
        self.submit(
            move |c| write::complete(c, &cl, &owner, &outcome, now_ms),
            COMPLETING,
        )
        .await
    }

    async fn renew(
        &self,
        cl: &Claimed,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let (cl, owner) = (cl.clone(), owner.to_string());
        // one machine, one writer: the instance's clock is the store's
        self.submit(
            move |c| write::renew(c, &cl, &owner, now_ms + lease_ms),
            RENEWING,
        )
        .await
    }

    async fn release(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_string();
        self.submit(move |c| write::release(c, &owner), RELEASING)
            .await
    }

    async fn rescue(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.submit(move |c| write::rescue(c, now_ms), RESCUING)
            .await
    }

    async fn adjust(
        &self,
        a: &Adjustment,
        allow_negative: bool,
        now_ms: i64,
    ) -> Result<Adjusted, StoreError> {
        let a = a.clone();
        self.submit(
            move |c| write::adjust(c, &a, allow_negative, now_ms),
            "adjusting a balance",
        )
        .await
    }

    async fn retry_parked(&self, ids: &[i64], now_ms: i64) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.submit(
            move |c| write::retry_parked(c, &ids, now_ms),
            "re-queueing parked syncs",
        )
        .await
    }

    async fn probe_write(&self, now_ms: i64) -> Result<(), StoreError> {
        self.reserve.check()?;
        self.submit(
            move |c| {
                write::exec(c, "UPDATE health SET probed_at = ? WHERE id = 1", [now_ms]).map(|_| ())
            },
            "probing writes",
        )
        .await
    }

    async fn backlog(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        self.read("reading the backlog", read::backlog).await
    }

    async fn status(&self) -> Result<Status, StoreError> {
        self.read("reading the status", read::status).await
    }

    async fn member(&self, openid: &str) -> Result<Option<MemberView>, StoreError> {
        let openid = openid.to_string();
        self.read("reading a member", move |c| read::member(c, openid))
            .await
    }

    async fn recent_callbacks(&self, limit: i64) -> Result<Vec<super::InboxView>, StoreError> {
        self.read("reading recent callbacks", move |c| {
            read::recent_callbacks(c, limit)
        })
        .await
    }

    async fn activity(&self, since_ms: i64) -> Result<Vec<super::Minute>, StoreError> {
        self.read("reading activity", move |c| read::activity(c, since_ms))
            .await
    }

    async fn audit(&self) -> Result<Audit, StoreError> {
        self.read("auditing", read::audit).await
    }

    async fn record_authorization(
        &self,
        a: &LearnedAuthorization,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let a = a.clone();
        self.submit(
            move |c| write::record_authorization(c, &a, now_ms),
            "recording an authorization",
        )
        .await
    }

    async fn member_summary(
        &self,
        openid: &str,
        now_ms: i64,
    ) -> Result<Option<MemberSummary>, StoreError> {
        let openid = openid.to_string();
        let day = crate::domain::china_day(now_ms);
        self.read("reading a member", move |c| {
            read::member_summary(c, &openid, day)
        })
        .await
    }

    async fn ledger_page(
        &self,
        openid: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<LedgerItem>, StoreError> {
        let openid = openid.to_string();
        self.read("reading a ledger", move |c| {
            read::ledger_page(c, &openid, before, limit)
        })
        .await
    }

    async fn stale_members(
        &self,
        learned_before_ms: i64,
        after: &str,
        limit: i64,
    ) -> Result<Vec<StaleMember>, StoreError> {
        let after = after.to_string();
        self.read("listing members to reconcile", move |c| {
            read::stale_members(c, learned_before_ms, &after, limit)
        })
        .await
    }

    async fn enqueue_parking(
        &self,
        p: &NewParking,
        request: &OutboxRow,
    ) -> Result<ParkingEnqueued, StoreError> {
        self.reserve.check()?;
        let (p, request) = (p.clone(), request.clone());
        self.submit(
            move |c| write::enqueue_parking(c, &p, &request),
            "storing a parking event",
        )
        .await
    }

    async fn parking(&self, id: i64) -> Result<Option<ParkingView>, StoreError> {
        self.read("reading a parking event", move |c| read::parking(c, id))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read("ping", |c| {
            write::one(c, "SELECT 1", [], |r| r.get::<_, i64>(0)).map(|_| ())
        })
        .await
    }
}

/// The plans SQLite chooses for the daily cap's sums: both read the covering index of migration 6
/// alone, not one table row per credit.
#[cfg(test)]
mod query_plans {
    use std::time::Duration;

    use super::connection::{migrate_connection, open_writer};

    /// The plan of `sql` (parameters: an openid, a day) on a migrated database file.
    fn plan(sql: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        let mut c = open_writer(&path, Duration::from_secs(1)).unwrap();
        migrate_connection(&mut c, &path).unwrap();
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = st
            .query_map(rusqlite::params!["o1", 20261204], |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_payments_daily_cap_sum_reads_the_covering_index_alone() {
        let p = plan(super::write::CREDITED_ON_DAY);
        assert!(p.contains("USING COVERING INDEX ledger_member_day"), "{p}");
    }

    #[test]
    fn the_member_summarys_credited_today_reads_the_covering_index_alone() {
        let p = plan(super::read::MEMBER_SUMMARY);
        assert!(p.contains("USING COVERING INDEX ledger_member_day"), "{p}");
    }
}
