//! The SQLite store: WAL with `synchronous=FULL`, one writer connection on its own thread with
//! group commit, a busy timeout, migrations embedded.
//!
//! Writes (callbacks, claims, completions, rescues) are queued to the writer thread, which runs
//! every queued job in one `BEGIN IMMEDIATE` transaction — each job inside its own savepoint, so a
//! failing job rolls back alone — commits once (one fsync for the group), and only then answers
//! each caller. Nothing is acknowledged before it is durable, and a caller that goes away (WeChat
//! hung up) cannot leave the writer inside a transaction.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use wechatpay::businesscircle::PointsNotifyRequest;
use wechatpay::notify::{AuthType, Event, MallRefund, MallTransaction};

use crate::rules::{Authorization, Payment, Rules, refund_deduction};
use crate::store::{
    Adjusted, Adjustment, Audit, Claimed, Incoming, IngestContext, Ingested, LedgerEntry,
    MemberView, ParkedSync, Status, Store, StoreError, SyncOutcome,
};

/// Embedded migrations: (version, name, SQL), applied in order and recorded in `PRAGMA user_version`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "adjustments",
        include_str!("../migrations/sqlite/0002_adjustments.sql"),
    ),
];

/// The schema version the embedded migrations reach.
pub const SCHEMA: &str = "2 adjustments";

/// Jobs written in one group at most.
const MAX_GROUP: usize = 512;

/// The China-time day number of a Unix-ms instant (daily caps count in China time).
pub fn china_day(now_ms: i64) -> i64 {
    (now_ms / 1000 + 8 * 3600).div_euclid(86_400)
}

/// RFC 3339 in China time, as WeChat writes times.
pub fn china_time(now_ms: i64) -> String {
    wechatpay::clock::rfc3339_china(now_ms / 1000)
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Ingest(Box<Incoming>, Arc<Rules>, bool, i64, Reply<Ingested>),
    Claim(String, i64, i64, i64, Reply<Vec<Claimed>>),
    Complete(Claimed, String, SyncOutcome, i64, Reply<bool>),
    Release(String, Reply<u64>),
    Rescue(i64, Reply<u64>),
    RetryParked(Vec<i64>, i64, Reply<u64>),
    Adjust(Adjustment, bool, i64, Reply<Adjusted>),
}

/// SQLite storage. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    jobs: mpsc::UnboundedSender<Job>,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn open_connection(
    path: &Path,
    busy_timeout: Duration,
    read_only: bool,
) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let named = |e| StoreError::classify(e, path);
    let c = Connection::open_with_flags(path, flags).map_err(named)?;
    c.busy_timeout(busy_timeout)?;
    if !read_only {
        // SQLite quietly opens a file it cannot write read-only; say so now, not at the first
        // callback
        if c.is_readonly(rusqlite::DatabaseName::Main)? {
            return Err(StoreError::ReadOnly(path.display().to_string()));
        }
        c.pragma_update(None, "journal_mode", "WAL")
            .map_err(named)?;
    }
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", true)?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

fn migrate(c: &mut Connection) -> Result<Vec<String>, StoreError> {
    let current: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if *version > current {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
            applied.push(format!("{version} {name}"));
        }
    }
    Ok(applied)
}

impl SqliteStore {
    /// Opens (creating if missing) the database file, runs the embedded migrations and starts the
    /// writer thread.
    pub async fn open(path: &Path, busy_timeout: Duration) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let p2 = path.clone();
        let (writer, reader) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut w = open_connection(&p2, busy_timeout, false)?;
            migrate(&mut w).map_err(|e| named_error(e, &p2))?;
            let r = open_connection(&p2, busy_timeout, true)?;
            Ok((w, r))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        let (jobs, rx) = mpsc::unbounded_channel();
        let p3 = path.clone();
        std::thread::Builder::new()
            .name("pointsync-writer".into())
            .spawn(move || writer_loop(writer, rx, &p3))
            .map_err(|e| StoreError::Task(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            jobs,
            reader: Arc::new(Mutex::new(reader)),
            path,
        })
    }

    /// Opens the database for reading only (the `status` and `member` commands): no writer, no
    /// migrations, so a newer binary never changes the schema under a running service. Refuses a
    /// schema other than the one this binary knows. Writes fail with a clear error.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let p2 = path.clone();
        let reader = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            if !p2.exists() {
                return Err(StoreError::Task(format!("database {} does not exist", p2.display())));
            }
            let c = open_connection(&p2, Duration::from_secs(5), true)?;
            let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let latest = MIGRATIONS.last().map_or(0, |m| m.0);
            if version != latest {
                return Err(StoreError::Task(format!(
                    "database {} has schema version {version}, this pointsync knows {latest}: run `pointsync migrate`",
                    p2.display()
                )));
            }
            Ok(c)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        // no writer thread: the receiving end is dropped, so a write is refused at once
        let (jobs, _) = mpsc::unbounded_channel();
        Ok(Self {
            jobs,
            reader: Arc::new(Mutex::new(reader)),
            path,
        })
    }

    /// Runs the migrations (the `migrate` command); returns those applied now.
    pub async fn migrate(path: &Path) -> Result<Vec<String>, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut c = open_connection(&path, Duration::from_secs(5), false)?;
            migrate(&mut c).map_err(|e| named_error(e, &path))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(make(tx)).map_err(|_| {
            StoreError::Task(format!(
                "database {} is open for reading only here (or its writer has stopped)",
                self.path.display()
            ))
        })?;
        rx.await
            .map_err(|_| StoreError::Task("the writer thread dropped the job".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let c = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&c)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// The writer thread: takes every queued job, runs them in one transaction, commits, answers.
fn writer_loop(mut c: Connection, mut rx: mpsc::UnboundedReceiver<Job>, path: &Path) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        run_group(&mut c, group, path);
    }
}

/// A locked or read-only database named as such (with its file), any other error unchanged.
fn named_error(e: StoreError, path: &Path) -> StoreError {
    match e {
        StoreError::Db(e) => StoreError::classify(e, path),
        e => e,
    }
}

/// `Connection::execute` through the statement cache: hot statements are parsed once.
fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// `Connection::query_row` through the statement cache.
fn one<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

/// Sends a job's answer once its group has committed (or failed to).
type Answer = Box<dyn FnOnce(&Result<(), StoreError>) + Send>;

fn in_savepoint<T>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    exec(c, "SAVEPOINT job", [])?;
    match f(c) {
        Ok(v) => {
            exec(c, "RELEASE job", [])?;
            Ok(v)
        }
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

/// The same failure for another waiting caller (a `StoreError` is not `Clone`).
fn replicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::Locked(p) => StoreError::Locked(p.clone()),
        StoreError::ReadOnly(p) => StoreError::ReadOnly(p.clone()),
        StoreError::Io(p) => StoreError::Io(p.clone()),
        e => StoreError::Task(e.to_string()),
    }
}

/// A group-level failure (BEGIN or COMMIT) named precisely, with `what` failed in front of any
/// other database error.
fn group_error(e: rusqlite::Error, path: &Path, what: &str) -> StoreError {
    match StoreError::classify(e, path) {
        StoreError::Db(e) => StoreError::Task(format!("{what} on {}: {e}", path.display())),
        e => e,
    }
}

/// Runs `f` in its own savepoint, or fails as the group's BEGIN did.
fn attempt<T>(
    c: &Connection,
    begun: &Result<(), StoreError>,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match begun {
        Ok(()) => in_savepoint(c, f),
        Err(e) => Err(replicate(e)),
    }
}

/// Holds a job's result until the group's outcome is known: nothing is acknowledged before the
/// group is durable.
fn answer<T: Send + 'static>(r: Result<T, StoreError>, reply: Reply<T>, path: &Path) -> Answer {
    let r = r.map_err(|e| named_error(e, path));
    Box::new(move |committed| {
        let _ = reply.send(match committed {
            Ok(()) => r,
            Err(e) => Err(replicate(e)),
        });
    })
}

fn run_job(c: &Connection, job: Job, begun: &Result<(), StoreError>, path: &Path) -> Answer {
    match job {
        Job::Ingest(n, rules, partner_mode, now_ms, reply) => {
            let ctx = IngestContext {
                rules: &rules,
                partner_mode,
                now_ms,
            };
            answer(attempt(c, begun, |c| ingest(c, &n, &ctx)), reply, path)
        }
        Job::Claim(owner, now_ms, lease_ms, limit, reply) => answer(
            attempt(c, begun, |c| claim(c, &owner, now_ms, lease_ms, limit)),
            reply,
            path,
        ),
        Job::Complete(claimed, owner, outcome, now_ms, reply) => answer(
            attempt(c, begun, |c| {
                complete(c, &claimed, &owner, &outcome, now_ms)
            }),
            reply,
            path,
        ),
        Job::Release(owner, reply) => {
            answer(attempt(c, begun, |c| release(c, &owner)), reply, path)
        }
        Job::Rescue(now_ms, reply) => answer(attempt(c, begun, |c| rescue(c, now_ms)), reply, path),
        Job::Adjust(a, allow_negative, now_ms, reply) => answer(
            attempt(c, begun, |c| adjust(c, &a, allow_negative, now_ms)),
            reply,
            path,
        ),
        Job::RetryParked(ids, now_ms, reply) => answer(
            attempt(c, begun, |c| retry_parked(c, &ids, now_ms)),
            reply,
            path,
        ),
    }
}

fn run_group(c: &mut Connection, group: Vec<Job>, path: &Path) {
    let begun = exec(c, "BEGIN IMMEDIATE", [])
        .map(|_| ())
        .map_err(|e| group_error(e, path, "cannot begin a write transaction"));
    let answers: Vec<Answer> = group
        .into_iter()
        .map(|job| run_job(c, job, &begun, path))
        .collect();
    crate::crash::point("before_commit");
    let committed = begun.and_then(|()| {
        exec(c, "COMMIT", [])
            .map(|_| ())
            .map_err(|e| group_error(e, path, "commit failed"))
    });
    if committed.is_err() && !c.is_autocommit() {
        let _ = c.execute_batch("ROLLBACK");
    }
    for a in answers {
        a(&committed);
    }
}

fn release(c: &Connection, owner: &str) -> Result<u64, StoreError> {
    Ok(exec(
        c,
        "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL WHERE state = 'inflight' AND lease_owner = ?",
        params![owner],
    )? as u64)
}

fn rescue(c: &Connection, now_ms: i64) -> Result<u64, StoreError> {
    Ok(exec(
        c,
        "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL WHERE state = 'inflight' AND lease_until < ?",
        params![now_ms],
    )? as u64)
}

fn insert_inbox(
    c: &Connection,
    key: (&str, &str, &str),
    n: &Incoming,
    openid: &str,
    status: &str,
    note: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let (event_type, transaction_id, refund_id) = key;
    let inserted = exec(c,
        "INSERT INTO inbox (event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_type, transaction_id, refund_id) DO NOTHING",
        params![event_type, transaction_id, refund_id, n.notification_id, openid, n.plaintext, status, note, now_ms],
    )?;
    if inserted == 0 {
        exec(
            c,
            "UPDATE inbox SET deliveries = deliveries + 1 WHERE event_type = ? AND transaction_id = ? AND refund_id = ?",
            params![event_type, transaction_id, refund_id],
        )?;
    }
    Ok(inserted == 1)
}

fn member_state(c: &Connection, openid: &str) -> Result<(Authorization, i64), StoreError> {
    let row: Option<(Option<i64>, i64)> = one(
        c,
        "SELECT authorized, balance FROM members WHERE openid = ?",
        params![openid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?;
    Ok(match row {
        None => (Authorization::Unknown, 0),
        Some((Some(1), b)) => (Authorization::Authorized, b),
        Some((Some(_), b)) => (Authorization::NotAuthorized, b),
        Some((None, b)) => (Authorization::Unknown, b),
    })
}

fn set_balance(c: &Connection, openid: &str, balance: i64, now_ms: i64) -> Result<(), StoreError> {
    exec(c,
        "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at) VALUES (?, NULL, '', '', ?, ?)
         ON CONFLICT (openid) DO UPDATE SET balance = excluded.balance, updated_at = excluded.updated_at",
        params![openid, balance, now_ms],
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn insert_ledger(
    c: &Connection,
    openid: &str,
    kind: &str,
    transaction_id: &str,
    refund_id: &str,
    points: i64,
    balance_after: i64,
    rule: &Value,
    now_ms: i64,
) -> Result<(), StoreError> {
    exec(c,
        "INSERT INTO ledger (openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![openid, kind, transaction_id, refund_id, points, balance_after, china_day(now_ms), rule.to_string(), now_ms],
    )?;
    Ok(())
}

fn ingest(c: &Connection, n: &Incoming, ctx: &IngestContext<'_>) -> Result<Ingested, StoreError> {
    Ok(match &n.event {
        Event::MallTransaction(t) => ingest_payment(c, n, t, ctx)?,
        Event::MallRefund(r) => ingest_refund(c, n, r, ctx)?,
        Event::MallAuth(a) => {
            let detail = format!("{}:{}", a.code, a.auth_type);
            if insert_inbox(
                c,
                (n.event_type.as_str(), a.openid.as_str(), detail.as_str()),
                n,
                &a.openid,
                "applied",
                "",
                ctx.now_ms,
            )? {
                let authorized = i64::from(a.auth_type == AuthType::RegisteredAndAuthorizationMode);
                exec(c,
                    "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at) VALUES (?, ?, ?, ?, 0, ?)
                     ON CONFLICT (openid) DO UPDATE SET authorized = excluded.authorized, auth_type = excluded.auth_type,
                         code = excluded.code, updated_at = excluded.updated_at",
                    params![a.openid, authorized, a.auth_type.as_str(), a.code, ctx.now_ms],
                )?;
                Ingested::Authorization
            } else {
                Ingested::Duplicate
            }
        }
        _ => {
            if insert_inbox(
                c,
                (n.event_type.as_str(), n.notification_id.as_str(), ""),
                n,
                "",
                "ignored",
                "event type not handled",
                ctx.now_ms,
            )? {
                Ingested::Ignored
            } else {
                Ingested::Duplicate
            }
        }
    })
}

fn ingest_payment(
    c: &Connection,
    n: &Incoming,
    t: &MallTransaction,
    ctx: &IngestContext<'_>,
) -> Result<Ingested, StoreError> {
    let key = (n.event_type.as_str(), t.transaction_id.as_str(), "");
    let problem = if t.amount <= 0 {
        Some(format!("amount {} is not positive", t.amount))
    } else if t.transaction_id.is_empty() || t.openid.is_empty() || t.appid.is_empty() {
        Some("transaction_id, openid or appid is empty".to_string())
    } else {
        None
    };
    if let Some(p) = problem {
        return Ok(
            if insert_inbox(c, key, n, &t.openid, "rejected", &p, ctx.now_ms)? {
                Ingested::Rejected(p)
            } else {
                Ingested::Duplicate
            },
        );
    }
    if !insert_inbox(c, key, n, &t.openid, "applied", "", ctx.now_ms)? {
        return Ok(Ingested::Duplicate);
    }
    let (authorization, balance) = member_state(c, &t.openid)?;
    let credited_today: i64 = one(
        c,
        "SELECT COALESCE(SUM(points), 0) FROM ledger WHERE openid = ? AND day = ? AND kind = 'credit'",
        params![t.openid, china_day(ctx.now_ms)],
        |r| r.get(0),
    )?;
    let d = ctx.rules.decide(&Payment {
        amount_fen: t.amount,
        shop_number: &t.shop_number,
        authorization,
        credited_today,
    });
    let balance_after = balance + d.points;
    set_balance(c, &t.openid, balance_after, ctx.now_ms)?;
    insert_ledger(
        c,
        &t.openid,
        "credit",
        &t.transaction_id,
        "",
        d.points,
        balance_after,
        &d.explanation,
        ctx.now_ms,
    )?;
    exec(
        c,
        "INSERT INTO payments (transaction_id, openid, appid, mchid, shop_number, amount, credited_points, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            t.transaction_id,
            t.openid,
            t.appid,
            t.mchid,
            t.shop_number,
            t.amount,
            d.points,
            ctx.now_ms
        ],
    )?;
    let mut req = PointsNotifyRequest::new(
        &t.transaction_id,
        &t.appid,
        &t.openid,
        d.points > 0,
        d.points,
        china_time(ctx.now_ms),
    )
    .total_points(balance_after);
    if let Some(r) = &d.no_points_remarks {
        req = req.no_points_remarks(r);
    }
    if ctx.partner_mode {
        req = req.sub_mchid(&t.mchid);
    }
    let payload = serde_json::to_string(&req).unwrap_or_default();
    exec(
        c,
        "INSERT INTO outbox (transaction_id, payload, state, due_at, created_at) VALUES (?, ?, 'pending', ?, ?)",
        params![t.transaction_id, payload, ctx.now_ms, ctx.now_ms],
    )?;
    // refunds that arrived before this payment
    let held: Vec<(i64, String)> = {
        let mut st = c.prepare_cached("SELECT id, resource FROM inbox WHERE transaction_id = ? AND status = 'held' ORDER BY id")?;
        st.query_map(params![t.transaction_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (id, resource) in held {
        if let Ok(Event::MallRefund(r)) =
            Event::decode(wechatpay::notify::MALL_REFUND_SUCCESS, resource.as_bytes())
        {
            apply_refund(c, &r, ctx)?;
            exec(
                c,
                "UPDATE inbox SET status = 'applied', note = 'applied when its payment arrived' WHERE id = ?",
                params![id],
            )?;
        }
    }
    Ok(Ingested::Payment { points: d.points })
}

fn apply_refund(
    c: &Connection,
    r: &MallRefund,
    ctx: &IngestContext<'_>,
) -> Result<i64, StoreError> {
    let (openid, amount, credited, refunded, entitled_before): (String, i64, i64, i64, i64) = one(
        c,
        "SELECT openid, amount, credited_points, refunded_amount, entitled_debit FROM payments WHERE transaction_id = ?",
        params![r.transaction_id],
        |x| Ok((x.get(0)?, x.get(1)?, x.get(2)?, x.get(3)?, x.get(4)?)),
    )?;
    let entitled = refund_deduction(credited, amount, refunded, r.refund_amount, entitled_before);
    let (_, balance) = member_state(c, &openid)?;
    let debit = if ctx.rules.allow_negative_balance {
        entitled
    } else {
        entitled.min(balance.max(0))
    };
    let balance_after = balance - debit;
    let mut rule = json!({
        "rules": ctx.rules.version(), "reason": "refund", "credit": credited, "pay_amount": amount,
        "refunded_before": refunded, "refund_amount": r.refund_amount, "entitled": entitled, "debited": debit,
    });
    if debit < entitled {
        rule["shortfall"] = json!(entitled - debit);
    }
    if r.pay_amount != amount {
        rule["pay_amount_in_callback"] = json!(r.pay_amount);
    }
    set_balance(c, &openid, balance_after, ctx.now_ms)?;
    insert_ledger(
        c,
        &openid,
        "debit",
        &r.transaction_id,
        &r.refund_id,
        -debit,
        balance_after,
        &rule,
        ctx.now_ms,
    )?;
    exec(
        c,
        "UPDATE payments SET refunded_amount = MIN(amount, refunded_amount + ?), entitled_debit = entitled_debit + ? WHERE transaction_id = ?",
        params![r.refund_amount, entitled, r.transaction_id],
    )?;
    Ok(debit)
}

fn ingest_refund(
    c: &Connection,
    n: &Incoming,
    r: &MallRefund,
    ctx: &IngestContext<'_>,
) -> Result<Ingested, StoreError> {
    let key = (
        n.event_type.as_str(),
        r.transaction_id.as_str(),
        r.refund_id.as_str(),
    );
    if r.refund_amount <= 0 || r.refund_id.is_empty() || r.transaction_id.is_empty() {
        let p = format!(
            "refund_amount {} or empty refund_id/transaction_id",
            r.refund_amount
        );
        return Ok(
            if insert_inbox(c, key, n, &r.openid, "rejected", &p, ctx.now_ms)? {
                Ingested::Rejected(p)
            } else {
                Ingested::Duplicate
            },
        );
    }
    let known = one(
        c,
        "SELECT 1 FROM payments WHERE transaction_id = ?",
        params![r.transaction_id],
        |_| Ok(()),
    )
    .optional()?
    .is_some();
    if !insert_inbox(
        c,
        key,
        n,
        &r.openid,
        if known { "applied" } else { "held" },
        "",
        ctx.now_ms,
    )? {
        return Ok(Ingested::Duplicate);
    }
    if !known {
        return Ok(Ingested::Held);
    }
    Ok(Ingested::Refund {
        points: apply_refund(c, r, ctx)?,
    })
}

fn claim(
    c: &Connection,
    owner: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let mut st = c.prepare_cached(
        "UPDATE outbox SET state = 'inflight', lease_owner = ?, lease_until = ?, attempts = attempts + 1
         WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' AND due_at <= ? ORDER BY due_at, id LIMIT ?)
         RETURNING id, transaction_id, payload, attempts, created_at",
    )?;
    let rows = st.query_map(params![owner, now_ms + lease_ms, now_ms, limit], |r| {
        Ok(Claimed {
            id: r.get(0)?,
            transaction_id: r.get(1)?,
            payload: r.get(2)?,
            attempt: r.get(3)?,
            created_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn complete(
    c: &Connection,
    cl: &Claimed,
    owner: &str,
    outcome: &SyncOutcome,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let (state, due_at, error) = match outcome {
        SyncOutcome::Done => ("done", None, None),
        SyncOutcome::Retry { due_at, error } => ("pending", Some(*due_at), Some(error.as_str())),
        SyncOutcome::Parked { error } => ("parked", None, Some(error.as_str())),
        SyncOutcome::Dead { error } => ("dead", None, Some(error.as_str())),
    };
    let n = exec(c,
        "UPDATE outbox SET state = ?1, due_at = COALESCE(?2, due_at), last_error = COALESCE(?3, last_error),
             done_at = CASE WHEN ?1 = 'done' THEN ?4 ELSE done_at END, lease_owner = NULL, lease_until = NULL
         WHERE id = ?5 AND state = 'inflight' AND lease_owner = ?6 AND attempts = ?7",
        params![state, due_at, error, now_ms, cl.id, owner, cl.attempt],
    )?;
    Ok(n == 1)
}

fn retry_parked(c: &Connection, ids: &[i64], now_ms: i64) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(exec(
            c,
            "UPDATE outbox SET state = 'pending', due_at = ? WHERE state = 'parked'",
            params![now_ms],
        )? as u64);
    }
    let mut n = 0;
    for id in ids {
        n += exec(
            c,
            "UPDATE outbox SET state = 'pending', due_at = ? WHERE state = 'parked' AND id = ?",
            params![now_ms, id],
        )? as u64;
    }
    Ok(n)
}

fn adjust(
    c: &Connection,
    a: &Adjustment,
    allow_negative: bool,
    now_ms: i64,
) -> Result<Adjusted, StoreError> {
    let balance: Option<i64> = one(
        c,
        "SELECT balance FROM members WHERE openid = ?",
        params![a.openid],
        |r| r.get(0),
    )
    .optional()?;
    let Some(balance) = balance else {
        return Ok(Adjusted::UnknownMember);
    };
    let seen = one(
        c,
        "SELECT 1 FROM ledger WHERE kind = 'adjust' AND transaction_id = ?",
        params![a.reference],
        |_| Ok(()),
    )
    .optional()?;
    if seen.is_some() {
        return Ok(Adjusted::Duplicate { balance });
    }
    let after = balance + a.points;
    if after < 0 && a.points < 0 && !allow_negative {
        return Ok(Adjusted::WouldGoNegative { balance });
    }
    set_balance(c, &a.openid, after, now_ms)?;
    let rule = json!({"reason": "adjustment", "note": a.reason, "reference": a.reference});
    insert_ledger(
        c,
        &a.openid,
        "adjust",
        &a.reference,
        "",
        a.points,
        after,
        &rule,
        now_ms,
    )?;
    Ok(Adjusted::Applied { balance: after })
}

fn counts(
    c: &Connection,
    sql: &str,
) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Store for SqliteStore {
    async fn ingest(&self, n: &Incoming, ctx: &IngestContext<'_>) -> Result<Ingested, StoreError> {
        let rules = Arc::new(ctx.rules.clone());
        let (partner_mode, now_ms) = (ctx.partner_mode, ctx.now_ms);
        self.submit(|r| Job::Ingest(Box::new(n.clone()), rules, partner_mode, now_ms, r))
            .await
    }

    async fn claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.submit(|r| Job::Claim(owner.to_string(), now_ms, lease_ms, limit, r))
            .await
    }

    async fn complete(
        &self,
        c: &Claimed,
        owner: &str,
        outcome: &SyncOutcome,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.submit(|r| Job::Complete(c.clone(), owner.to_string(), outcome.clone(), now_ms, r))
            .await
    }

    async fn release(&self, owner: &str) -> Result<u64, StoreError> {
        self.submit(|r| Job::Release(owner.to_string(), r)).await
    }

    async fn rescue(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.submit(|r| Job::Rescue(now_ms, r)).await
    }

    async fn adjust(
        &self,
        a: &Adjustment,
        allow_negative: bool,
        now_ms: i64,
    ) -> Result<Adjusted, StoreError> {
        self.submit(|r| Job::Adjust(a.clone(), allow_negative, now_ms, r))
            .await
    }

    async fn retry_parked(&self, ids: &[i64], now_ms: i64) -> Result<u64, StoreError> {
        self.submit(|r| Job::RetryParked(ids.to_vec(), now_ms, r))
            .await
    }

    async fn backlog(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        // a range of the (state, due_at) index: proportional to the backlog, not the history
        self.read(|c| {
            counts(
                c,
                "SELECT state, COUNT(*) FROM outbox WHERE state IN ('pending', 'inflight', 'parked', 'dead') GROUP BY state",
            )
        })
        .await
    }

    async fn status(&self) -> Result<Status, StoreError> {
        self.read(|c| {
            let oldest_pending_at: Option<i64> =
                one(c, "SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'inflight')", [], |r| r.get(0))?;
            let mut st = c.prepare_cached(
                "SELECT id, transaction_id, state, attempts, last_error FROM outbox WHERE state IN ('parked', 'dead') ORDER BY id LIMIT 1000",
            )?;
            let parked = st
                .query_map([], |r| {
                    Ok(ParkedSync {
                        id: r.get(0)?,
                        transaction_id: r.get(1)?,
                        state: r.get(2)?,
                        attempts: r.get(3)?,
                        error: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(Status {
                syncs: counts(c, "SELECT state, COUNT(*) FROM outbox GROUP BY state")?,
                inbox: counts(c, "SELECT status, COUNT(*) FROM inbox GROUP BY status")?,
                oldest_pending_at,
                parked,
            })
        })
        .await
    }

    async fn member(&self, openid: &str) -> Result<Option<MemberView>, StoreError> {
        let openid = openid.to_string();
        self.read(move |c| {
            let m: Option<(Option<i64>, i64)> = one(c, "SELECT authorized, balance FROM members WHERE openid = ?", params![openid], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((authorized, balance)) = m else { return Ok(None) };
            let mut st = c.prepare_cached(
                "SELECT kind, transaction_id, refund_id, points, balance_after, rule, created_at FROM ledger WHERE openid = ? ORDER BY id",
            )?;
            let entries = st
                .query_map(params![openid], |r| {
                    let rule: String = r.get(5)?;
                    Ok(LedgerEntry {
                        kind: r.get(0)?,
                        transaction_id: r.get(1)?,
                        refund_id: r.get(2)?,
                        points: r.get(3)?,
                        balance_after: r.get(4)?,
                        rule: serde_json::from_str(&rule).unwrap_or(Value::String(rule)),
                        created_at: r.get(6)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(Some(MemberView {
                openid,
                authorized: authorized.map(|a| a == 1),
                balance,
                entries,
            }))
        })
        .await
    }

    async fn audit(&self) -> Result<Audit, StoreError> {
        self.read(|c| {
            let collect_strings = |sql: &str| -> Result<Vec<String>, StoreError> {
                let mut st = c.prepare(sql)?;
                let rows = st.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            };
            let mut st = c.prepare("SELECT transaction_id, points FROM ledger WHERE kind = 'credit'")?;
            let credits: std::collections::BTreeMap<String, i64> =
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            let (debits, points_deducted): (i64, i64) =
                one(c, "SELECT COUNT(*), COALESCE(-SUM(points), 0) FROM ledger WHERE kind = 'debit'", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let mut st = c.prepare("SELECT done_at - created_at FROM outbox WHERE state = 'done' ORDER BY 1")?;
            let sync_latencies_ms = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(Audit {
                points_issued: credits.values().sum(),
                credits,
                debits,
                points_deducted,
                sync_latencies_ms,
                unbalanced_members: collect_strings(
                    "SELECT m.openid FROM members m LEFT JOIN (SELECT openid, SUM(points) AS total FROM ledger GROUP BY openid) l
                     ON l.openid = m.openid WHERE m.balance != COALESCE(l.total, 0)",
                )?,
                payments_without_sync: collect_strings(
                    "SELECT p.transaction_id FROM payments p LEFT JOIN outbox o ON o.transaction_id = p.transaction_id WHERE o.id IS NULL",
                )?,
                held_refunds: one(c, "SELECT COUNT(*) FROM inbox WHERE status = 'held'", [], |r| r.get(0))?,
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| Ok(one(c, "SELECT 1", [], |r| r.get::<_, i64>(0)).map(|_| ())?))
            .await
    }
}
