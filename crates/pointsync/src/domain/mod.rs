//! The business decisions, without a database: what a verified callback or an operator's
//! adjustment does, as a pure function of (the event, a [`Snapshot`] of what is stored about that
//! member and transaction, the rules, the time). The result is a [`Plan`]: the rows to write. A
//! store reads the snapshot and applies the plan in one transaction; it decides nothing.
//!
//! Exactly-once rests on the store, not on the snapshot: every plan that has an effect carries the
//! callback's inbox row, and a store applies the rest only if that row's natural key was free.

mod adjust;
mod parking;
mod payment;

use serde_json::Value;
use wechatpay::notify::{AuthType, Event};

pub use adjust::{AdjustSnapshot, AdjustWrite, Adjusted, Adjustment, adjust};
pub use parking::{NewParking, ParkingError, parking_request, parking_sync_key};
pub use payment::{MANUAL_CREDIT, PaymentSnapshot, refund_effects};

use crate::rules::{Authorization, Rules};

/// The China-time day number of a Unix-ms instant (daily caps count in China time).
pub fn china_day(now_ms: i64) -> i64 {
    (now_ms / 1000 + 8 * 3600).div_euclid(86_400)
}

/// RFC 3339 in China time, as WeChat writes times.
pub fn china_time(now_ms: i64) -> String {
    wechatpay::clock::rfc3339_china(now_ms / 1000)
}

/// A verified, decrypted callback to store.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// WeChat's notification id.
    pub notification_id: String,
    /// The event type.
    pub event_type: String,
    /// The decrypted resource, as decrypted.
    pub plaintext: String,
    /// The typed event.
    pub event: Event,
}

impl From<wechatpay::notify::Notification> for Incoming {
    fn from(n: wechatpay::notify::Notification) -> Self {
        Self {
            notification_id: n.id,
            event_type: n.event_type,
            plaintext: n.plaintext,
            event: n.event,
        }
    }
}

/// What storing a callback did. Every variant is committed before the caller answers 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// New payment: credited (possibly 0 points) and a points sync enqueued.
    Payment {
        /// Points credited.
        points: i64,
    },
    /// New refund applied: points deducted.
    Refund {
        /// Points deducted.
        points: i64,
    },
    /// Refund of a payment not seen yet: held until the payment arrives.
    Held,
    /// A payment kept not credited (its member not authorized) credited now, on the member's
    /// manual application (the same transaction pushed again with `commit_tag`); its points sync
    /// enqueued.
    ManualCredit {
        /// Points credited.
        points: i64,
    },
    /// Authorization recorded.
    Authorization,
    /// Seen before (same natural key): no new effect.
    Duplicate,
    /// Verified but business-invalid: stored raw as rejected, no effect.
    Rejected(String),
    /// An event type this service does not act on: stored.
    Ignored,
}

/// How ingest behaves: the rules, the merchant mode and the time.
#[derive(Debug, Clone)]
pub struct IngestContext<'a> {
    /// Points rules.
    pub rules: &'a Rules,
    /// Partner mode: send the callback's `mchid` as `sub_mchid`.
    pub partner_mode: bool,
    /// Now, Unix milliseconds.
    pub now_ms: i64,
}

/// A callback's natural key in the inbox: payments `(MALL_TRANSACTION.SUCCESS, transaction_id,
/// '')`, refunds `(MALL_REFUND.SUCCESS, transaction_id, refund_id)`, authorizations
/// `(MALL_AUTH.ACTIVATE_CARD, openid, code:auth_type)`, other events `(event_type, notification
/// id, '')`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InboxKey {
    /// Event type.
    pub event_type: String,
    /// Transaction id (openid for authorizations, notification id for other events).
    pub transaction_id: String,
    /// Refund id (`code:auth_type` for authorizations, empty otherwise).
    pub refund_id: String,
}

/// What a store must read before deciding a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reads {
    /// The callback's natural key (is it stored already?).
    pub key: InboxKey,
    /// The member whose state and balance matter: this openid, or (`None`) the openid of the
    /// payment named by `transaction_id` (refunds).
    pub openid: Option<String>,
    /// The payment to read, with any refunds held for it.
    pub transaction_id: Option<String>,
    /// The China-time day for the member's credited-today total; `None` when no daily cap is
    /// configured, so nothing needs the total and it is not read (on a member with many credits
    /// that day, a sum over each of them).
    pub day: Option<i64>,
}

/// A member as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSnapshot {
    /// Authorization as last reported by WeChat.
    pub authorization: Authorization,
    /// Balance.
    pub balance: i64,
}

impl Default for MemberSnapshot {
    fn default() -> Self {
        Self {
            authorization: Authorization::Unknown,
            balance: 0,
        }
    }
}

/// A refund stored as held because its payment had not arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRefund {
    /// Its inbox row.
    pub inbox_id: i64,
    /// The decrypted resource, as received.
    pub resource: String,
}

/// What a store knows about the callback's member and transaction, read in the transaction that
/// will apply the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The natural key is stored already (a duplicate delivery).
    pub seen: bool,
    /// The member (default: never seen).
    pub member: MemberSnapshot,
    /// Points credited to the member on `Reads::day`.
    pub credited_today: i64,
    /// The payment, when stored.
    pub payment: Option<PaymentSnapshot>,
    /// Refunds held for this transaction, oldest first.
    pub held_refunds: Vec<HeldRefund>,
}

/// `inbox.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxStatus {
    /// Its effects are applied.
    Applied,
    /// A refund waiting for its payment.
    Held,
    /// Verified but business-invalid: kept, no effect.
    Rejected,
    /// An event type this service does not act on.
    Ignored,
}

impl InboxStatus {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Held => "held",
            Self::Rejected => "rejected",
            Self::Ignored => "ignored",
        }
    }
}

/// A new inbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    /// Natural key.
    pub key: InboxKey,
    /// WeChat's notification id.
    pub notification_id: String,
    /// The member (may be empty).
    pub openid: String,
    /// The decrypted resource.
    pub resource: String,
    /// Status.
    pub status: InboxStatus,
    /// Why (rejections).
    pub note: String,
    /// When, Unix ms.
    pub received_at: i64,
}

/// A ledger entry to write.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    /// Member.
    pub openid: String,
    /// `credit`, `debit` or `adjust`.
    pub kind: &'static str,
    /// Transaction (the reference for adjustments).
    pub transaction_id: String,
    /// Refund (debits).
    pub refund_id: String,
    /// Signed points.
    pub points: i64,
    /// Balance after.
    pub balance_after: i64,
    /// China-time day.
    pub day: i64,
    /// The rule and figures that produced it.
    pub rule: Value,
    /// When, Unix ms.
    pub created_at: i64,
}

/// A member write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberWrite {
    /// The balance (the member is created, authorization unknown, if missing).
    Balance {
        /// Member.
        openid: String,
        /// New balance.
        balance: i64,
    },
    /// WeChat's authorization callback (the member is created with balance 0 if missing).
    Authorization {
        /// Member.
        openid: String,
        /// Authorized for points.
        authorized: bool,
        /// WeChat's `auth_type`.
        auth_type: String,
        /// WeChat's card code.
        code: String,
    },
}

impl MemberWrite {
    /// The member written.
    pub fn openid(&self) -> &str {
        match self {
            Self::Balance { openid, .. } | Self::Authorization { openid, .. } => openid,
        }
    }
}

/// A new payments row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    /// Transaction.
    pub transaction_id: String,
    /// Member.
    pub openid: String,
    /// Appid.
    pub appid: String,
    /// The mall merchant.
    pub mchid: String,
    /// Store.
    pub shop_number: String,
    /// Fen.
    pub amount: i64,
    /// Points credited.
    pub credited_points: i64,
    /// Refunded so far (fen).
    pub refunded_amount: i64,
    /// Points refunds were entitled to deduct so far.
    pub entitled_debit: i64,
    /// Kept not credited because the member is not (known to be) authorized: no points sync
    /// until a manual application credits it.
    pub not_credited: bool,
    /// When, Unix ms.
    pub created_at: i64,
}

/// A payment kept not credited, credited now (a manual application).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentCredit {
    /// Transaction.
    pub transaction_id: String,
    /// Points credited.
    pub credited_points: i64,
}

/// A stored payment's refund totals after a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentUpdate {
    /// Transaction.
    pub transaction_id: String,
    /// Refunded so far (fen).
    pub refunded_amount: i64,
    /// Points refunds were entitled to deduct so far.
    pub entitled_debit: i64,
}

/// A request to send to WeChat through the outbox: validated when built, stored as the exact
/// method, path and body, sent byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The transaction (one sync each).
    pub transaction_id: String,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// JSON body.
    pub body: String,
    /// `None`: pending, due now. `Some(why)`: the request fails WeChat's field rules and is
    /// parked for an operator instead of sent.
    pub invalid: Option<String>,
    /// When, Unix ms.
    pub created_at: i64,
}

/// Everything one callback does. Applied in one transaction, or not at all.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// What happened.
    pub outcome: Ingested,
    /// The inbox row claiming the natural key; `None` for a duplicate (a store counts the
    /// delivery on the existing row).
    pub inbox: Option<InboxRow>,
    /// The key (for counting a duplicate delivery).
    pub key: InboxKey,
    /// Member writes.
    pub members: Vec<MemberWrite>,
    /// Ledger entries, in order.
    pub ledger: Vec<LedgerRow>,
    /// A new payment.
    pub payment: Option<PaymentRow>,
    /// A stored payment's new refund totals.
    pub payment_update: Option<PaymentUpdate>,
    /// A payment kept not credited, credited now.
    pub payment_credit: Option<PaymentCredit>,
    /// A points sync to send.
    pub outbox: Option<OutboxRow>,
    /// Held refunds applied now (their inbox rows become `applied`).
    pub released: Vec<i64>,
}

impl Plan {
    fn only(outcome: Ingested, key: InboxKey, inbox: Option<InboxRow>) -> Self {
        Self {
            outcome,
            inbox,
            key,
            members: Vec::new(),
            ledger: Vec::new(),
            payment: None,
            payment_update: None,
            payment_credit: None,
            outbox: None,
            released: Vec::new(),
        }
    }

    /// A delivery of something stored before: no effect.
    pub fn duplicate(key: InboxKey) -> Self {
        Self::only(Ingested::Duplicate, key, None)
    }
}

/// The inbox key and the reads a callback needs under `ctx`'s rules.
pub fn reads(n: &Incoming, ctx: &IngestContext<'_>) -> Reads {
    let key = |a: &str, b: &str| InboxKey {
        event_type: n.event_type.clone(),
        transaction_id: a.to_string(),
        refund_id: b.to_string(),
    };
    let day = ctx.rules.daily_cap.map(|_| china_day(ctx.now_ms));
    match &n.event {
        Event::MallTransaction(t) => Reads {
            // a manual application's push is stored under its own key; whether it credits
            // anything is the stored payment's to say
            key: match &t.commit_tag {
                Some(tag) => key(&t.transaction_id, &format!("commit:{tag}")),
                None => key(&t.transaction_id, ""),
            },
            openid: Some(t.openid.clone()),
            transaction_id: Some(t.transaction_id.clone()),
            day,
        },
        Event::MallRefund(r) => Reads {
            key: key(&r.transaction_id, &r.refund_id),
            openid: None,
            transaction_id: Some(r.transaction_id.clone()),
            day,
        },
        Event::MallAuth(a) => Reads {
            key: key(&a.openid, &format!("{}:{}", a.code, a.auth_type)),
            openid: None,
            transaction_id: None,
            day,
        },
        _ => Reads {
            key: key(&n.notification_id, ""),
            openid: None,
            transaction_id: None,
            day,
        },
    }
}

fn inbox_row(
    n: &Incoming,
    key: &InboxKey,
    openid: &str,
    status: InboxStatus,
    note: &str,
    now_ms: i64,
) -> InboxRow {
    InboxRow {
        key: key.clone(),
        notification_id: n.notification_id.clone(),
        openid: openid.to_string(),
        resource: n.plaintext.clone(),
        status,
        note: note.to_string(),
        received_at: now_ms,
    }
}

/// Decides what a verified callback does. Pure: the same inputs give the same plan.
pub fn ingest(n: &Incoming, snap: &Snapshot, ctx: &IngestContext<'_>) -> Plan {
    let key = reads(n, ctx).key;
    if snap.seen {
        return Plan::duplicate(key);
    }
    match &n.event {
        Event::MallTransaction(t) => match &snap.payment {
            None => payment::payment(n, t, key, snap, ctx),
            Some(p) if t.commit_tag.is_some() => payment::manual(n, t, p, key, snap, ctx),
            Some(_) => Plan::duplicate(key),
        },
        Event::MallRefund(r) => payment::refund(n, r, key, snap, ctx),
        Event::MallAuth(a) => {
            let row = inbox_row(n, &key, &a.openid, InboxStatus::Applied, "", ctx.now_ms);
            let mut plan = Plan::only(Ingested::Authorization, key, Some(row));
            plan.members.push(MemberWrite::Authorization {
                openid: a.openid.clone(),
                authorized: a.auth_type == AuthType::RegisteredAndAuthorizationMode,
                auth_type: a.auth_type.as_str().to_string(),
                code: a.code.clone(),
            });
            plan
        }
        _ => {
            let row = inbox_row(
                n,
                &key,
                "",
                InboxStatus::Ignored,
                "event type not handled",
                ctx.now_ms,
            );
            Plan::only(Ingested::Ignored, key, Some(row))
        }
    }
}

#[cfg(test)]
mod tests;
