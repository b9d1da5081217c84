//! The writer's jobs: read a snapshot, let the domain decide, apply the plan; claim, complete,
//! release and rescue outbox rows. Runs on the writer thread inside the group's transaction.

use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::{
    self, AdjustSnapshot, HeldRefund, InboxKey, InboxRow, LedgerRow, MemberSnapshot, MemberWrite,
    NewParking, OutboxRow, PaymentSnapshot, Plan, Reads, Snapshot,
};
use crate::rules::Authorization;
use crate::store::{
    Adjusted, Adjustment, Claimed, Incoming, IngestContext, Ingested, LearnedAuthorization,
    ParkingEnqueued, SyncOutcome,
};

/// What a member was credited on a day, for the daily cap: answered from the covering index
/// `ledger_member_day` alone (migration 6), not from one table row per credit.
pub(super) const CREDITED_ON_DAY: &str =
    "SELECT COALESCE(SUM(points), 0) FROM ledger WHERE openid = ? AND day = ? AND kind = 'credit'";

/// `Connection::execute` through the statement cache: hot statements are parsed once.
pub(super) fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// `Connection::query_row` through the statement cache.
pub(super) fn one<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

fn member_snapshot(c: &Connection, openid: &str) -> rusqlite::Result<MemberSnapshot> {
    let row: Option<(Option<i64>, i64)> = one(
        c,
        "SELECT authorized, balance FROM members WHERE openid = ?",
        params![openid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?;
    Ok(match row {
        None => MemberSnapshot::default(),
        Some((a, balance)) => MemberSnapshot {
            authorization: match a {
                Some(1) => Authorization::Authorized,
                Some(_) => Authorization::NotAuthorized,
                None => Authorization::Unknown,
            },
            balance,
        },
    })
}

fn snapshot(c: &Connection, r: &Reads) -> rusqlite::Result<Snapshot> {
    let k = &r.key;
    let seen = one(
        c,
        "SELECT 1 FROM inbox WHERE event_type = ? AND transaction_id = ? AND refund_id = ?",
        params![k.event_type, k.transaction_id, k.refund_id],
        |_| Ok(()),
    )
    .optional()?
    .is_some();
    if seen {
        return Ok(Snapshot {
            seen,
            ..Snapshot::default()
        });
    }
    let mut snap = Snapshot::default();
    if let Some(tx) = &r.transaction_id {
        snap.payment = one(
            c,
            "SELECT openid, amount, credited_points, refunded_amount, entitled_debit, not_credited FROM payments WHERE transaction_id = ?",
            params![tx],
            |x| {
                Ok(PaymentSnapshot {
                    openid: x.get(0)?,
                    amount: x.get(1)?,
                    credited_points: x.get(2)?,
                    refunded_amount: x.get(3)?,
                    entitled_debit: x.get(4)?,
                    not_credited: x.get(5)?,
                })
            },
        )
        .optional()?;
        let mut st = c.prepare_cached(
            "SELECT id, resource FROM inbox WHERE transaction_id = ? AND status = 'held' ORDER BY id",
        )?;
        snap.held_refunds = st
            .query_map(params![tx], |x| {
                Ok(HeldRefund {
                    inbox_id: x.get(0)?,
                    resource: x.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    let openid = r
        .openid
        .clone()
        .or_else(|| snap.payment.as_ref().map(|p| p.openid.clone()));
    if let Some(openid) = openid {
        snap.member = member_snapshot(c, &openid)?;
        if let Some(day) = r.day {
            snap.credited_today = one(c, CREDITED_ON_DAY, params![openid, day], |x| x.get(0))?;
        }
    }
    Ok(snap)
}

fn count_delivery(c: &Connection, k: &InboxKey) -> rusqlite::Result<()> {
    exec(
        c,
        "UPDATE inbox SET deliveries = deliveries + 1 WHERE event_type = ? AND transaction_id = ? AND refund_id = ?",
        params![k.event_type, k.transaction_id, k.refund_id],
    )?;
    Ok(())
}

/// Inserts the inbox row unless its natural key is taken; returns whether it was inserted.
fn insert_inbox(c: &Connection, row: &InboxRow) -> rusqlite::Result<bool> {
    let k = &row.key;
    let inserted = exec(c,
        "INSERT INTO inbox (event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_type, transaction_id, refund_id) DO NOTHING",
        params![k.event_type, k.transaction_id, k.refund_id, row.notification_id, row.openid, row.resource,
                row.status.as_str(), row.note, row.received_at],
    )?;
    Ok(inserted == 1)
}

fn insert_ledger(c: &Connection, e: &LedgerRow) -> rusqlite::Result<()> {
    exec(c,
        "INSERT INTO ledger (openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![e.openid, e.kind, e.transaction_id, e.refund_id, e.points, e.balance_after, e.day,
                e.rule.to_string(), e.created_at],
    )?;
    Ok(())
}

fn write_member(c: &Connection, m: &MemberWrite, now_ms: i64) -> rusqlite::Result<()> {
    match m {
        MemberWrite::Balance { openid, balance } => exec(c,
            "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at) VALUES (?, NULL, '', '', ?, ?)
             ON CONFLICT (openid) DO UPDATE SET balance = excluded.balance, updated_at = excluded.updated_at",
            params![openid, balance, now_ms],
        )?,
        MemberWrite::Authorization { openid, authorized, auth_type, code } => exec(c,
            "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at, auth_state, auth_source, auth_learned_at)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?3, 'callback', ?5)
             ON CONFLICT (openid) DO UPDATE SET authorized = excluded.authorized, auth_type = excluded.auth_type,
                 code = excluded.code, updated_at = excluded.updated_at, auth_state = excluded.auth_state,
                 auth_source = excluded.auth_source, auth_learned_at = excluded.auth_learned_at",
            params![openid, i64::from(*authorized), auth_type, code, now_ms],
        )?,
    };
    Ok(())
}

/// Enqueues a request under `key` (unique). A row of the same key left parked or dead is replaced
/// (a payment whose earn_points=false sync an older version parked, credited on a manual
/// application).
/// Inserts a sync's request (or re-arms a parked or dead one for it): pending and due at once,
/// parked when it fails WeChat's field rules, or — given `lease` (owner, lease expiry) — leased
/// as its first attempt and returned claimed.
fn insert_outbox(
    c: &Connection,
    o: &OutboxRow,
    key: &str,
    lease: Option<(&str, i64)>,
) -> rusqlite::Result<Option<Claimed>> {
    let (state, lease) = match (&o.invalid, lease) {
        (Some(_), _) => ("parked", None),
        (None, Some(l)) => ("inflight", Some(l)),
        (None, None) => ("pending", None),
    };
    let id = one(
        c,
        "INSERT INTO outbox (transaction_id, method, path, payload, state, last_error, due_at, created_at, lease_owner, lease_until, attempts)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (transaction_id) DO UPDATE SET method = excluded.method, path = excluded.path,
             payload = excluded.payload, state = excluded.state, last_error = excluded.last_error,
             due_at = excluded.due_at, attempts = excluded.attempts, created_at = excluded.created_at,
             lease_owner = excluded.lease_owner, lease_until = excluded.lease_until, done_at = NULL
         WHERE outbox.state IN ('parked', 'dead')
         RETURNING id",
        params![
            key,
            o.method,
            o.path,
            o.body,
            state,
            o.invalid,
            o.created_at,
            o.created_at,
            lease.map(|l| l.0),
            lease.map(|l| l.1),
            i64::from(lease.is_some()),
        ],
        |r| r.get::<_, i64>(0),
    )
    .optional()?;
    Ok(id.filter(|_| lease.is_some()).map(|id| Claimed {
        id,
        transaction_id: key.to_string(),
        method: o.method.clone(),
        path: o.path.clone(),
        payload: o.body.clone(),
        attempt: 1,
        created_at: o.created_at,
    }))
}

/// Applies a plan. The inbox row goes first: if its natural key was taken meanwhile, nothing else
/// is written and the delivery is a duplicate.
/// Given `lease` (owner, lease expiry), the sync it enqueues is leased and returned claimed.
fn apply(
    c: &Connection,
    plan: &Plan,
    now_ms: i64,
    lease: Option<(&str, i64)>,
) -> rusqlite::Result<(Ingested, Option<Claimed>)> {
    let Some(row) = &plan.inbox else {
        count_delivery(c, &plan.key)?;
        return Ok((Ingested::Duplicate, None));
    };
    if !insert_inbox(c, row)? {
        count_delivery(c, &plan.key)?;
        return Ok((Ingested::Duplicate, None));
    }
    for m in &plan.members {
        write_member(c, m, now_ms)?;
    }
    for e in &plan.ledger {
        insert_ledger(c, e)?;
    }
    if let Some(p) = &plan.payment {
        exec(c,
            "INSERT INTO payments (transaction_id, openid, appid, mchid, shop_number, amount, credited_points, refunded_amount, entitled_debit, not_credited, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params![p.transaction_id, p.openid, p.appid, p.mchid, p.shop_number, p.amount, p.credited_points,
                    p.refunded_amount, p.entitled_debit, p.not_credited, p.created_at],
        )?;
    }
    if let Some(pc) = &plan.payment_credit {
        exec(
            c,
            "UPDATE payments SET credited_points = ?, not_credited = 0 WHERE transaction_id = ? AND not_credited = 1",
            params![pc.credited_points, pc.transaction_id],
        )?;
    }
    if let Some(u) = &plan.payment_update {
        exec(
            c,
            "UPDATE payments SET refunded_amount = ?, entitled_debit = ? WHERE transaction_id = ?",
            params![u.refunded_amount, u.entitled_debit, u.transaction_id],
        )?;
    }
    let claimed = match &plan.outbox {
        Some(o) => insert_outbox(c, o, &o.transaction_id, lease)?,
        None => None,
    };
    for id in &plan.released {
        exec(
            c,
            "UPDATE inbox SET status = 'applied', note = 'applied when its payment arrived' WHERE id = ?",
            params![id],
        )?;
    }
    Ok((plan.outcome.clone(), claimed))
}

/// Stores a callback: reads its snapshot, lets the domain decide, applies the plan; given `lease`
/// (owner, lease expiry), the sync it enqueues is leased and returned claimed.
pub(super) fn ingest_leased(
    c: &Connection,
    n: &Incoming,
    ctx: &IngestContext<'_>,
    lease: Option<(&str, i64)>,
) -> rusqlite::Result<(Ingested, Option<Claimed>)> {
    let snap = snapshot(c, &domain::reads(n, ctx))?;
    let plan = domain::ingest(n, &snap, ctx);
    apply(c, &plan, ctx.now_ms, lease)
}

pub(super) fn release(c: &Connection, owner: &str) -> rusqlite::Result<u64> {
    Ok(exec(
        c,
        "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL WHERE state = 'inflight' AND lease_owner = ?",
        params![owner],
    )? as u64)
}

pub(super) fn rescue(c: &Connection, now_ms: i64) -> rusqlite::Result<u64> {
    Ok(exec(
        c,
        "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL WHERE state = 'inflight' AND lease_until < ?",
        params![now_ms],
    )? as u64)
}

pub(super) fn claim(
    c: &Connection,
    owner: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
) -> rusqlite::Result<Vec<Claimed>> {
    let mut st = c.prepare_cached(
        "UPDATE outbox SET state = 'inflight', lease_owner = ?, lease_until = ?, attempts = attempts + 1
         WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' AND due_at <= ? ORDER BY due_at, id LIMIT ?)
         RETURNING id, transaction_id, method, path, payload, attempts, created_at",
    )?;
    let rows = st.query_map(params![owner, now_ms + lease_ms, now_ms, limit], |r| {
        Ok(Claimed {
            id: r.get(0)?,
            transaction_id: r.get(1)?,
            method: r.get(2)?,
            path: r.get(3)?,
            payload: r.get(4)?,
            attempt: r.get(5)?,
            created_at: r.get(6)?,
        })
    })?;
    rows.collect()
}

pub(super) fn complete(
    c: &Connection,
    cl: &Claimed,
    owner: &str,
    outcome: &SyncOutcome,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let (state, due_at, error) = outcome.columns();
    let n = exec(c,
        "UPDATE outbox SET state = ?1, due_at = COALESCE(?2, due_at), last_error = COALESCE(?3, last_error),
             done_at = CASE WHEN ?1 = 'done' THEN ?4 ELSE done_at END, lease_owner = NULL, lease_until = NULL
         WHERE id = ?5 AND state = 'inflight' AND lease_owner = ?6 AND attempts = ?7",
        params![state, due_at, error, now_ms, cl.id, owner, cl.attempt],
    )?;
    Ok(n == 1)
}

pub(super) fn renew(
    c: &Connection,
    cl: &Claimed,
    owner: &str,
    until_ms: i64,
) -> rusqlite::Result<bool> {
    let n = exec(
        c,
        "UPDATE outbox SET lease_until = ? WHERE id = ? AND state = 'inflight' AND lease_owner = ? AND attempts = ?",
        params![until_ms, cl.id, owner, cl.attempt],
    )?;
    Ok(n == 1)
}

pub(super) fn retry_parked(c: &Connection, ids: &[i64], now_ms: i64) -> rusqlite::Result<u64> {
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

pub(super) fn adjust(
    c: &Connection,
    a: &Adjustment,
    allow_negative: bool,
    now_ms: i64,
) -> rusqlite::Result<Adjusted> {
    let balance: Option<i64> = one(
        c,
        "SELECT balance FROM members WHERE openid = ?",
        params![a.openid],
        |r| r.get(0),
    )
    .optional()?;
    let first = one(
        c,
        "SELECT openid, points FROM ledger WHERE kind = 'adjust' AND transaction_id = ?",
        params![a.reference],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?;
    let (outcome, write) =
        domain::adjust(a, AdjustSnapshot { balance, first }, allow_negative, now_ms);
    if let Some(w) = write {
        write_member(
            c,
            &MemberWrite::Balance {
                openid: a.openid.clone(),
                balance: w.balance,
            },
            now_ms,
        )?;
        insert_ledger(c, &w.entry)?;
    }
    Ok(outcome)
}

/// A member's authorization as WeChat's query API answered it.
pub(super) fn record_authorization(
    c: &Connection,
    a: &LearnedAuthorization,
    now_ms: i64,
) -> rusqlite::Result<()> {
    exec(c,
        "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at, auth_state, auth_source, auth_learned_at)
         VALUES (?1, ?2, '', '', 0, ?4, ?3, 'query', ?4)
         ON CONFLICT (openid) DO UPDATE SET authorized = excluded.authorized, updated_at = excluded.updated_at,
             auth_state = excluded.auth_state, auth_source = excluded.auth_source, auth_learned_at = excluded.auth_learned_at",
        params![a.openid, a.authorized.map(i64::from), a.state, now_ms],
    )?;
    Ok(())
}

/// Stores a parking event and enqueues its request, unless its key was used before.
pub(super) fn enqueue_parking(
    c: &Connection,
    p: &NewParking,
    request: &OutboxRow,
) -> rusqlite::Result<ParkingEnqueued> {
    let first = one(
        c,
        "SELECT id, openid, plate_number, state, time, appid, brandid, sub_mchid FROM parkings WHERE idempotency_key = ?",
        params![p.idempotency_key],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                NewParking {
                    idempotency_key: p.idempotency_key.clone(),
                    openid: r.get(1)?,
                    plate_number: r.get(2)?,
                    state: r.get(3)?,
                    time: r.get(4)?,
                    appid: r.get(5)?,
                    brandid: r.get(6)?,
                    sub_mchid: r.get(7)?,
                },
            ))
        },
    )
    .optional()?;
    if let Some((id, stored)) = first {
        return Ok(if stored.same_event(p) {
            ParkingEnqueued::Existing(id)
        } else {
            ParkingEnqueued::Conflict(id)
        });
    }
    let id: i64 = one(c,
        "INSERT INTO parkings (idempotency_key, openid, plate_number, state, time, appid, brandid, sub_mchid, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        params![p.idempotency_key, p.openid, p.plate_number, p.state, p.time, p.appid, p.brandid, p.sub_mchid,
                request.created_at],
        |r| r.get(0),
    )?;
    insert_outbox(c, request, &domain::parking_sync_key(id), None)?;
    Ok(ParkingEnqueued::Created(id))
}
