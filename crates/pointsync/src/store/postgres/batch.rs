//! The writes of several callbacks' plans in one statement, inside a group's transaction
//! (`group.rs`): the callbacks read together, whose writes touch no row another one's do. Each
//! table gets one multi-row write fed by arrays, so a group pays for one statement's start, its
//! relations' locks and one round trip instead of one per callback; each callback's writes stay
//! conditional on its own inbox row, so a key another transaction took meanwhile writes nothing
//! of that callback's (it is then a duplicate) and nothing of another's is lost.

use std::collections::{HashMap, HashSet};

use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::DB_NOW_MS;
use super::write::{
    AUTHORIZATION_UPSERT, BALANCE_UPSERT, OUTBOX_REPLACE, PgLease, combinable, count_delivery,
    leased_on_receipt, outbox_state, payment_written, push_bucket, sync_lease,
};
use crate::domain::{
    InboxKey, InboxRow, LedgerRow, MemberWrite, OutboxRow, PaymentCredit, PaymentRow,
    PaymentUpdate, Plan,
};
use crate::store::{Claimed, Ingested};

type R<T> = Result<T, sqlx::Error>;

/// Whether `plans` can share one statement: each could go in one alone ([`combinable`]), and no
/// two name the same inbox key, member, payment or sync (a multi-row upsert may not touch one row
/// twice, and every part of a statement reads the snapshot it started with).
pub(super) fn batchable<'p>(plans: impl IntoIterator<Item = &'p Plan>) -> bool {
    let mut names: HashSet<(u8, &str)> = HashSet::new();
    let mut keys: HashSet<&InboxKey> = HashSet::new();
    plans.into_iter().all(|p| {
        combinable(p)
            && p.inbox.as_ref().is_some_and(|r| keys.insert(&r.key))
            && p.members.iter().all(|m| names.insert((1, m.openid())))
            && payment_written(p).into_iter().all(|t| names.insert((2, t)))
            && p.outbox
                .as_ref()
                .is_none_or(|o| names.insert((3, o.transaction_id.as_str())))
    })
}

// What each plan writes to one table, item by item.
fn ledger(p: &Plan) -> std::slice::Iter<'_, LedgerRow> {
    p.ledger.iter()
}
fn payment(p: &Plan) -> std::option::Iter<'_, PaymentRow> {
    p.payment.iter()
}
fn credit(p: &Plan) -> std::option::Iter<'_, PaymentCredit> {
    p.payment_credit.iter()
}
fn update(p: &Plan) -> std::option::Iter<'_, PaymentUpdate> {
    p.payment_update.iter()
}
fn outbox(p: &Plan) -> std::option::Iter<'_, OutboxRow> {
    p.outbox.iter()
}
fn released(p: &Plan) -> std::slice::Iter<'_, i64> {
    p.released.iter()
}

/// One array per column over the items of every plan.
fn column<'p, T, I, X>(plans: &[&'p Plan], items: fn(&'p Plan) -> I, f: fn(&'p X) -> T) -> Vec<T>
where
    I: Iterator<Item = &'p X>,
    X: 'p,
{
    plans.iter().flat_map(|p| items(p).map(f)).collect()
}

/// Each item's plan's place (`n`, from 1), the array that ties an item to its plan's inbox row.
fn places<'p, I, X>(plans: &[&'p Plan], items: fn(&'p Plan) -> I) -> Vec<i64>
where
    I: Iterator<Item = &'p X>,
    X: 'p,
{
    plans
        .iter()
        .enumerate()
        .flat_map(|(n, p)| items(p).map(move |_| n as i64 + 1))
        .collect()
}

/// Pushes `UNNEST(a::T[], b::U[], …)`: one bound array per column, each cast to its type.
macro_rules! unnest {
    ($q:expr; $($bind:expr => $ty:literal),+ $(,)?) => {{
        let mut columns = $q.separated(", ");
        columns.push_unseparated("UNNEST(");
        $(
            columns.push_bind($bind).push_unseparated(concat!("::", $ty, "[]"));
        )+
        $q.push(")");
    }};
}

/// A plan of a group, with its callback's time and the lease its sync may take on receipt.
pub(super) struct Batched<'a> {
    pub plan: &'a Plan,
    pub now_ms: i64,
    pub lease: Option<&'a PgLease<'a>>,
}

/// Applies [`batchable`] plans in one statement; returns, in their order, what each stored (a
/// plan whose inbox key another transaction took meanwhile is a duplicate, its delivery counted)
/// and its sync if leased on receipt: as written alone ([`super::write::apply`]), the syncs whose
/// callers asked are leased as their first attempt, on the database's clock, in order, as many as
/// the instances' shared rate has tokens for now (the rate's row taken once for all of them, and
/// skipped if another transaction holds it). The leases all share one rate (`qps`): a group's
/// callbacks are one instance's.
pub(super) async fn apply_batch(
    c: &mut PgConnection,
    batch: &[Batched<'_>],
) -> R<Vec<(Ingested, Option<Claimed>)>> {
    let plans: Vec<&Plan> = batch.iter().map(|b| b.plan).collect();
    let now_ms: Vec<i64> = batch.iter().map(|b| b.now_ms).collect();
    let plans = plans.as_slice();
    let rows: Vec<_> = plans.iter().filter_map(|p| p.inbox.as_ref()).collect();
    if rows.len() != plans.len() {
        return Err(sqlx::Error::Protocol(
            "a plan without an inbox row was batched".into(),
        ));
    }
    let text = |f: fn(&InboxRow) -> &str| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let mut q = QueryBuilder::<Postgres>::new("WITH v AS MATERIALIZED (SELECT * FROM ");
    unnest!(q;
        text(|r| &r.key.event_type) => "TEXT",
        text(|r| &r.key.transaction_id) => "TEXT",
        text(|r| &r.key.refund_id) => "TEXT",
        text(|r| &r.notification_id) => "TEXT",
        text(|r| &r.openid) => "TEXT",
        text(|r| &r.resource) => "TEXT",
        text(|r| r.status.as_str()) => "TEXT",
        text(|r| &r.note) => "TEXT",
        rows.iter().map(|r| r.received_at).collect::<Vec<_>>() => "BIGINT",
    );
    q.push(
        " WITH ORDINALITY AS v (event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at, n)),
         i AS (INSERT INTO inbox (event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at)
               SELECT event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at FROM v ORDER BY n
               ON CONFLICT (event_type, transaction_id, refund_id) DO NOTHING
               RETURNING event_type, transaction_id, refund_id),
         ok AS MATERIALIZED (SELECT v.n FROM v JOIN i USING (event_type, transaction_id, refund_id))",
    );
    const STORED: &str = " WHERE x.n IN (SELECT n FROM ok)";
    // member writes by kind: each one's plan's place, its columns, its callback's time
    let (mut bn, mut bo, mut bb, mut bt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut an, mut ao, mut aa, mut at, mut ac, mut aw) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (n, p) in plans.iter().enumerate() {
        for m in &p.members {
            match m {
                MemberWrite::Balance { openid, balance } => {
                    bn.push(n as i64 + 1);
                    bo.push(openid.as_str());
                    bb.push(*balance);
                    bt.push(now_ms[n]);
                }
                MemberWrite::Authorization {
                    openid,
                    authorized,
                    auth_type,
                    code,
                } => {
                    an.push(n as i64 + 1);
                    ao.push(openid.as_str());
                    aa.push(i64::from(*authorized));
                    at.push(auth_type.as_str());
                    ac.push(code.as_str());
                    aw.push(now_ms[n]);
                }
            }
        }
    }
    if !bn.is_empty() {
        q.push(
            ", mb AS (INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at)
                SELECT x.openid, NULL::BIGINT, '', '', x.balance, x.now FROM ",
        );
        unnest!(q; bn => "BIGINT", bo => "TEXT", bb => "BIGINT", bt => "BIGINT");
        q.push(" AS x (n, openid, balance, now)")
            .push(STORED)
            .push(BALANCE_UPSERT)
            .push(")");
    }
    if !an.is_empty() {
        q.push(
            ", ma AS (INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at, auth_state, auth_source, auth_learned_at)
                SELECT x.openid, x.authorized, x.auth_type, x.code, 0, x.now, x.auth_type, 'callback', x.now FROM ",
        );
        unnest!(q;
            an => "BIGINT", ao => "TEXT", aa => "BIGINT", at => "TEXT", ac => "TEXT", aw => "BIGINT"
        );
        q.push(" AS x (n, openid, authorized, auth_type, code, now)")
            .push(STORED)
            .push(AUTHORIZATION_UPSERT)
            .push(")");
    }
    if plans.iter().any(|p| !p.ledger.is_empty()) {
        // one INSERT, rows in the plans' order (ids follow it)
        q.push(
            ", l AS (INSERT INTO ledger (openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at)
               SELECT x.openid, x.kind, x.transaction_id, x.refund_id, x.points, x.balance_after, x.day, x.rule, x.created_at
               FROM ",
        );
        unnest!(q;
            places(plans, ledger) => "BIGINT",
            column(plans, ledger, |e| e.openid.as_str()) => "TEXT",
            column(plans, ledger, |e| e.kind) => "TEXT",
            column(plans, ledger, |e| e.transaction_id.as_str()) => "TEXT",
            column(plans, ledger, |e| e.refund_id.as_str()) => "TEXT",
            column(plans, ledger, |e| e.points) => "BIGINT",
            column(plans, ledger, |e| e.balance_after) => "BIGINT",
            column(plans, ledger, |e| e.day) => "BIGINT",
            column(plans, ledger, |e| e.rule.to_string()) => "TEXT",
            column(plans, ledger, |e| e.created_at) => "BIGINT",
        );
        q.push(
            " WITH ORDINALITY AS x (n, openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at, ord)",
        )
        .push(STORED)
        .push(" ORDER BY x.ord)");
    }
    if plans.iter().any(|p| p.payment.is_some()) {
        q.push(
            ", p AS (INSERT INTO payments (transaction_id, openid, appid, mchid, shop_number, amount, credited_points, refunded_amount, entitled_debit, not_credited, created_at)
               SELECT x.transaction_id, x.openid, x.appid, x.mchid, x.shop_number, x.amount, x.credited_points, x.refunded_amount, x.entitled_debit, x.not_credited, x.created_at
               FROM ",
        );
        unnest!(q;
            places(plans, payment) => "BIGINT",
            column(plans, payment, |x| x.transaction_id.as_str()) => "TEXT",
            column(plans, payment, |x| x.openid.as_str()) => "TEXT",
            column(plans, payment, |x| x.appid.as_str()) => "TEXT",
            column(plans, payment, |x| x.mchid.as_str()) => "TEXT",
            column(plans, payment, |x| x.shop_number.as_str()) => "TEXT",
            column(plans, payment, |x| x.amount) => "BIGINT",
            column(plans, payment, |x| x.credited_points) => "BIGINT",
            column(plans, payment, |x| x.refunded_amount) => "BIGINT",
            column(plans, payment, |x| x.entitled_debit) => "BIGINT",
            column(plans, payment, |x| i64::from(x.not_credited)) => "BIGINT",
            column(plans, payment, |x| x.created_at) => "BIGINT",
        );
        q.push(
            " AS x (n, transaction_id, openid, appid, mchid, shop_number, amount, credited_points, refunded_amount, entitled_debit, not_credited, created_at)",
        )
        .push(STORED)
        .push(")");
    }
    if plans.iter().any(|p| p.payment_credit.is_some()) {
        q.push(", pc AS (UPDATE payments SET credited_points = x.credited_points, not_credited = 0 FROM ");
        unnest!(q;
            places(plans, credit) => "BIGINT",
            column(plans, credit, |x| x.transaction_id.as_str()) => "TEXT",
            column(plans, credit, |x| x.credited_points) => "BIGINT",
        );
        q.push(" AS x (n, transaction_id, credited_points)")
            .push(STORED)
            .push(" AND payments.transaction_id = x.transaction_id AND payments.not_credited = 1)");
    }
    if plans.iter().any(|p| p.payment_update.is_some()) {
        q.push(", pu AS (UPDATE payments SET refunded_amount = x.refunded_amount, entitled_debit = x.entitled_debit FROM ");
        unnest!(q;
            places(plans, update) => "BIGINT",
            column(plans, update, |x| x.transaction_id.as_str()) => "TEXT",
            column(plans, update, |x| x.refunded_amount) => "BIGINT",
            column(plans, update, |x| x.entitled_debit) => "BIGINT",
        );
        q.push(" AS x (n, transaction_id, refunded_amount, entitled_debit)")
            .push(STORED)
            .push(" AND payments.transaction_id = x.transaction_id)");
    }
    // the lease each sync takes on receipt, in the order of the syncs' rows
    let leases: Vec<Option<&PgLease<'_>>> = batch
        .iter()
        .filter(|b| b.plan.outbox.is_some())
        .map(|b| sync_lease(b.plan, b.lease))
        .collect();
    let leasing = leases.iter().flatten().next();
    if !leases.is_empty() {
        q.push(", ox AS MATERIALIZED (SELECT x.* FROM ");
        unnest!(q;
            places(plans, outbox) => "BIGINT",
            column(plans, outbox, |o| o.transaction_id.as_str()) => "TEXT",
            column(plans, outbox, |o| o.method.as_str()) => "TEXT",
            column(plans, outbox, |o| o.path.as_str()) => "TEXT",
            column(plans, outbox, |o| o.body.as_str()) => "TEXT",
            column(plans, outbox, outbox_state) => "TEXT",
            column(plans, outbox, |o| o.invalid.as_deref()) => "TEXT",
            column(plans, outbox, |o| o.created_at) => "BIGINT",
            leases.iter().map(|l| l.map(|l| l.owner)).collect::<Vec<_>>() => "TEXT",
            leases.iter().map(|l| l.map(|l| l.lease_ms)).collect::<Vec<_>>() => "BIGINT",
        );
        q.push(
            " AS x (n, transaction_id, method, path, payload, state, last_error, created_at, lease_owner, lease_ms)",
        )
        .push(STORED)
        .push(")");
        // the stored syncs asked for, in order, leased as many as the shared rate has tokens for
        // now (all without one), its row never waited for; the rest stay pending for a claim
        if let Some(l) = leasing {
            q.push(
                ", lw AS MATERIALIZED (SELECT n, row_number() OVER (ORDER BY n) AS k FROM ox WHERE lease_owner IS NOT NULL)",
            );
            if l.qps > 0.0 {
                const GRANTED: &str =
                    "LEAST(GREATEST(floor(b.available)::BIGINT, 0), (SELECT COUNT(*) FROM lw))";
                q.push(format_args!(
                    ", tok AS (UPDATE rate_limit SET tokens = b.available - {GRANTED}, at_ms = b.now FROM "
                ));
                push_bucket(&mut q, l.qps);
                q.push(format_args!(
                    " WHERE rate_limit.name = 'wechat' AND EXISTS (SELECT 1 FROM lw) RETURNING {GRANTED} AS granted)"
                ));
            } else {
                q.push(", tok AS (SELECT COUNT(*) AS granted FROM lw)");
            }
            q.push(", ld AS MATERIALIZED (SELECT n FROM lw WHERE k <= (SELECT granted FROM tok))");
        }
        q.push(
            ", o AS (INSERT INTO outbox (transaction_id, method, path, payload, state, last_error, due_at, created_at, lease_owner, lease_until, attempts)
               SELECT x.transaction_id, x.method, x.path, x.payload, ",
        );
        if leasing.is_some() {
            const LEASED: &str = "x.n IN (SELECT n FROM ld)";
            q.push(format_args!(
                "CASE WHEN {LEASED} THEN 'inflight' ELSE x.state END, x.last_error, x.created_at, x.created_at,
                 CASE WHEN {LEASED} THEN x.lease_owner END, CASE WHEN {LEASED} THEN {DB_NOW_MS} + x.lease_ms END,
                 CASE WHEN {LEASED} THEN 1 ELSE 0 END"
            ));
        } else {
            q.push("x.state, x.last_error, x.created_at, x.created_at, NULL, NULL::BIGINT, 0");
        }
        q.push(" FROM ox x ORDER BY x.n")
            .push(OUTBOX_REPLACE)
            .push(" RETURNING id, transaction_id, state)");
    }
    if plans.iter().any(|p| !p.released.is_empty()) {
        q.push(", r AS (UPDATE inbox SET status = 'applied', note = 'applied when its payment arrived' WHERE id IN (SELECT x.id FROM ");
        unnest!(q;
            places(plans, released) => "BIGINT",
            column(plans, released, |id| *id) => "BIGINT",
        );
        q.push(" AS x (n, id)").push(STORED).push("))");
    }
    // the places stored, then the syncs leased (their place unknown to `RETURNING`: by key)
    q.push(" SELECT n, NULL::BIGINT, NULL::TEXT FROM ok");
    if leasing.is_some() {
        q.push(" UNION ALL SELECT NULL, id, transaction_id FROM o WHERE state = 'inflight'");
    }
    let rows: Vec<(Option<i64>, Option<i64>, Option<String>)> =
        q.build_query_as().fetch_all(&mut *c).await?;
    let stored: HashSet<i64> = rows.iter().filter_map(|r| r.0).collect();
    let leased: HashMap<&str, i64> = rows
        .iter()
        .filter_map(|(_, id, t)| Some((t.as_deref()?, (*id)?)))
        .collect();
    let mut out = Vec::with_capacity(plans.len());
    for (n, p) in plans.iter().enumerate() {
        if stored.contains(&(n as i64 + 1)) {
            let claimed = p.outbox.as_ref().and_then(|o| {
                let id = leased.get(o.transaction_id.as_str())?;
                Some(leased_on_receipt(*id, o))
            });
            out.push((p.outcome.clone(), claimed));
        } else {
            count_delivery(c, &p.key).await?;
            out.push((Ingested::Duplicate, None));
        }
    }
    Ok(out)
}
