//! Claims on PostgreSQL: due outbox rows leased in one statement, with the instances' shared
//! rate's tokens taken in the same statement. (A callback's sync leased on receipt is leased by
//! the statement that writes it: `write.rs`, `batch.rs`.)

use std::sync::LazyLock;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use super::DB_NOW_MS;
use crate::store::Claimed;

type R<T> = Result<T, sqlx::Error>;

/// The claims' pool's planner settings, one plan per statement made once on a warm connection:
/// the outcome recorder's (no sequential, bitmap, hash or merge plan, `completions::PLANNER`) and
/// no sort of every due row, so whatever the outbox held when the plan was made, a claim walks
/// the state index's `pending` entries in due order and stops at its limit (sorting by id only
/// rows due at the same millisecond). Left to itself, PostgreSQL planned each claim again (~0.15
/// ms, 9 µs per payment behind two instances at the maximum, BENCHMARKS.md, sixteenth session);
/// its plan kept from an empty outbox sorts every due row on each claim.
pub(super) const PLANNER: &[(&str, &str)] = &{
    let [a, b, c, d] = super::completions::PLANNER;
    [
        a,
        b,
        c,
        d,
        ("enable_sort", "off"),
        ("plan_cache_mode", "force_generic_plan"),
    ]
};

/// Leases at most `limit_sql` pending rows matching `which`, oldest due first, on the database's
/// clock, which every instance shares. The rows are chosen once, as an array (an init plan), and
/// then looked up by key: written `id IN (SELECT … LIMIT …)`, a plan made after the outbox was
/// analysed while empty joined every outbox row to the subquery, run again for each, and each run
/// skipped the rows the statement had already leased and took the next: one claim leased every due
/// row, far past its limit, and the dispatcher sent only as many as it had slots for (the rest
/// waited out their leases, again and again; BENCHMARKS.md, sixteenth session).
fn lease_sql(which: &str, limit_sql: &str) -> String {
    format!(
        "UPDATE outbox SET state = 'inflight', lease_owner = $1, lease_until = {DB_NOW_MS} + $2, attempts = attempts + 1
         WHERE id = ANY(ARRAY(SELECT id FROM outbox WHERE state = 'pending' AND {which}
                              ORDER BY due_at, id LIMIT {limit_sql} FOR UPDATE SKIP LOCKED))
         RETURNING id, transaction_id, method, path, payload, attempts, created_at, due_at"
    )
}

/// The lease of `which` (at most `limit` rows) taking the shared rate's tokens in the same
/// statement: a bucket refilled at `rate` on the database's clock (one second's burst at most),
/// read from the rate's row, waited for, as many rows leased as it holds whole tokens, the rest
/// written back. When `checked`, the rate's row is read only while a row is due: a claim finding
/// nothing (the dispatcher's polls at a quiet hour) neither locks nor writes it, so its
/// transaction writes nothing and commits without a flush. The bucket it leaves is the same: a
/// refill computed later from the older state gives the same tokens, one second's burst at most
/// either way. Unchecked, the statement walks the due rows once instead of twice (the check's
/// scan passes the same dead index entries of rows claimed since the last vacuum as the lease's).
fn rated(which: &str, limit: &str, rate: &str, checked: bool) -> String {
    let due = format!("AND EXISTS (SELECT 1 FROM outbox WHERE state = 'pending' AND {which})");
    format!(
        "WITH bucket AS ({}),
         claimed AS ({}),
         spent AS (
             UPDATE rate_limit SET tokens = (SELECT available FROM bucket) - (SELECT COUNT(*) FROM claimed),
                                   at_ms = (SELECT now FROM bucket)
             WHERE name = 'wechat' AND EXISTS (SELECT 1 FROM bucket)
         )
         SELECT * FROM claimed",
        bucket(rate, if checked { &due } else { "" }, "FOR UPDATE"),
        lease_sql(
            which,
            &format!(
                "LEAST({limit}, GREATEST(COALESCE((SELECT floor(available)::BIGINT FROM bucket), 0), 0))"
            )
        )
    )
}

/// The instances' shared rate bucket as a row `(available, now)`, read from the rate's row (only
/// `when`, an SQL condition after `AND`, or always when empty) locked `lock`: its tokens refilled
/// at `rate` (an SQL expression) on the database's clock, one second's burst at most. The one
/// definition of the refill, for claims and for syncs leased on receipt (`write.rs`,
/// `push_bucket`).
pub(super) fn bucket(rate: &str, when: &str, lock: &str) -> String {
    format!(
        "SELECT LEAST(tokens + GREATEST({DB_NOW_MS} - at_ms, 0)::DOUBLE PRECISION / 1000.0 * {rate},
                      GREATEST({rate}, 1.0)) AS available,
                {DB_NOW_MS} AS now
         FROM rate_limit WHERE name = 'wechat' {when} {lock}"
    )
}

/// Due rows: due on the instance's clock (a skew only moves a retry a little).
const DUE: &str = "due_at <= $3";

/// The claim without a shared rate ($1 owner, $2 lease, $3 now, $4 limit).
static CLAIM: LazyLock<String> = LazyLock::new(|| lease_sql(DUE, "$4"));

/// The claim taking the shared rate's tokens in the same statement ($5 the rate); the rate's row
/// is waited for, and read only if a row is due.
static CLAIM_RATED: LazyLock<String> = LazyLock::new(|| rated(DUE, "$4", "$5", true));

/// [`CLAIM_RATED`] without the check that a row is due: after a claim that came back full, when
/// more are most likely due (under load every claim). Finding none, it rewrites the rate's row
/// once, with the tokens it holds.
static CLAIM_RATED_BUSY: LazyLock<String> = LazyLock::new(|| rated(DUE, "$4", "$5", false));

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
/// took meanwhile fails the re-check of `state = 'pending'` and is skipped. `busy`: the caller's
/// last claim came back full, so the rate's row is taken without first checking a row is due.
pub(super) async fn claim(
    pool: &PgPool,
    owner: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
    qps: f64,
    busy: bool,
) -> R<Vec<Claimed>> {
    let sql: &str = match (qps > 0.0, busy) {
        (false, _) => &CLAIM,
        (true, false) => &CLAIM_RATED,
        (true, true) => &CLAIM_RATED_BUSY,
    };
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::postgres::testing;

    async fn due(pool: &PgPool, n: i64) {
        sqlx::query(
            "INSERT INTO outbox (transaction_id, payload, state, due_at, created_at)
             SELECT 't' || (SELECT COUNT(*) FROM outbox) + g, '{}', 'pending', 0, 0
             FROM generate_series(1, $1) g",
        )
        .bind(n)
        .execute(pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_claim_without_the_due_check_leases_the_same_rows_and_spends_the_same_tokens() {
        let Some((_, pool, _drop)) = testing::migrated("the unchecked claim").await else {
            return;
        };
        let tokens = || async {
            sqlx::query_scalar::<_, f64>("SELECT tokens FROM rate_limit WHERE name = 'wechat'")
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        // a rate of 6 per second, its bucket full (one second's burst)
        sqlx::query("UPDATE rate_limit SET tokens = 6, at_ms = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT")
            .execute(&pool)
            .await
            .unwrap();
        due(&pool, 6).await;
        for busy in [false, true] {
            let rows = claim(&pool, "a", 1, 60_000, 3, 6.0, busy).await.unwrap();
            assert_eq!(
                rows.len(),
                3,
                "busy {busy}: as many as asked and the bucket holds"
            );
        }
        // six leased of six tokens (and the little refilled meanwhile)
        assert!(tokens().await < 1.5, "every lease spent a token");
        // nothing due: the unchecked claim leases nothing and leaves the bucket whole
        sqlx::query("UPDATE outbox SET state = 'done'")
            .execute(&pool)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let rows = claim(&pool, "a", 1, 60_000, 3, 6.0, true).await.unwrap();
        assert!(rows.is_empty());
        let left = tokens().await;
        assert!(left >= 2.0, "refilled and none spent: {left}");
        // a due row: leased by either form
        due(&pool, 1).await;
        let rows = claim(&pool, "a", 1, 60_000, 3, 6.0, true).await.unwrap();
        assert_eq!(rows.len(), 1);
        pool.close().await;
    }

    /// Whether `plan` sorts all its input at once (a `Sort` node, not an `Incremental Sort`).
    fn full_sort(plan: &str) -> bool {
        plan.lines().any(|l| {
            let node = l.trim_start().trim_start_matches("->").trim_start();
            node.starts_with("Sort ") && !node.starts_with("Sort Key")
        })
    }

    #[tokio::test]
    async fn a_claim_walks_the_due_rows_in_order_to_its_limit_however_the_outbox_was_when_planned()
    {
        let Some((db, main, _drop)) = testing::migrated("the claim's plan").await else {
            return;
        };
        let claims = super::super::connect(&db, Duration::from_secs(5), 1, PLANNER)
            .await
            .unwrap();
        let statements = [
            (
                "the claim",
                CLAIM.as_str(),
                "TEXT, BIGINT, BIGINT, BIGINT",
                "'a', 60000, 1000000, 32",
            ),
            (
                "the rated claim",
                CLAIM_RATED.as_str(),
                "TEXT, BIGINT, BIGINT, BIGINT, DOUBLE PRECISION",
                "'a', 60000, 1000000, 32, 100",
            ),
            (
                "the unchecked rated claim",
                CLAIM_RATED_BUSY.as_str(),
                "TEXT, BIGINT, BIGINT, BIGINT, DOUBLE PRECISION",
                "'a', 60000, 1000000, 32, 100",
            ),
        ];
        // an outbox never analysed (as in its first minute), empty, then with 3,000 rows: 2,000
        // done, 200 in flight and 800 pending, ten due at each millisecond
        for rows in [0, 3000] {
            sqlx::query(
                "INSERT INTO outbox (transaction_id, payload, state, due_at, created_at)
                 SELECT 't' || g, repeat('x', 300),
                        CASE WHEN g <= 2000 THEN 'done' WHEN g <= 2200 THEN 'inflight'
                             ELSE 'pending' END, (3000 - g) / 10, 0
                 FROM generate_series(1, $1) g",
            )
            .bind(rows)
            .execute(&main)
            .await
            .unwrap();
            for (name, sql, types, args) in statements {
                let kept = testing::generic_plan(&claims, sql, types, args).await;
                assert!(
                    kept.contains("Index Scan using outbox_due on outbox")
                        && kept.contains("Incremental Sort"),
                    "{rows} rows, {name}: the state index walked in due order:\n{kept}"
                );
                assert!(
                    !full_sort(&kept),
                    "{rows} rows, {name}: no full sort:\n{kept}"
                );
                for other in ["Seq Scan on outbox", "Bitmap", "Hash Join", "Semi Join"] {
                    assert!(
                        !kept.contains(other),
                        "{rows} rows, {name}: no {other}:\n{kept}"
                    );
                }
            }
            let (_, sql, types, args) = statements[1];
            eprintln!(
                "{rows} rows, the rated claim's plan without the claims' settings:\n{}",
                testing::generic_plan(&main, sql, types, args).await
            );
        }
        // the oldest due first, ties by id: the last ten rows are due at 0, the ten before at 1
        let rows = claim(&claims, "a", 1, 60_000, 15, 0.0, false)
            .await
            .unwrap();
        let ids: Vec<i64> = rows.iter().map(|c| c.id).collect();
        let expected: Vec<i64> = (2991..=3000).chain(2981..=2985).collect();
        assert_eq!(ids, expected);
        main.close().await;
        claims.close().await;
    }

    /// A claim leases no more than its limit whatever plan it keeps: here plans made on the
    /// claims' connection right after the outbox was analysed while empty (as autovacuum does to a
    /// new database), then 50 rows due and each statement asked for two.
    #[tokio::test]
    async fn a_claim_planned_on_an_outbox_analysed_empty_leases_no_more_than_its_limit() {
        let Some((db, main, _drop)) = testing::migrated("a claim after an empty analyse").await
        else {
            return;
        };
        let claims = super::super::connect(&db, Duration::from_secs(5), 1, PLANNER)
            .await
            .unwrap();
        sqlx::query("VACUUM (ANALYZE) outbox")
            .execute(&main)
            .await
            .unwrap();
        let forms = [(0.0, false), (1000.0, false), (1000.0, true)];
        for (qps, busy) in forms {
            let rows = claim(&claims, "a", 1, 60_000, 2, qps, busy).await.unwrap();
            assert!(rows.is_empty(), "nothing due yet");
        }
        due(&main, 50).await;
        for (qps, busy) in forms {
            let rows = claim(&claims, "a", 1, 60_000, 2, qps, busy).await.unwrap();
            assert_eq!(rows.len(), 2, "qps {qps}, busy {busy}: as many as asked");
        }
        let leased: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state = 'inflight'")
                .fetch_one(&main)
                .await
                .unwrap();
        assert_eq!(leased, 6, "every row leased was handed to the claimer");
        main.close().await;
        claims.close().await;
    }
}
