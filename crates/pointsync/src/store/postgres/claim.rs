//! Claims on PostgreSQL: due outbox rows leased in one statement, with the instances' shared
//! rate's tokens taken in the same statement; and the same for the syncs a group of callbacks
//! just enqueued, inside the group's transaction.

use std::sync::LazyLock;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Executor, Postgres};

use super::DB_NOW_MS;
use crate::store::Claimed;

type R<T> = Result<T, sqlx::Error>;

/// Leases at most `limit_sql` pending rows matching `which`, oldest due first, on the database's
/// clock, which every instance shares.
fn lease_sql(which: &str, limit_sql: &str) -> String {
    format!(
        "UPDATE outbox SET state = 'inflight', lease_owner = $1, lease_until = {DB_NOW_MS} + $2, attempts = attempts + 1
         WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' AND {which}
                      ORDER BY due_at, id LIMIT {limit_sql} FOR UPDATE SKIP LOCKED)
         RETURNING id, transaction_id, method, path, payload, attempts, created_at, due_at"
    )
}

/// The lease of `which` (at most `limit` rows) taking the shared rate's tokens in the same
/// statement: a bucket refilled at `rate` on the database's clock (one second's burst at most),
/// read from the rate's row locked `lock`, as many rows leased as it holds whole tokens, the rest
/// written back. A row `SKIP LOCKED` skipped leases nothing and writes nothing back.
fn rated(which: &str, limit: &str, rate: &str, lock: &str) -> String {
    format!(
        "WITH bucket AS (
             SELECT LEAST(tokens + GREATEST({DB_NOW_MS} - at_ms, 0)::DOUBLE PRECISION / 1000.0 * {rate},
                          GREATEST({rate}, 1.0)) AS available,
                    {DB_NOW_MS} AS now
             FROM rate_limit WHERE name = 'wechat' {lock}
         ),
         claimed AS ({}),
         spent AS (
             UPDATE rate_limit SET tokens = (SELECT available FROM bucket) - (SELECT COUNT(*) FROM claimed),
                                   at_ms = (SELECT now FROM bucket)
             WHERE name = 'wechat' AND EXISTS (SELECT 1 FROM bucket)
         )
         SELECT * FROM claimed",
        lease_sql(
            which,
            &format!(
                "LEAST({limit}, GREATEST(COALESCE((SELECT floor(available)::BIGINT FROM bucket), 0), 0))"
            )
        )
    )
}

/// Due rows: due on the instance's clock (a skew only moves a retry a little).
const DUE: &str = "due_at <= $3";

/// The claim without a shared rate ($1 owner, $2 lease, $3 now, $4 limit).
static CLAIM: LazyLock<String> = LazyLock::new(|| lease_sql(DUE, "$4"));

/// The claim taking the shared rate's tokens in the same statement ($5 the rate); the rate's row
/// is waited for.
static CLAIM_RATED: LazyLock<String> = LazyLock::new(|| rated(DUE, "$4", "$5", "FOR UPDATE"));

/// The syncs of transactions `$3`, just enqueued by a group of callbacks.
const ENQUEUED: &str = "transaction_id = ANY($3)";

/// A group's lease ($1 owner, $2 lease, $3 the transaction ids).
static GROUP_LEASE: LazyLock<String> = LazyLock::new(|| lease_sql(ENQUEUED, "cardinality($3)"));

/// A group's lease taking the shared rate's tokens ($4 the rate); it never waits for the rate's
/// row: held by another transaction, no token is taken and the syncs stay pending.
static GROUP_LEASE_RATED: LazyLock<String> =
    LazyLock::new(|| rated(ENQUEUED, "cardinality($3)", "$4", "FOR UPDATE SKIP LOCKED"));

/// Leases, in the transaction `c` of the group that just enqueued them, the pending syncs of
/// `transaction_ids` (as many as the shared rate has tokens for now when `qps` > 0), as a
/// callback written alone leases its own: one statement for the group, the rate's row held from
/// here to the group's `COMMIT` only. Returns them claimed, by transaction id.
pub(super) async fn lease_group<'c, E>(
    c: E,
    owner: &str,
    lease_ms: i64,
    transaction_ids: &[&str],
    qps: f64,
) -> R<Vec<Claimed>>
where
    E: Executor<'c, Database = Postgres>,
{
    if transaction_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql: &str = if qps > 0.0 {
        &GROUP_LEASE_RATED
    } else {
        &GROUP_LEASE
    };
    let mut q = sqlx::query(sql)
        .bind(owner)
        .bind(lease_ms)
        .bind(transaction_ids);
    if qps > 0.0 {
        q = q.bind(qps);
    }
    let rows = q.fetch_all(c).await?;
    rows.into_iter()
        .map(|r| claimed(&r).map(|(_, c)| c))
        .collect()
}

/// A claimed row (`RETURNING id, transaction_id, method, path, payload, attempts, created_at,
/// due_at`) and its due time.
fn claimed(r: &PgRow) -> R<(i64, Claimed)> {
    Ok((
        r.try_get::<i64, _>(7)?,
        Claimed {
            id: r.try_get(0)?,
            transaction_id: r.try_get(1)?,
            method: r.try_get(2)?,
            path: r.try_get(3)?,
            payload: r.try_get(4)?,
            attempt: r.try_get(5)?,
            created_at: r.try_get(6)?,
        },
    ))
}

/// Claims due rows in one statement (one round trip, no explicit transaction); with a shared rate
/// (`qps` > 0) only as many as the instances' common token bucket holds now (refilled on the
/// database's clock, one second's burst at most), taken in the same statement, so all instances
/// together never exceed `qps`. The bucket row's lock serialises claimers; a row another claimer
/// took meanwhile fails the re-check of `state = 'pending'` and is skipped.
pub(super) async fn claim(
    pool: &PgPool,
    owner: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
    qps: f64,
) -> R<Vec<Claimed>> {
    let sql: &str = if qps > 0.0 { &CLAIM_RATED } else { &CLAIM };
    let mut q = sqlx::query(sql)
        .bind(owner)
        .bind(lease_ms)
        .bind(now_ms)
        .bind(limit);
    if qps > 0.0 {
        q = q.bind(qps);
    }
    let rows = q.fetch_all(pool).await?;
    let mut out = rows.iter().map(claimed).collect::<Result<Vec<_>, _>>()?;
    // RETURNING keeps no order: the oldest due first, as claimed
    out.sort_by_key(|(due, c)| (*due, c.id));
    Ok(out.into_iter().map(|(_, c)| c).collect())
}
