//! Writes on PostgreSQL: a callback's decision and writes, inside a transaction holding its
//! member's advisory lock (its own or its group's, `ingests.rs`); an adjustment and a parking
//! event, each one transaction. What a decision reads is `snapshot.rs`; the order of a group's
//! decisions `group.rs`.
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use super::DB_NOW_MS;
use super::claim::bucket;
use super::snapshot::snapshot;
use crate::domain::{
    self, AdjustSnapshot, InboxKey, InboxRow, LedgerRow, MemberWrite, NewParking, OutboxRow, Plan,
};
use crate::store::{
    Adjusted, Adjustment, Claimed, Incoming, IngestContext, Ingested, ParkingEnqueued,
};

type R<T> = Result<T, sqlx::Error>;

/// The advisory lock key serialising every write about one member, across instances.
pub(super) fn member_lock(openid: &str) -> String {
    format!("member:{openid}")
}

/// Holds the advisory lock `key` (such as [`member_lock`]'s) until the transaction ends.
pub(super) async fn lock_key(c: &mut PgConnection, key: &str) -> R<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(c)
        .await
        .map(|_| ())
}

pub(super) async fn count_delivery(c: &mut PgConnection, k: &InboxKey) -> R<()> {
    sqlx::query(
        "UPDATE inbox SET deliveries = deliveries + 1 WHERE event_type = $1 AND transaction_id = $2 AND refund_id = $3",
    )
    .bind(&k.event_type)
    .bind(&k.transaction_id)
    .bind(&k.refund_id)
    .execute(c)
    .await
    .map(|_| ())
}

async fn insert_inbox(c: &mut PgConnection, row: &InboxRow) -> R<bool> {
    let k = &row.key;
    let r = sqlx::query(
        "INSERT INTO inbox (event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (event_type, transaction_id, refund_id) DO NOTHING",
    )
    .bind(&k.event_type)
    .bind(&k.transaction_id)
    .bind(&k.refund_id)
    .bind(&row.notification_id)
    .bind(&row.openid)
    .bind(&row.resource)
    .bind(row.status.as_str())
    .bind(&row.note)
    .bind(row.received_at)
    .execute(c)
    .await?;
    Ok(r.rows_affected() == 1)
}

async fn insert_ledger(c: &mut PgConnection, e: &LedgerRow) -> R<()> {
    sqlx::query(
        "INSERT INTO ledger (openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&e.openid)
    .bind(e.kind)
    .bind(&e.transaction_id)
    .bind(&e.refund_id)
    .bind(e.points)
    .bind(e.balance_after)
    .bind(e.day)
    .bind(e.rule.to_string())
    .bind(e.created_at)
    .execute(c)
    .await
    .map(|_| ())
}

/// A member's balance written over the row of the same member.
pub(super) const BALANCE_UPSERT: &str = " ON CONFLICT (openid) DO UPDATE SET balance = excluded.balance, updated_at = excluded.updated_at";

/// A member's authorization written over the row of the same member.
pub(super) const AUTHORIZATION_UPSERT: &str =
    " ON CONFLICT (openid) DO UPDATE SET authorized = excluded.authorized, auth_type = excluded.auth_type,
         code = excluded.code, updated_at = excluded.updated_at, auth_state = excluded.auth_state,
         auth_source = excluded.auth_source, auth_learned_at = excluded.auth_learned_at";

async fn write_member(c: &mut PgConnection, m: &MemberWrite, now_ms: i64) -> R<()> {
    match m {
        MemberWrite::Balance { openid, balance } => sqlx::query(&format!(
            "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at) VALUES ($1, NULL, '', '', $2, $3){BALANCE_UPSERT}"
        ))
        .bind(openid)
        .bind(balance)
        .bind(now_ms)
        .execute(c)
        .await?,
        MemberWrite::Authorization {
            openid,
            authorized,
            auth_type,
            code,
        } => sqlx::query(&format!(
            "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at, auth_state, auth_source, auth_learned_at)
             VALUES ($1, $2, $3, $4, 0, $5, $3, 'callback', $5){AUTHORIZATION_UPSERT}"
        ))
        .bind(openid)
        .bind(i64::from(*authorized))
        .bind(auth_type)
        .bind(code)
        .bind(now_ms)
        .execute(c)
        .await?,
    };
    Ok(())
}

pub(super) fn outbox_state(o: &OutboxRow) -> &'static str {
    if o.invalid.is_some() {
        "parked"
    } else {
        "pending"
    }
}

/// An outbox row of the same key left parked or dead is replaced, with the new row's lease (a
/// sync leased on receipt replaces it as its first attempt, owned, its lease running); any other
/// is kept.
pub(super) const OUTBOX_REPLACE: &str =
    " ON CONFLICT (transaction_id) DO UPDATE SET method = excluded.method, path = excluded.path,
         payload = excluded.payload, state = excluded.state, last_error = excluded.last_error,
         due_at = excluded.due_at, attempts = excluded.attempts, created_at = excluded.created_at,
         lease_owner = excluded.lease_owner, lease_until = excluded.lease_until, done_at = NULL
     WHERE outbox.state IN ('parked', 'dead')";

/// Pushes the instances' shared rate bucket ([`bucket`], refilled at `qps`, bound once) as a row
/// `b (available, now)` locked for this transaction, or no row if another transaction holds it
/// (`SKIP LOCKED`: a callback never waits for the rate).
pub(super) fn push_bucket(q: &mut QueryBuilder<'_, Postgres>, qps: f64) {
    q.push("(SELECT * FROM (SELECT ")
        .push_bind(qps)
        .push("::DOUBLE PRECISION AS qps) r, LATERAL (")
        .push(bucket("r.qps", "", "FOR UPDATE SKIP LOCKED"))
        .push(") AS l) AS b");
}

/// The sync `o`, stored as row `id` and leased on receipt: its first attempt.
pub(super) fn leased_on_receipt(id: i64, o: &OutboxRow) -> Claimed {
    Claimed {
        id,
        transaction_id: o.transaction_id.clone(),
        method: o.method.clone(),
        path: o.path.clone(),
        payload: o.body.clone(),
        attempt: 1,
        created_at: o.created_at,
    }
}

/// Enqueues a request under `key`, replacing a row of the same key left parked or dead.
async fn insert_outbox(c: &mut PgConnection, o: &OutboxRow, key: &str) -> R<()> {
    sqlx::query(&format!(
        "INSERT INTO outbox (transaction_id, method, path, payload, state, last_error, due_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7){OUTBOX_REPLACE}"
    ))
    .bind(key)
    .bind(&o.method)
    .bind(&o.path)
    .bind(&o.body)
    .bind(outbox_state(o))
    .bind(&o.invalid)
    .bind(o.created_at)
    .execute(c)
    .await
    .map(|_| ())
}

/// Whether every write of `plan` can go in one statement: data-modifying CTEs all see the
/// statement's starting snapshot, so none may touch a row another one writes (a payment inserted
/// and updated, a member written twice).
pub(super) fn combinable(plan: &Plan) -> bool {
    let members: std::collections::BTreeSet<&str> =
        plan.members.iter().map(MemberWrite::openid).collect();
    plan.inbox.is_some() && members.len() == plan.members.len() && payment_written(plan).len() <= 1
}

/// The payments `plan` inserts or updates, by transaction id.
pub(super) fn payment_written(plan: &Plan) -> Vec<&str> {
    [
        plan.payment.as_ref().map(|x| x.transaction_id.as_str()),
        plan.payment_update
            .as_ref()
            .map(|x| x.transaction_id.as_str()),
        plan.payment_credit
            .as_ref()
            .map(|x| x.transaction_id.as_str()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Applies a [`combinable`] plan in one statement (one round trip): the inbox row claims the
/// natural key and every other write is conditional on that claim, so a key taken meanwhile
/// writes nothing (`false`).
/// Given `lease`, the sync it enqueues is leased as its first attempt (on the database's clock)
/// when a rate token is there for it now (the instances' shared bucket, its row skipped if
/// another transaction holds it), and its id returned; otherwise it stays pending for a claim.
async fn apply_combined(
    c: &mut PgConnection,
    plan: &Plan,
    row: &InboxRow,
    now_ms: i64,
    lease: Option<&PgLease<'_>>,
) -> R<(bool, Option<i64>)> {
    const CLAIMED: &str = " WHERE EXISTS (SELECT 1 FROM i)";
    let mut q = QueryBuilder::<Postgres>::new(
        "WITH i AS (INSERT INTO inbox (event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at) VALUES (",
    );
    {
        let k = &row.key;
        let mut v = q.separated(", ");
        v.push_bind(&k.event_type)
            .push_bind(&k.transaction_id)
            .push_bind(&k.refund_id)
            .push_bind(&row.notification_id)
            .push_bind(&row.openid)
            .push_bind(&row.resource)
            .push_bind(row.status.as_str())
            .push_bind(&row.note)
            .push_bind(row.received_at);
    }
    q.push(") ON CONFLICT (event_type, transaction_id, refund_id) DO NOTHING RETURNING id)");
    for (n, m) in plan.members.iter().enumerate() {
        match m {
            MemberWrite::Balance { openid, balance } => {
                q.push(format_args!(
                    ", m{n} AS (INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at) SELECT "
                ));
                q.push_bind(openid)
                    .push(", NULL::BIGINT, '', '', ")
                    .push_bind(*balance)
                    .push(", ")
                    .push_bind(now_ms)
                    .push(CLAIMED)
                    .push(BALANCE_UPSERT)
                    .push(")");
            }
            MemberWrite::Authorization {
                openid,
                authorized,
                auth_type,
                code,
            } => {
                q.push(format_args!(
                    ", m{n} AS (INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at, auth_state, auth_source, auth_learned_at) SELECT "
                ));
                let mut v = q.separated(", ");
                v.push_bind(openid)
                    .push_bind(i64::from(*authorized))
                    .push_bind(auth_type)
                    .push_bind(code)
                    .push("0")
                    .push_bind(now_ms)
                    .push_bind(auth_type)
                    .push("'callback'")
                    .push_bind(now_ms);
                q.push(CLAIMED).push(AUTHORIZATION_UPSERT).push(")");
            }
        }
    }
    if !plan.ledger.is_empty() {
        // one INSERT, rows in the plan's order (ids follow it)
        q.push(
            ", l AS (INSERT INTO ledger (openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at)
             SELECT openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at FROM (",
        );
        q.push_values(plan.ledger.iter().enumerate(), |mut v, (n, e)| {
            v.push_bind(n as i64)
                .push_bind(&e.openid)
                .push_bind(e.kind)
                .push_bind(&e.transaction_id)
                .push_bind(&e.refund_id)
                .push_bind(e.points)
                .push_bind(e.balance_after)
                .push_bind(e.day)
                .push_bind(e.rule.to_string())
                .push_bind(e.created_at);
        });
        q.push(
            ") AS v (n, openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at)",
        )
        .push(CLAIMED)
        .push(" ORDER BY n)");
    }
    if let Some(p) = &plan.payment {
        q.push(
            ", p AS (INSERT INTO payments (transaction_id, openid, appid, mchid, shop_number, amount, credited_points, refunded_amount, entitled_debit, not_credited, created_at) SELECT ",
        );
        let mut v = q.separated(", ");
        v.push_bind(&p.transaction_id)
            .push_bind(&p.openid)
            .push_bind(&p.appid)
            .push_bind(&p.mchid)
            .push_bind(&p.shop_number)
            .push_bind(p.amount)
            .push_bind(p.credited_points)
            .push_bind(p.refunded_amount)
            .push_bind(p.entitled_debit)
            .push_bind(i64::from(p.not_credited))
            .push_bind(p.created_at);
        q.push(CLAIMED).push(")");
    }
    if let Some(pc) = &plan.payment_credit {
        q.push(", pc AS (UPDATE payments SET credited_points = ")
            .push_bind(pc.credited_points)
            .push(", not_credited = 0 WHERE transaction_id = ")
            .push_bind(&pc.transaction_id)
            .push(" AND not_credited = 1 AND EXISTS (SELECT 1 FROM i))");
    }
    if let Some(u) = &plan.payment_update {
        q.push(", pu AS (UPDATE payments SET refunded_amount = ")
            .push_bind(u.refunded_amount)
            .push(", entitled_debit = ")
            .push_bind(u.entitled_debit)
            .push(" WHERE transaction_id = ")
            .push_bind(&u.transaction_id)
            .push(" AND EXISTS (SELECT 1 FROM i))");
    }
    let leasing = sync_lease(plan, lease);
    if let Some(l) = leasing {
        // whether the sync is leased now: always without a shared rate, else if a token is there
        if l.qps > 0.0 {
            q.push(", tok AS (UPDATE rate_limit SET tokens = b.available - 1, at_ms = b.now FROM ");
            push_bucket(&mut q, l.qps);
            q.push(
                " WHERE rate_limit.name = 'wechat' AND b.available >= 1 AND EXISTS (SELECT 1 FROM i)
                   RETURNING 1)",
            );
        } else {
            q.push(", tok AS (SELECT 1 WHERE EXISTS (SELECT 1 FROM i))");
        }
    }
    if let Some(o) = &plan.outbox {
        q.push(
            ", o AS (INSERT INTO outbox (transaction_id, method, path, payload, state, last_error, due_at, created_at, lease_owner, lease_until, attempts) SELECT ",
        );
        let mut v = q.separated(", ");
        v.push_bind(&o.transaction_id)
            .push_bind(&o.method)
            .push_bind(&o.path)
            .push_bind(&o.body);
        match leasing {
            Some(l) => {
                const LEASED: &str = "EXISTS (SELECT 1 FROM tok)";
                v.push(format_args!(
                    "CASE WHEN {LEASED} THEN 'inflight' ELSE 'pending' END"
                ))
                .push_bind(&o.invalid)
                .push_bind(o.created_at)
                .push_bind(o.created_at);
                v.push(format_args!("CASE WHEN {LEASED} THEN "))
                    .push_bind_unseparated(l.owner)
                    .push_unseparated(" END");
                v.push(format_args!("CASE WHEN {LEASED} THEN {DB_NOW_MS} + "))
                    .push_bind_unseparated(l.lease_ms)
                    .push_unseparated(" END");
                v.push(format_args!("CASE WHEN {LEASED} THEN 1 ELSE 0 END"));
            }
            None => {
                v.push_bind(outbox_state(o))
                    .push_bind(&o.invalid)
                    .push_bind(o.created_at)
                    .push_bind(o.created_at)
                    .push("NULL")
                    .push("NULL::BIGINT")
                    .push("0");
            }
        }
        q.push(CLAIMED)
            .push(OUTBOX_REPLACE)
            .push(" RETURNING id, state)");
    }
    if !plan.released.is_empty() {
        q.push(", r AS (UPDATE inbox SET status = 'applied', note = 'applied when its payment arrived' WHERE id = ANY(")
            .push_bind(&plan.released)
            .push(") AND EXISTS (SELECT 1 FROM i))");
    }
    q.push(" SELECT EXISTS (SELECT 1 FROM i), ");
    if plan.outbox.is_some() {
        q.push("(SELECT id FROM o WHERE state = 'inflight')");
    } else {
        q.push("NULL::BIGINT");
    }
    q.build_query_as::<(bool, Option<i64>)>().fetch_one(c).await
}

/// The lease `plan`'s sync takes on receipt, given its caller's `lease`: none without a sync, or
/// for a sync parked as invalid.
pub(super) fn sync_lease<'a>(
    plan: &Plan,
    lease: Option<&'a PgLease<'a>>,
) -> Option<&'a PgLease<'a>> {
    lease.filter(|_| plan.outbox.as_ref().is_some_and(|o| o.invalid.is_none()))
}

/// Who leases a callback's sync in its transaction, and the shared rate (0: none).
pub(super) struct PgLease<'a> {
    pub owner: &'a str,
    pub lease_ms: i64,
    pub qps: f64,
}

/// Applies a plan; given `lease`, a combinable plan's sync may be leased (see
/// [`apply_combined`]) and is returned claimed.
pub(super) async fn apply(
    c: &mut PgConnection,
    plan: &Plan,
    now_ms: i64,
    lease: Option<&PgLease<'_>>,
) -> R<(Ingested, Option<Claimed>)> {
    if let Some(row) = &plan.inbox
        && combinable(plan)
    {
        let (stored, leased) = apply_combined(c, plan, row, now_ms, lease).await?;
        if !stored {
            count_delivery(c, &plan.key).await?;
            return Ok((Ingested::Duplicate, None));
        }
        let claimed = leased
            .zip(plan.outbox.as_ref())
            .map(|(id, o)| leased_on_receipt(id, o));
        return Ok((plan.outcome.clone(), claimed));
    }
    let Some(row) = &plan.inbox else {
        count_delivery(c, &plan.key).await?;
        return Ok((Ingested::Duplicate, None));
    };
    if !insert_inbox(c, row).await? {
        count_delivery(c, &plan.key).await?;
        return Ok((Ingested::Duplicate, None));
    }
    for m in &plan.members {
        write_member(c, m, now_ms).await?;
    }
    for e in &plan.ledger {
        insert_ledger(c, e).await?;
    }
    if let Some(p) = &plan.payment {
        sqlx::query(
            "INSERT INTO payments (transaction_id, openid, appid, mchid, shop_number, amount, credited_points, refunded_amount, entitled_debit, not_credited, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&p.transaction_id)
        .bind(&p.openid)
        .bind(&p.appid)
        .bind(&p.mchid)
        .bind(&p.shop_number)
        .bind(p.amount)
        .bind(p.credited_points)
        .bind(p.refunded_amount)
        .bind(p.entitled_debit)
        .bind(i64::from(p.not_credited))
        .bind(p.created_at)
        .execute(&mut *c)
        .await?;
    }
    if let Some(pc) = &plan.payment_credit {
        sqlx::query(
            "UPDATE payments SET credited_points = $1, not_credited = 0 WHERE transaction_id = $2 AND not_credited = 1",
        )
        .bind(pc.credited_points)
        .bind(&pc.transaction_id)
        .execute(&mut *c)
        .await?;
    }
    if let Some(u) = &plan.payment_update {
        sqlx::query(
            "UPDATE payments SET refunded_amount = $1, entitled_debit = $2 WHERE transaction_id = $3",
        )
        .bind(u.refunded_amount)
        .bind(u.entitled_debit)
        .bind(&u.transaction_id)
        .execute(&mut *c)
        .await?;
    }
    if let Some(o) = &plan.outbox {
        insert_outbox(c, o, &o.transaction_id).await?;
    }
    for id in &plan.released {
        sqlx::query(
            "UPDATE inbox SET status = 'applied', note = 'applied when its payment arrived' WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *c)
        .await?;
    }
    Ok((plan.outcome.clone(), None))
}

/// Decides and applies one callback inside a transaction that holds its member's lock: the
/// snapshot (one round trip), the domain's decision, the plan's writes (one, when combinable).
pub(super) async fn store_locked(
    c: &mut PgConnection,
    n: &Incoming,
    ctx: &IngestContext<'_>,
    lease: Option<&PgLease<'_>>,
) -> R<(Ingested, Option<Claimed>)> {
    let snap = snapshot(c, &domain::reads(n, ctx)).await?;
    let plan = domain::ingest(n, &snap, ctx);
    apply(c, &plan, ctx.now_ms, lease).await
}

pub(super) async fn adjust(
    pool: &PgPool,
    a: &Adjustment,
    allow_negative: bool,
    now_ms: i64,
) -> R<Adjusted> {
    let mut tx = pool.begin().await?;
    lock_key(&mut tx, &member_lock(&a.openid)).await?;
    // the reference too: the same reference for two members is decided once
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("adjust:{}", a.reference))
        .execute(&mut *tx)
        .await?;
    let balance: Option<i64> = sqlx::query_scalar("SELECT balance FROM members WHERE openid = $1")
        .bind(&a.openid)
        .fetch_optional(&mut *tx)
        .await?;
    let first = sqlx::query(
        "SELECT openid, points FROM ledger WHERE kind = 'adjust' AND transaction_id = $1",
    )
    .bind(&a.reference)
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| Ok::<_, sqlx::Error>((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
    .transpose()?;
    let (outcome, write) =
        domain::adjust(a, AdjustSnapshot { balance, first }, allow_negative, now_ms);
    if let Some(w) = write {
        write_member(
            &mut tx,
            &MemberWrite::Balance {
                openid: a.openid.clone(),
                balance: w.balance,
            },
            now_ms,
        )
        .await?;
        insert_ledger(&mut tx, &w.entry).await?;
    }
    tx.commit().await?;
    Ok(outcome)
}

pub(super) async fn enqueue_parking(
    pool: &PgPool,
    p: &NewParking,
    request: &OutboxRow,
) -> R<ParkingEnqueued> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("parking:{}", p.idempotency_key))
        .execute(&mut *tx)
        .await?;
    let first = sqlx::query(
        "SELECT id, openid, plate_number, state, time, appid, brandid, sub_mchid FROM parkings WHERE idempotency_key = $1",
    )
    .bind(&p.idempotency_key)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(r) = first {
        let id: i64 = r.try_get(0)?;
        let stored = NewParking {
            idempotency_key: p.idempotency_key.clone(),
            openid: r.try_get(1)?,
            plate_number: r.try_get(2)?,
            state: r.try_get(3)?,
            time: r.try_get(4)?,
            appid: r.try_get(5)?,
            brandid: r.try_get(6)?,
            sub_mchid: r.try_get(7)?,
        };
        tx.commit().await?;
        return Ok(if stored.same_event(p) {
            ParkingEnqueued::Existing(id)
        } else {
            ParkingEnqueued::Conflict(id)
        });
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO parkings (idempotency_key, openid, plate_number, state, time, appid, brandid, sub_mchid, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(&p.idempotency_key)
    .bind(&p.openid)
    .bind(&p.plate_number)
    .bind(&p.state)
    .bind(&p.time)
    .bind(&p.appid)
    .bind(p.brandid)
    .bind(&p.sub_mchid)
    .bind(request.created_at)
    .fetch_one(&mut *tx)
    .await?;
    insert_outbox(&mut tx, request, &domain::parking_sync_key(id)).await?;
    tx.commit().await?;
    Ok(ParkingEnqueued::Created(id))
}
