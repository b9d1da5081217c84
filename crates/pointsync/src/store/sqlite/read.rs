//! Operator and metrics queries, on the reader connection.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::write::one;
use crate::store::{
    Audit, AuthorizationView, InboxView, LedgerEntry, LedgerItem, MemberSummary, MemberView,
    Minute, ParkedSync, ParkingView, StaleMember, Status, describe_failure,
};

fn counts(c: &Connection, sql: &str) -> rusqlite::Result<BTreeMap<String, i64>> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    rows.collect()
}

fn strings(c: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = c.prepare(sql)?;
    let rows = st.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// Sync rows not done, by state: a range of the `(state, due_at)` index, proportional to the
/// backlog, not the history.
pub(super) fn backlog(c: &Connection) -> rusqlite::Result<BTreeMap<String, i64>> {
    counts(
        c,
        "SELECT state, COUNT(*) FROM outbox WHERE state IN ('pending', 'inflight', 'parked', 'dead') GROUP BY state",
    )
}

pub(super) fn status(c: &Connection) -> rusqlite::Result<Status> {
    let oldest_pending_at: Option<i64> = one(
        c,
        "SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'inflight')",
        [],
        |r| r.get(0),
    )?;
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
}

pub(super) fn member(c: &Connection, openid: String) -> rusqlite::Result<Option<MemberView>> {
    let m: Option<(Option<i64>, i64)> = one(
        c,
        "SELECT authorized, balance FROM members WHERE openid = ?",
        params![openid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?;
    let Some((authorized, balance)) = m else {
        return Ok(None);
    };
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
}

pub(super) fn audit(c: &Connection) -> rusqlite::Result<Audit> {
    // a payment credited on its member's manual application has two credit entries (0, then
    // the points): their sum is what it earned
    let mut st = c.prepare(
        "SELECT transaction_id, SUM(points) FROM ledger WHERE kind = 'credit' GROUP BY transaction_id",
    )?;
    let credits: BTreeMap<String, i64> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let (debits, points_deducted): (i64, i64) = one(
        c,
        "SELECT COUNT(*), COALESCE(-SUM(points), 0) FROM ledger WHERE kind = 'debit'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut st =
        c.prepare("SELECT done_at - created_at FROM outbox WHERE state = 'done' ORDER BY 1")?;
    let sync_latencies_ms = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(Audit {
        points_issued: credits.values().sum(),
        credits,
        debits,
        points_deducted,
        sync_latencies_ms,
        unbalanced_members: strings(
            c,
            "SELECT m.openid FROM members m LEFT JOIN (SELECT openid, SUM(points) AS total FROM ledger GROUP BY openid) l
             ON l.openid = m.openid WHERE m.balance != COALESCE(l.total, 0)",
        )?,
        payments_without_sync: strings(
            c,
            "SELECT p.transaction_id FROM payments p LEFT JOIN outbox o ON o.transaction_id = p.transaction_id WHERE o.id IS NULL AND p.not_credited = 0",
        )?,
        not_credited: strings(
            c,
            "SELECT transaction_id FROM payments WHERE not_credited = 1",
        )?,
        held_refunds: one(c, "SELECT COUNT(*) FROM inbox WHERE status = 'held'", [], |r| {
            r.get(0)
        })?,
    })
}

pub(super) fn recent_callbacks(c: &Connection, limit: i64) -> rusqlite::Result<Vec<InboxView>> {
    let mut st = c.prepare_cached(
        "SELECT received_at, event_type, transaction_id, refund_id, status, deliveries, note FROM inbox ORDER BY id DESC LIMIT ?",
    )?;
    let rows = st.query_map(params![limit], |r| {
        Ok(InboxView {
            received_at: r.get(0)?,
            event_type: r.get(1)?,
            transaction_id: r.get(2)?,
            refund_id: r.get(3)?,
            status: r.get(4)?,
            deliveries: r.get(5)?,
            note: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// Unix-ms times from the newest `LIMIT 50000` rows `sql` selects, at or after `since_ms`.
fn recent_times(c: &Connection, sql: &str, since_ms: i64) -> rusqlite::Result<Vec<i64>> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map(params![since_ms], |r| r.get::<_, i64>(0))?;
    rows.collect()
}

/// Per-minute counts from the newest rows only (by id, so no index on times is needed).
pub(super) fn activity(c: &Connection, since_ms: i64) -> rusqlite::Result<Vec<Minute>> {
    let mut by_minute: BTreeMap<i64, Minute> = BTreeMap::new();
    let mut bump = |t: i64, f: fn(&mut Minute)| {
        let m = t.div_euclid(60_000);
        f(by_minute.entry(m).or_insert(Minute {
            minute: m,
            ..Minute::default()
        }));
    };
    for t in recent_times(
        c,
        "SELECT received_at FROM (SELECT received_at FROM inbox ORDER BY id DESC LIMIT 50000) WHERE received_at >= ?",
        since_ms,
    )? {
        bump(t, |m| m.callbacks += 1);
    }
    for t in recent_times(
        c,
        "SELECT done_at FROM (SELECT done_at FROM outbox WHERE state = 'done' ORDER BY id DESC LIMIT 50000) WHERE done_at >= ?",
        since_ms,
    )? {
        bump(t, |m| m.syncs += 1);
    }
    Ok(by_minute.into_values().collect())
}

/// A member's summary in one statement (one read lock, one pass): `?1` the openid, `?2` the day
/// whose credits count toward the daily cap.
pub(super) const MEMBER_SUMMARY: &str =
    "SELECT m.balance, m.authorized, m.auth_state, m.auth_source, m.auth_learned_at,
            (SELECT COALESCE(SUM(points), 0) FROM ledger l WHERE l.openid = m.openid AND l.day = ?2 AND l.kind = 'credit'),
            (SELECT COUNT(*) FROM payments p WHERE p.openid = m.openid AND p.not_credited = 1),
            (SELECT appid FROM payments p WHERE p.openid = m.openid ORDER BY p.created_at DESC LIMIT 1)
     FROM members m WHERE m.openid = ?1";

pub(super) fn member_summary(
    c: &Connection,
    openid: &str,
    day: i64,
) -> rusqlite::Result<Option<MemberSummary>> {
    type Row = (
        i64,
        Option<i64>,
        String,
        String,
        Option<i64>,
        i64,
        i64,
        Option<String>,
    );
    let m: Option<Row> = one(c, MEMBER_SUMMARY, params![openid, day], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ))
    })
    .optional()?;
    let Some((
        balance,
        authorized,
        wechat_state,
        source,
        learned_at,
        credited_today,
        not_credited_payments,
        appid,
    )) = m
    else {
        return Ok(None);
    };
    let nonempty = |s: String| Some(s).filter(|s| !s.is_empty());
    Ok(Some(MemberSummary {
        openid: openid.to_string(),
        balance,
        authorization: AuthorizationView {
            state: match authorized {
                Some(1) => "authorized",
                Some(_) => "not_authorized",
                None => "unknown",
            }
            .to_string(),
            wechat_state: nonempty(wechat_state),
            source: nonempty(source),
            learned_at,
        },
        credited_today,
        not_credited_payments,
        appid,
    }))
}

pub(super) fn ledger_page(
    c: &Connection,
    openid: &str,
    before: Option<i64>,
    limit: i64,
) -> rusqlite::Result<Vec<LedgerItem>> {
    let mut st = c.prepare_cached(
        "SELECT id, created_at, kind, points, balance_after, transaction_id, refund_id, rule FROM ledger
         WHERE openid = ? AND id < ? ORDER BY id DESC LIMIT ?",
    )?;
    let rows = st.query_map(params![openid, before.unwrap_or(i64::MAX), limit], |r| {
        let rule: String = r.get(7)?;
        Ok(LedgerItem {
            id: r.get(0)?,
            created_at: r.get(1)?,
            kind: r.get(2)?,
            points: r.get(3)?,
            balance_after: r.get(4)?,
            reference: r.get(5)?,
            refund_id: r.get(6)?,
            rule: serde_json::from_str(&rule).unwrap_or(Value::String(rule)),
        })
    })?;
    rows.collect()
}

pub(super) fn stale_members(
    c: &Connection,
    learned_before_ms: i64,
    after: &str,
    limit: i64,
) -> rusqlite::Result<Vec<StaleMember>> {
    let mut st = c.prepare_cached(
        "SELECT m.openid,
                (SELECT p.appid FROM payments p WHERE p.openid = m.openid ORDER BY p.created_at DESC LIMIT 1)
         FROM members m
         WHERE m.openid > ? AND (m.auth_learned_at IS NULL OR m.auth_learned_at < ?)
         ORDER BY m.openid LIMIT ?",
    )?;
    let rows = st.query_map(params![after, learned_before_ms, limit], |r| {
        Ok(StaleMember {
            openid: r.get(0)?,
            appid: r.get(1)?,
        })
    })?;
    rows.collect()
}

pub(super) fn parking(c: &Connection, id: i64) -> rusqlite::Result<Option<ParkingView>> {
    one(
        c,
        "SELECT p.id, p.openid, p.plate_number, p.state, p.time, p.appid, p.brandid, p.created_at,
                o.state, o.attempts, o.last_error, o.done_at
         FROM parkings p JOIN outbox o ON o.transaction_id = 'parking:' || p.id WHERE p.id = ?",
        params![id],
        |r| {
            Ok(ParkingView {
                id: r.get(0)?,
                openid: r.get(1)?,
                plate_number: r.get(2)?,
                state: r.get(3)?,
                time: r.get(4)?,
                appid: r.get(5)?,
                brandid: r.get(6)?,
                created_at: r.get(7)?,
                relay: r.get(8)?,
                attempts: r.get(9)?,
                last_error: r
                    .get::<_, Option<String>>(10)?
                    .map(|e| describe_failure(&e)),
                relayed_at: r.get(11)?,
            })
        },
    )
    .optional()
}
