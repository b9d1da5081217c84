//! Queries on PostgreSQL.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use crate::store::{
    Audit, AuthorizationView, InboxView, LedgerEntry, LedgerItem, MemberSummary, MemberView,
    Minute, ParkedSync, ParkingView, StaleMember, Status, describe_failure,
};

type R<T> = Result<T, sqlx::Error>;

fn rule(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

pub(super) async fn counts(pool: &PgPool, sql: &str) -> R<BTreeMap<String, i64>> {
    sqlx::query(sql)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
        .collect()
}

async fn strings(pool: &PgPool, sql: &str) -> R<Vec<String>> {
    sqlx::query_scalar(sql).fetch_all(pool).await
}

pub(super) async fn status(pool: &PgPool) -> R<Status> {
    let oldest_pending_at: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'inflight')",
    )
    .fetch_one(pool)
    .await?;
    let parked = sqlx::query(
        "SELECT id, transaction_id, state, attempts, last_error FROM outbox WHERE state IN ('parked', 'dead') ORDER BY id LIMIT 1000",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(ParkedSync {
            id: r.try_get(0)?,
            transaction_id: r.try_get(1)?,
            state: r.try_get(2)?,
            attempts: r.try_get(3)?,
            error: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
        })
    })
    .collect::<R<_>>()?;
    Ok(Status {
        syncs: counts(pool, "SELECT state, COUNT(*) FROM outbox GROUP BY state").await?,
        inbox: counts(pool, "SELECT status, COUNT(*) FROM inbox GROUP BY status").await?,
        oldest_pending_at,
        parked,
    })
}

pub(super) async fn member(pool: &PgPool, openid: &str) -> R<Option<MemberView>> {
    let Some(m) = sqlx::query("SELECT authorized, balance FROM members WHERE openid = $1")
        .bind(openid)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let entries = sqlx::query(
        "SELECT kind, transaction_id, refund_id, points, balance_after, rule, created_at FROM ledger WHERE openid = $1 ORDER BY id",
    )
    .bind(openid)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(LedgerEntry {
            kind: r.try_get(0)?,
            transaction_id: r.try_get(1)?,
            refund_id: r.try_get(2)?,
            points: r.try_get(3)?,
            balance_after: r.try_get(4)?,
            rule: rule(r.try_get(5)?),
            created_at: r.try_get(6)?,
        })
    })
    .collect::<R<_>>()?;
    Ok(Some(MemberView {
        openid: openid.to_string(),
        authorized: m.try_get::<Option<i64>, _>(0)?.map(|a| a == 1),
        balance: m.try_get(1)?,
        entries,
    }))
}

pub(super) async fn audit(pool: &PgPool) -> R<Audit> {
    let credits: BTreeMap<String, i64> = sqlx::query(
        "SELECT transaction_id, SUM(points)::BIGINT FROM ledger WHERE kind = 'credit' GROUP BY transaction_id",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect::<R<_>>()?;
    let d = sqlx::query(
        "SELECT COUNT(*), COALESCE(-SUM(points), 0)::BIGINT FROM ledger WHERE kind = 'debit'",
    )
    .fetch_one(pool)
    .await?;
    let sync_latencies_ms = sqlx::query_scalar(
        "SELECT done_at - created_at FROM outbox WHERE state = 'done' ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(Audit {
        points_issued: credits.values().sum(),
        credits,
        debits: d.try_get(0)?,
        points_deducted: d.try_get(1)?,
        sync_latencies_ms,
        unbalanced_members: strings(
            pool,
            "SELECT m.openid FROM members m LEFT JOIN (SELECT openid, SUM(points) AS total FROM ledger GROUP BY openid) l
             ON l.openid = m.openid WHERE m.balance != COALESCE(l.total, 0)",
        )
        .await?,
        payments_without_sync: strings(
            pool,
            "SELECT p.transaction_id FROM payments p LEFT JOIN outbox o ON o.transaction_id = p.transaction_id
             WHERE o.id IS NULL AND p.not_credited = 0",
        )
        .await?,
        not_credited: strings(
            pool,
            "SELECT transaction_id FROM payments WHERE not_credited = 1 ORDER BY transaction_id",
        )
        .await?,
        held_refunds: sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE status = 'held'")
            .fetch_one(pool)
            .await?,
    })
}

pub(super) async fn recent_callbacks(pool: &PgPool, limit: i64) -> R<Vec<InboxView>> {
    sqlx::query(
        "SELECT received_at, event_type, transaction_id, refund_id, status, deliveries, note FROM inbox ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(InboxView {
            received_at: r.try_get(0)?,
            event_type: r.try_get(1)?,
            transaction_id: r.try_get(2)?,
            refund_id: r.try_get(3)?,
            status: r.try_get(4)?,
            deliveries: r.try_get(5)?,
            note: r.try_get(6)?,
        })
    })
    .collect()
}

pub(super) async fn activity(pool: &PgPool, since_ms: i64) -> R<Vec<Minute>> {
    let mut by_minute: BTreeMap<i64, Minute> = BTreeMap::new();
    let callbacks: Vec<i64> = sqlx::query_scalar(
        "SELECT received_at FROM (SELECT received_at FROM inbox ORDER BY id DESC LIMIT 50000) t WHERE received_at >= $1",
    )
    .bind(since_ms)
    .fetch_all(pool)
    .await?;
    let syncs: Vec<i64> = sqlx::query_scalar(
        "SELECT done_at FROM (SELECT done_at FROM outbox WHERE state = 'done' ORDER BY id DESC LIMIT 50000) t WHERE done_at >= $1",
    )
    .bind(since_ms)
    .fetch_all(pool)
    .await?;
    for (times, sync) in [(callbacks, false), (syncs, true)] {
        for t in times {
            let m = t.div_euclid(60_000);
            let e = by_minute.entry(m).or_insert(Minute {
                minute: m,
                ..Minute::default()
            });
            if sync {
                e.syncs += 1;
            } else {
                e.callbacks += 1;
            }
        }
    }
    Ok(by_minute.into_values().collect())
}

pub(super) async fn member_summary(
    pool: &PgPool,
    openid: &str,
    day: i64,
) -> R<Option<MemberSummary>> {
    let Some(r) = sqlx::query(
        "SELECT m.balance, m.authorized, m.auth_state, m.auth_source, m.auth_learned_at,
                (SELECT COALESCE(SUM(points), 0)::BIGINT FROM ledger l WHERE l.openid = m.openid AND l.day = $2 AND l.kind = 'credit'),
                (SELECT COUNT(*) FROM payments p WHERE p.openid = m.openid AND p.not_credited = 1),
                (SELECT appid FROM payments p WHERE p.openid = m.openid ORDER BY p.created_at DESC LIMIT 1)
         FROM members m WHERE m.openid = $1",
    )
    .bind(openid)
    .bind(day)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let nonempty = |s: String| Some(s).filter(|s| !s.is_empty());
    Ok(Some(MemberSummary {
        openid: openid.to_string(),
        balance: r.try_get(0)?,
        authorization: AuthorizationView {
            state: match r.try_get::<Option<i64>, _>(1)? {
                Some(1) => "authorized",
                Some(_) => "not_authorized",
                None => "unknown",
            }
            .to_string(),
            wechat_state: nonempty(r.try_get(2)?),
            source: nonempty(r.try_get(3)?),
            learned_at: r.try_get(4)?,
        },
        credited_today: r.try_get(5)?,
        not_credited_payments: r.try_get(6)?,
        appid: r.try_get(7)?,
    }))
}

pub(super) async fn ledger_page(
    pool: &PgPool,
    openid: &str,
    before: Option<i64>,
    limit: i64,
) -> R<Vec<LedgerItem>> {
    sqlx::query(
        "SELECT id, created_at, kind, points, balance_after, transaction_id, refund_id, rule FROM ledger
         WHERE openid = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(openid)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(LedgerItem {
            id: r.try_get(0)?,
            created_at: r.try_get(1)?,
            kind: r.try_get(2)?,
            points: r.try_get(3)?,
            balance_after: r.try_get(4)?,
            reference: r.try_get(5)?,
            refund_id: r.try_get(6)?,
            rule: rule(r.try_get(7)?),
        })
    })
    .collect()
}

pub(super) async fn stale_members(
    pool: &PgPool,
    learned_before_ms: i64,
    after: &str,
    limit: i64,
) -> R<Vec<StaleMember>> {
    sqlx::query(
        "SELECT m.openid,
                (SELECT p.appid FROM payments p WHERE p.openid = m.openid ORDER BY p.created_at DESC LIMIT 1)
         FROM members m
         WHERE m.openid > $1 AND (m.auth_learned_at IS NULL OR m.auth_learned_at < $2)
         ORDER BY m.openid COLLATE \"C\" LIMIT $3",
    )
    .bind(after)
    .bind(learned_before_ms)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(StaleMember {
            openid: r.try_get(0)?,
            appid: r.try_get(1)?,
        })
    })
    .collect()
}

fn parking_view(r: PgRow) -> R<ParkingView> {
    Ok(ParkingView {
        id: r.try_get(0)?,
        openid: r.try_get(1)?,
        plate_number: r.try_get(2)?,
        state: r.try_get(3)?,
        time: r.try_get(4)?,
        appid: r.try_get(5)?,
        brandid: r.try_get(6)?,
        created_at: r.try_get(7)?,
        relay: r.try_get(8)?,
        attempts: r.try_get(9)?,
        last_error: r
            .try_get::<Option<String>, _>(10)?
            .map(|e| describe_failure(&e)),
        relayed_at: r.try_get(11)?,
    })
}

pub(super) async fn parking(pool: &PgPool, id: i64) -> R<Option<ParkingView>> {
    sqlx::query(
        "SELECT p.id, p.openid, p.plate_number, p.state, p.time, p.appid, p.brandid, p.created_at,
                o.state, o.attempts, o.last_error, o.done_at
         FROM parkings p JOIN outbox o ON o.transaction_id = 'parking:' || p.id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .map(parking_view)
    .transpose()
}
