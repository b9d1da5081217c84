//! Payments and refunds: the credit, the points sync to enqueue, the refund deduction and the
//! refunds held until their payment arrives.

use serde_json::json;
use wechatpay::businesscircle::PointsNotifyRequest;
use wechatpay::notify::{Event, MALL_REFUND_SUCCESS, MallRefund, MallTransaction};

use super::{
    InboxKey, InboxStatus, Incoming, IngestContext, Ingested, LedgerRow, MemberWrite, OutboxRow,
    PaymentCredit, PaymentRow, PaymentUpdate, Plan, Snapshot, china_day, china_time, inbox_row,
};
use crate::rules::{Authorization, Payment, refund_deduction};

/// A stored payment, as refunds need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentSnapshot {
    /// Member.
    pub openid: String,
    /// Fen paid.
    pub amount: i64,
    /// Points credited.
    pub credited_points: i64,
    /// Refunded so far (fen).
    pub refunded_amount: i64,
    /// Points refunds were entitled to deduct so far.
    pub entitled_debit: i64,
    /// Kept not credited (member not authorized), no points sync sent.
    pub not_credited: bool,
}

/// The effects of one refund on a stored payment and its member's balance: the debit entry, the
/// payment's new totals and the balance after. Refunds never take a balance below zero unless
/// `rules.allow_negative_balance`; a shortfall is recorded in the entry.
pub fn refund_effects(
    r: &MallRefund,
    p: &PaymentSnapshot,
    balance: i64,
    ctx: &IngestContext<'_>,
) -> (LedgerRow, PaymentUpdate, i64) {
    let entitled = refund_deduction(
        p.credited_points,
        p.amount,
        p.refunded_amount,
        r.refund_amount,
        p.entitled_debit,
    );
    let debit = if ctx.rules.allow_negative_balance {
        entitled
    } else {
        entitled.min(balance.max(0))
    };
    let balance_after = balance - debit;
    let mut rule = json!({
        "rules": ctx.rules.version(), "reason": "refund", "credit": p.credited_points,
        "pay_amount": p.amount, "refunded_before": p.refunded_amount,
        "refund_amount": r.refund_amount, "entitled": entitled, "debited": debit,
    });
    if debit < entitled {
        rule["shortfall"] = json!(entitled - debit);
    }
    if r.pay_amount != p.amount {
        rule["pay_amount_in_callback"] = json!(r.pay_amount);
    }
    let entry = LedgerRow {
        openid: p.openid.clone(),
        kind: "debit",
        transaction_id: r.transaction_id.clone(),
        refund_id: r.refund_id.clone(),
        points: -debit,
        balance_after,
        day: china_day(ctx.now_ms),
        rule,
        created_at: ctx.now_ms,
    };
    let update = PaymentUpdate {
        transaction_id: r.transaction_id.clone(),
        refunded_amount: (p.refunded_amount + r.refund_amount).min(p.amount),
        entitled_debit: p.entitled_debit + entitled,
    };
    (entry, update, balance_after)
}

fn rejected(n: &Incoming, key: InboxKey, openid: &str, why: String, now_ms: i64) -> Plan {
    let row = inbox_row(n, &key, openid, InboxStatus::Rejected, &why, now_ms);
    Plan::only(Ingested::Rejected(why), key, Some(row))
}

/// The points sync of a credited payment, validated as WeChat will: a request that fails the
/// field rules is kept, parked with the reason, instead of sent to fail.
fn points_sync(
    t: &MallTransaction,
    points: i64,
    remarks: Option<&str>,
    total: i64,
    ctx: &IngestContext<'_>,
) -> OutboxRow {
    let mut req = PointsNotifyRequest::new(
        &t.transaction_id,
        &t.appid,
        &t.openid,
        points > 0,
        points,
        china_time(ctx.now_ms),
    )
    .total_points(total);
    if let Some(r) = remarks {
        req = req.no_points_remarks(r);
    }
    if ctx.partner_mode {
        req = req.sub_mchid(&t.mchid);
    }
    let raw = req.to_request();
    let (method, path) = (
        http::Method::POST.to_string(),
        wechatpay::businesscircle::POINTS_NOTIFY_PATH.to_string(),
    );
    match raw {
        Ok(r) => OutboxRow {
            transaction_id: t.transaction_id.clone(),
            method: r.method.to_string(),
            path: r.path_and_query,
            body: String::from_utf8_lossy(&r.body).into_owned(),
            invalid: None,
            created_at: ctx.now_ms,
        },
        Err(e) => OutboxRow {
            transaction_id: t.transaction_id.clone(),
            method,
            path,
            // a plain struct always serialises; kept so an operator sees what would be sent
            body: serde_json::to_string(&req).unwrap_or_default(),
            invalid: Some(format!("not sent: the points sync is invalid: {e}")),
            created_at: ctx.now_ms,
        },
    }
}

pub(super) fn payment(
    n: &Incoming,
    t: &MallTransaction,
    key: InboxKey,
    snap: &Snapshot,
    ctx: &IngestContext<'_>,
) -> Plan {
    let problem = if t.amount <= 0 {
        Some(format!("amount {} is not positive", t.amount))
    } else if t.transaction_id.is_empty() || t.openid.is_empty() || t.appid.is_empty() {
        Some("transaction_id, openid or appid is empty".to_string())
    } else {
        None
    };
    if let Some(p) = problem {
        return rejected(n, key, &t.openid, p, ctx.now_ms);
    }
    let d = ctx.rules.decide(&Payment {
        amount_fen: t.amount,
        shop_number: &t.shop_number,
        authorization: snap.member.authorization,
        credited_today: snap.credited_today,
    });
    let mut balance = snap.member.balance + d.points;
    let row = inbox_row(n, &key, &t.openid, InboxStatus::Applied, "", ctx.now_ms);
    let mut plan = Plan::only(Ingested::Payment { points: d.points }, key, Some(row));
    plan.ledger.push(LedgerRow {
        openid: t.openid.clone(),
        kind: "credit",
        transaction_id: t.transaction_id.clone(),
        refund_id: String::new(),
        points: d.points,
        balance_after: balance,
        day: china_day(ctx.now_ms),
        rule: d.explanation.clone(),
        created_at: ctx.now_ms,
    });
    // a member not authorized: WeChat refuses a points sync for her, so none is sent; the
    // payment is kept not credited until she applies for its points (commit_tag)
    if !d.not_authorized {
        plan.outbox = Some(points_sync(
            t,
            d.points,
            d.no_points_remarks.as_deref(),
            balance,
            ctx,
        ));
    }
    // refunds that arrived before this payment
    let mut stored = PaymentSnapshot {
        openid: t.openid.clone(),
        amount: t.amount,
        credited_points: d.points,
        refunded_amount: 0,
        entitled_debit: 0,
        not_credited: d.not_authorized,
    };
    for held in &snap.held_refunds {
        let Ok(Event::MallRefund(r)) = Event::decode(MALL_REFUND_SUCCESS, held.resource.as_bytes())
        else {
            continue;
        };
        let (entry, update, after) = refund_effects(&r, &stored, balance, ctx);
        plan.ledger.push(entry);
        stored.refunded_amount = update.refunded_amount;
        stored.entitled_debit = update.entitled_debit;
        balance = after;
        plan.released.push(held.inbox_id);
    }
    plan.members.push(MemberWrite::Balance {
        openid: t.openid.clone(),
        balance,
    });
    plan.payment = Some(PaymentRow {
        transaction_id: t.transaction_id.clone(),
        openid: t.openid.clone(),
        appid: t.appid.clone(),
        mchid: t.mchid.clone(),
        shop_number: t.shop_number.clone(),
        amount: t.amount,
        credited_points: d.points,
        refunded_amount: stored.refunded_amount,
        entitled_debit: stored.entitled_debit,
        not_credited: d.not_authorized,
        created_at: ctx.now_ms,
    });
    plan
}

/// The same transaction pushed again with `commit_tag`: the member applied for its points in
/// WeChat's plugin. A payment kept not credited is credited now (on what is left after refunds)
/// and its points sync enqueued, unless the member is known not to be authorized; a payment
/// credited before is a duplicate.
pub(super) fn manual(
    n: &Incoming,
    t: &MallTransaction,
    p: &PaymentSnapshot,
    key: InboxKey,
    snap: &Snapshot,
    ctx: &IngestContext<'_>,
) -> Plan {
    let plain = InboxKey {
        refund_id: String::new(),
        ..key.clone()
    };
    // WeChat lets only an authorized member apply; a member the service knows as not authorized
    // (her state just queried, in `query` mode) is not credited
    if !p.not_credited || snap.member.authorization == Authorization::NotAuthorized {
        return Plan::duplicate(plain);
    }
    let d = ctx.rules.decide(&Payment {
        amount_fen: p.amount - p.refunded_amount,
        shop_number: &t.shop_number,
        authorization: Authorization::Authorized,
        credited_today: snap.credited_today,
    });
    let balance = snap.member.balance + d.points;
    let note = format!("manual application: credited {} points", d.points);
    let row = inbox_row(n, &key, &p.openid, InboxStatus::Applied, &note, ctx.now_ms);
    let mut rule = d.explanation.clone();
    rule["manual_application"] = json!(t.commit_tag);
    let mut plan = Plan::only(Ingested::ManualCredit { points: d.points }, key, Some(row));
    plan.ledger.push(LedgerRow {
        openid: p.openid.clone(),
        kind: "credit",
        transaction_id: t.transaction_id.clone(),
        refund_id: MANUAL_CREDIT.to_string(),
        points: d.points,
        balance_after: balance,
        day: china_day(ctx.now_ms),
        rule,
        created_at: ctx.now_ms,
    });
    plan.members.push(MemberWrite::Balance {
        openid: p.openid.clone(),
        balance,
    });
    plan.payment_credit = Some(PaymentCredit {
        transaction_id: t.transaction_id.clone(),
        credited_points: d.points,
    });
    plan.outbox = Some(points_sync(
        t,
        d.points,
        d.no_points_remarks.as_deref(),
        balance,
        ctx,
    ));
    plan
}

/// The ledger's `refund_id` of a manual application's credit: one per transaction.
pub const MANUAL_CREDIT: &str = "manual";

pub(super) fn refund(
    n: &Incoming,
    r: &MallRefund,
    key: InboxKey,
    snap: &Snapshot,
    ctx: &IngestContext<'_>,
) -> Plan {
    if r.refund_amount <= 0 || r.refund_id.is_empty() || r.transaction_id.is_empty() {
        let why = format!(
            "refund_amount {} or empty refund_id/transaction_id",
            r.refund_amount
        );
        return rejected(n, key, &r.openid, why, ctx.now_ms);
    }
    let Some(p) = &snap.payment else {
        let row = inbox_row(n, &key, &r.openid, InboxStatus::Held, "", ctx.now_ms);
        return Plan::only(Ingested::Held, key, Some(row));
    };
    let (entry, update, balance) = refund_effects(r, p, snap.member.balance, ctx);
    let row = inbox_row(n, &key, &r.openid, InboxStatus::Applied, "", ctx.now_ms);
    let mut plan = Plan::only(
        Ingested::Refund {
            points: -entry.points,
        },
        key,
        Some(row),
    );
    plan.members.push(MemberWrite::Balance {
        openid: p.openid.clone(),
        balance,
    });
    plan.ledger.push(entry);
    plan.payment_update = Some(update);
    plan
}
