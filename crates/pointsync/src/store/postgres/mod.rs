//! The PostgreSQL store (sqlx): the storage contract on a server several instances can share.
//!
//! Each write is one transaction, except that callbacks arriving together under load share one
//! (`ingests.rs`). A callback's transaction first takes a transaction-scoped
//! advisory lock on its member, so two instances never compute a balance from the same snapshot;
//! exactly-once still rests on the unique constraints (the inbox row goes first, `ON CONFLICT DO
//! NOTHING`). Claims use `FOR UPDATE SKIP LOCKED`. A serialization failure or deadlock is retried
//! here (up to five times), never surfaced. Migrations run under a session advisory lock, so two
//! migrators never race. The URL's password never appears in errors (`Database`'s `Display`).
//!
//! `ingests.rs` stores callbacks (alone, or grouped in lanes), `write.rs` holds the writes
//! (snapshot, plan application, outbox), `batch.rs` the writes of a group's callbacks read together
//! in one statement, `claim.rs` the claims (on a pool of their own), `completions.rs` the batched
//! sync outcomes (on a pool of their own), `held.rs` the connection a lane or the outcome recorder
//! keeps between uses, `read.rs` the queries, `migrate.rs` the schema's versions, `testing.rs` the
//! unit tests' server.

mod batch;
mod claim;
mod completions;
mod group;
mod held;
mod ingests;
mod migrate;
mod read;
mod snapshot;
#[cfg(test)]
mod testing;
mod write;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, Row};

use super::{
    Adjusted, Adjustment, Audit, Claimed, Database, InboxView, Incoming, IngestContext, Ingested,
    LearnedAuthorization, Lease, LedgerItem, MemberSummary, MemberView, Migrated, Minute,
    NewParking, OpenOptions, ParkingEnqueued, ParkingView, StaleMember, Status, Store, StoreError,
    SyncOutcome,
};
use crate::domain::OutboxRow;
use migrate::{at_latest, migrate_pool, schema};

/// The database server's clock in Unix milliseconds: leases and the shared rate bucket are
/// measured on it, never on an instance's clock, which may be skewed or paused.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// A lease's renewal by its holder (`$1` the lease, `$2` the row, `$3` the owner, `$4` the
/// attempt). The state's test is written `(…) IS TRUE`, which no index answers: a plan made while
/// the outbox was small would otherwise look the row up through the state index, walking every
/// `inflight` entry, dead ones included, instead of by its key (as `completions::RECORD`).
static RENEW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE outbox SET lease_until = {DB_NOW_MS} + $1
         WHERE id = $2 AND (state = 'inflight') IS TRUE AND lease_owner = $3 AND attempts = $4"
    )
});

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Claims' own connection, opened with [`claim::PLANNER`] (the main pool when read-only).
    claims: PgPool,
    database: String,
    read_only: bool,
    /// The outgoing rate shared by all instances (0: not limited here).
    rate_qps: f64,
    /// Sync outcomes recorded in batches (`None` when read-only).
    completions: Option<completions::Completions>,
    /// Callbacks stored, grouped under load (`None` when read-only).
    ingests: Option<ingests::Ingests>,
    /// Whether the last claim took as many rows as it asked for (the next one then skips its
    /// check that a row is due: `claim.rs`).
    claims_full: Arc<AtomicBool>,
}

fn code(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A serialization failure or a deadlock: the transaction can simply run again.
fn retryable(e: &sqlx::Error) -> bool {
    matches!(code(e).as_deref(), Some("40001" | "40P01"))
}

fn classify(database: &str, what: &str, e: sqlx::Error) -> StoreError {
    let database = database.to_string();
    let c = code(&e);
    match (&e, c.as_deref()) {
        (
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_),
            _,
        ) => StoreError::Unavailable {
            database,
            source: Arc::new(e),
        },
        // 08: connection exceptions; 57P: the server shutting down; 28: authentication;
        // 3D000: no such database
        (_, Some(c)) if c.starts_with("08") || c.starts_with("57P") || c.starts_with("28") => {
            StoreError::Unavailable {
                database,
                source: Arc::new(e),
            }
        }
        (_, Some("3D000")) => StoreError::NotFound { database },
        (_, Some("25006")) => StoreError::ReadOnly { database },
        (_, Some("53100")) => StoreError::Io {
            database,
            source: Arc::new(e),
        },
        (_, Some("55P03")) => StoreError::Locked { database },
        _ => StoreError::Backend {
            database,
            what: what.to_string(),
            source: Arc::new(e),
        },
    }
}

fn url(db: &Database) -> Result<&str, StoreError> {
    match db {
        Database::Postgres(u) => Ok(u),
        Database::Sqlite(_) => Err(StoreError::Unavailable {
            database: db.to_string(),
            source: Arc::new(std::io::Error::other("not a PostgreSQL URL")),
        }),
    }
}

/// A pool of at most `max` connections to `db`, each with the server `settings` given (as
/// `-c name=value` at connection start).
async fn connect(
    db: &Database,
    timeout: Duration,
    max: u32,
    settings: &[(&str, &str)],
) -> Result<PgPool, StoreError> {
    let name = db.to_string();
    let opts = PgConnectOptions::from_str(url(db)?)
        .map_err(|e| classify(&name, "parsing", e))?
        .options(settings.iter().copied());
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(timeout)
        // sqlx pings every connection on release; a ping on every acquire as well would be one
        // more round trip per statement under load: only a connection idle for a while (which a
        // server restart may have cut) is tested before use
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= Duration::from_secs(1) {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(opts)
        .await
        .map_err(|e| classify(&name, "connecting", e))
}

/// Runs `write` again (up to five times, 5 ms more each time) while PostgreSQL reports a
/// serialization failure or a deadlock.
async fn retried<T, F, Fut>(mut write: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 0;
    loop {
        match write().await {
            Err(e) => match again(&e, &mut attempt) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(e),
            },
            done => return done,
        }
    }
}

/// [`retried`]'s rule: how long to wait before running again a write that failed with `e` for
/// the `attempt`-th time (counted here), or `None` when it must not run again.
fn again(e: &sqlx::Error, attempt: &mut u64) -> Option<Duration> {
    (retryable(e) && *attempt < 5).then(|| {
        *attempt += 1;
        Duration::from_millis(5 * *attempt)
    })
}

/// A write of the store's, [`retried`], its error named.
macro_rules! retrying {
    ($store:expr, $what:expr, $body:expr) => {{
        $store.writable()?;
        retried(|| $body).await.map_err($store.err($what))
    }};
}

impl PgStore {
    fn writable(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::Closed {
                database: self.database.clone(),
            });
        }
        Ok(())
    }

    /// Where callbacks are stored (a read-only store has none).
    fn ingests(&self) -> Result<&ingests::Ingests, StoreError> {
        self.writable()?;
        self.ingests.as_ref().ok_or_else(|| StoreError::Closed {
            database: self.database.clone(),
        })
    }

    fn err(&self, what: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        let what = what.to_string();
        move |e| classify(&self.database, &what, e)
    }

    /// Runs a transactional write in a task of its own, so a caller dropped mid-write (WeChat
    /// hung up, a handler timed out) never drops sqlx's future inside the transaction: the write
    /// commits or rolls back by itself, as on SQLite's writer thread. sqlx 0.8 puts a connection
    /// whose `BEGIN …` was cancelled back in the pool *inside* that transaction (its rollback
    /// guard counts only a transaction already begun): later statements on it would run
    /// uncommitted, holding their row and advisory locks.
    async fn detached<T, F>(&self, what: &str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        tokio::spawn(work)
            .await
            .unwrap_or_else(|e| Err(StoreError::unfinished(self.database.clone(), what, e)))
    }
}

impl Store for PgStore {
    async fn open(db: &Database, opts: &OpenOptions) -> Result<Self, StoreError> {
        let pool = connect(db, opts.busy_timeout, 16, &[]).await?;
        let database = db.to_string();
        migrate_pool(&pool, &database).await?;
        let recorder = connect(db, opts.busy_timeout, 1, &completions::PLANNER).await?;
        let claims = connect(db, opts.busy_timeout, 1, claim::PLANNER).await?;
        Ok(Self {
            claims,
            completions: Some(completions::Completions::start(recorder, database.clone())),
            ingests: Some(ingests::Ingests::start(
                pool.clone(),
                database.clone(),
                opts.rate_qps,
                opts.commit_wait,
                opts.lanes.unwrap_or_else(ingests::default_lanes),
            )),
            pool,
            database,
            read_only: false,
            rate_qps: opts.rate_qps,
            claims_full: Arc::default(),
        })
    }

    async fn open_read_only(db: &Database) -> Result<Self, StoreError> {
        let pool = connect(db, Duration::from_secs(5), 2, &[]).await?;
        let database = db.to_string();
        at_latest(&pool, &database).await?;
        Ok(Self {
            claims: pool.clone(),
            pool,
            database,
            read_only: true,
            rate_qps: 0.0,
            claims_full: Arc::default(),
            completions: None,
            ingests: None,
        })
    }

    async fn check(db: &Database) -> Result<String, StoreError> {
        let pool = connect(db, Duration::from_secs(5), 1, &[]).await?;
        let name = db.to_string();
        at_latest(&pool, &name).await?;
        let named = |e| classify(&name, "a test write", e);
        let mut tx = pool.begin().await.map_err(named)?;
        tx.execute("UPDATE health SET probed_at = probed_at WHERE id = 1")
            .await
            .map_err(named)?;
        tx.rollback().await.map_err(named)?;
        Ok(schema())
    }

    async fn migrate(db: &Database) -> Result<Migrated, StoreError> {
        let pool = connect(db, Duration::from_secs(5), 1, &[]).await?;
        let applied = migrate_pool(&pool, &db.to_string()).await?;
        Ok(Migrated {
            applied,
            version: schema(),
        })
    }

    async fn ingest(&self, n: &Incoming, ctx: &IngestContext<'_>) -> Result<Ingested, StoreError> {
        Ok(self.ingests()?.store(n, ctx, None).await?.0)
    }

    async fn ingest_leased(
        &self,
        n: &Incoming,
        ctx: &IngestContext<'_>,
        lease: &Lease<'_>,
    ) -> Result<(Ingested, Option<Claimed>), StoreError> {
        self.ingests()?
            .store(n, ctx, Some((lease.owner.to_string(), lease.lease_ms)))
            .await
    }

    async fn claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let busy = self.claims_full.load(Ordering::Relaxed);
        let rows = retrying!(
            self,
            "claiming syncs",
            claim::claim(
                &self.claims,
                owner,
                now_ms,
                lease_ms,
                limit,
                self.rate_qps,
                busy
            )
        )?;
        self.claims_full
            .store(limit > 0 && rows.len() as i64 == limit, Ordering::Relaxed);
        Ok(rows)
    }

    async fn complete(
        &self,
        c: &Claimed,
        owner: &str,
        outcome: &SyncOutcome,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.writable()?;
        match &self.completions {
            Some(batches) => batches.record(c, owner, outcome, now_ms).await,
            None => Err(StoreError::Closed {
                database: self.database.clone(),
            }),
        }
    }

    async fn renew(
        &self,
        c: &Claimed,
        owner: &str,
        _instance_now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        retrying!(self, "renewing a lease", async {
            let r = sqlx::query(&RENEW)
                .bind(lease_ms)
                .bind(c.id)
                .bind(owner)
                .bind(c.attempt)
                .execute(&self.pool)
                .await?;
            Ok::<_, sqlx::Error>(r.rows_affected() == 1)
        })
    }

    async fn release(&self, owner: &str) -> Result<u64, StoreError> {
        retrying!(self, "releasing leases", async {
            let r = sqlx::query(
                "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL WHERE state = 'inflight' AND lease_owner = $1",
            )
            .bind(owner)
            .execute(&self.pool)
            .await?;
            Ok::<_, sqlx::Error>(r.rows_affected())
        })
    }

    async fn rescue(&self, _instance_now_ms: i64) -> Result<u64, StoreError> {
        retrying!(self, "rescuing leases", async {
            let r = sqlx::query(&format!(
                "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL WHERE state = 'inflight' AND lease_until < {DB_NOW_MS}",
            ))
            .execute(&self.pool)
            .await?;
            Ok::<_, sqlx::Error>(r.rows_affected())
        })
    }

    async fn retry_parked(&self, ids: &[i64], now_ms: i64) -> Result<u64, StoreError> {
        retrying!(self, "re-queueing parked syncs", async {
            let r = if ids.is_empty() {
                sqlx::query(
                    "UPDATE outbox SET state = 'pending', due_at = $1 WHERE state = 'parked'",
                )
                .bind(now_ms)
                .execute(&self.pool)
                .await?
            } else {
                sqlx::query(
                    "UPDATE outbox SET state = 'pending', due_at = $1 WHERE state = 'parked' AND id = ANY($2)",
                )
                .bind(now_ms)
                .bind(ids)
                .execute(&self.pool)
                .await?
            };
            Ok::<_, sqlx::Error>(r.rows_affected())
        })
    }

    async fn adjust(
        &self,
        a: &Adjustment,
        allow_negative: bool,
        now_ms: i64,
    ) -> Result<Adjusted, StoreError> {
        let (me, a) = (self.clone(), a.clone());
        self.detached("adjusting a balance", async move {
            retrying!(
                me,
                "adjusting a balance",
                write::adjust(&me.pool, &a, allow_negative, now_ms)
            )
        })
        .await
    }

    async fn backlog(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        read::counts(
            &self.pool,
            "SELECT state, COUNT(*) FROM outbox WHERE state IN ('pending', 'inflight', 'parked', 'dead') GROUP BY state",
        )
        .await
        .map_err(self.err("reading the backlog"))
    }

    async fn status(&self) -> Result<Status, StoreError> {
        read::status(&self.pool)
            .await
            .map_err(self.err("reading the status"))
    }

    async fn member(&self, openid: &str) -> Result<Option<MemberView>, StoreError> {
        read::member(&self.pool, openid)
            .await
            .map_err(self.err("reading a member"))
    }

    async fn recent_callbacks(&self, limit: i64) -> Result<Vec<InboxView>, StoreError> {
        read::recent_callbacks(&self.pool, limit)
            .await
            .map_err(self.err("reading recent callbacks"))
    }

    async fn activity(&self, since_ms: i64) -> Result<Vec<Minute>, StoreError> {
        read::activity(&self.pool, since_ms)
            .await
            .map_err(self.err("reading activity"))
    }

    async fn audit(&self) -> Result<Audit, StoreError> {
        read::audit(&self.pool).await.map_err(self.err("auditing"))
    }

    async fn record_authorization(
        &self,
        a: &LearnedAuthorization,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        retrying!(self, "recording an authorization", async {
            sqlx::query(
                "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at, auth_state, auth_source, auth_learned_at)
                 VALUES ($1, $2, '', '', 0, $4, $3, 'query', $4)
                 ON CONFLICT (openid) DO UPDATE SET authorized = excluded.authorized, updated_at = excluded.updated_at,
                     auth_state = excluded.auth_state, auth_source = excluded.auth_source, auth_learned_at = excluded.auth_learned_at",
            )
            .bind(&a.openid)
            .bind(a.authorized.map(i64::from))
            .bind(&a.state)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map(|_| ())
        })
    }

    async fn member_summary(
        &self,
        openid: &str,
        now_ms: i64,
    ) -> Result<Option<MemberSummary>, StoreError> {
        read::member_summary(&self.pool, openid, crate::domain::china_day(now_ms))
            .await
            .map_err(self.err("reading a member"))
    }

    async fn ledger_page(
        &self,
        openid: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<LedgerItem>, StoreError> {
        read::ledger_page(&self.pool, openid, before, limit)
            .await
            .map_err(self.err("reading a ledger"))
    }

    async fn stale_members(
        &self,
        learned_before_ms: i64,
        after: &str,
        limit: i64,
    ) -> Result<Vec<StaleMember>, StoreError> {
        read::stale_members(&self.pool, learned_before_ms, after, limit)
            .await
            .map_err(self.err("listing members to reconcile"))
    }

    async fn enqueue_parking(
        &self,
        p: &NewParking,
        request: &OutboxRow,
    ) -> Result<ParkingEnqueued, StoreError> {
        let (me, p, request) = (self.clone(), p.clone(), request.clone());
        self.detached("storing a parking event", async move {
            retrying!(
                me,
                "storing a parking event",
                write::enqueue_parking(&me.pool, &p, &request)
            )
        })
        .await
    }

    async fn parking(&self, id: i64) -> Result<Option<ParkingView>, StoreError> {
        read::parking(&self.pool, id)
            .await
            .map_err(self.err("reading a parking event"))
    }

    async fn probe_write(&self, now_ms: i64) -> Result<(), StoreError> {
        retrying!(self, "probing writes", async {
            sqlx::query("UPDATE health SET probed_at = $1 WHERE id = 1")
                .bind(now_ms)
                .execute(&self.pool)
                .await
                .map(|_| ())
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .map(|r| {
                let _: Option<i32> = r.try_get(0).ok();
            })
            .map_err(self.err("ping"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_renewal_looks_its_row_up_by_key_however_small_the_outbox_was_when_planned() {
        let Some((_, pool, _drop)) = testing::migrated("the renewal's plan").await else {
            return;
        };
        // empty and never analysed: the state index's scan costs as little as the key's
        let plan = testing::generic_plan(
            &pool,
            &RENEW,
            "BIGINT, BIGINT, TEXT, BIGINT",
            "1, 2, 'a', 1",
        )
        .await;
        assert!(
            plan.contains("Index Scan using outbox_pkey on outbox") && !plan.contains("outbox_due"),
            "the row by its key:\n{plan}"
        );
        pool.close().await;
    }

    /// A store claims on a connection of its own opened with the claims' planner settings
    /// (`claim::PLANNER`); the pool everything else uses keeps PostgreSQL's defaults.
    #[tokio::test]
    async fn claims_run_on_a_connection_with_their_own_planner_settings() {
        let Some((db, _drop)) = testing::scratch("the store's pools").await else {
            return;
        };
        let s = PgStore::open(&db, &OpenOptions::default()).await.unwrap();
        let setting = |pool: PgPool, name: &'static str| async move {
            sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        assert_eq!(setting(s.claims.clone(), "enable_sort").await, "off");
        assert_eq!(
            setting(s.claims.clone(), "plan_cache_mode").await,
            "force_generic_plan"
        );
        assert_eq!(setting(s.pool.clone(), "enable_sort").await, "on");
        assert_eq!(setting(s.pool.clone(), "plan_cache_mode").await, "auto");
        s.claims.close().await;
        s.pool.close().await;
    }
}
