//! Operator adjustments: points redeemed or corrected in the mall's own systems.

use serde_json::json;

use super::{LedgerRow, china_day};
use serde::Serialize;

/// An operator's adjustment of a member's balance: points redeemed or corrected in the mall's own
/// systems. Idempotent on `reference`.
#[derive(Debug, Clone, Serialize)]
pub struct Adjustment {
    /// The member.
    pub openid: String,
    /// Points added (positive) or taken (negative).
    pub points: i64,
    /// The operator's unique reference (a redemption order, a ticket…).
    pub reference: String,
    /// Why, kept in the ledger.
    pub reason: String,
}

/// What an adjustment did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Adjusted {
    /// Written; the balance after it.
    Applied { balance: i64 },
    /// This reference was applied before; nothing changed.
    Duplicate { balance: i64 },
    /// Refused: it would make the balance negative (`rules.allow_negative_balance` is off).
    WouldGoNegative { balance: i64 },
    /// No such member.
    UnknownMember,
    /// This reference was applied before to another member or with another amount: refused, the
    /// first one named.
    Conflict {
        /// The member of the first adjustment with this reference.
        openid: String,
        /// Its points.
        points: i64,
    },
}

/// What a store knows before an adjustment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdjustSnapshot {
    /// The member's balance, if the member exists.
    pub balance: Option<i64>,
    /// The adjustment stored with this reference, if any: (member, points).
    pub first: Option<(String, i64)>,
}

/// The rows an applied adjustment writes.
#[derive(Debug, Clone, PartialEq)]
pub struct AdjustWrite {
    /// The new balance.
    pub balance: i64,
    /// The ledger entry (kind `adjust`, keyed by the reference).
    pub entry: LedgerRow,
}

/// Decides an adjustment: refused for an unknown member, a no-op for a reference applied before
/// with the same member and amount, refused (naming the first) for a reference applied before
/// otherwise, refused when it would take the balance below zero unless `allow_negative`.
pub fn adjust(
    a: &Adjustment,
    snap: AdjustSnapshot,
    allow_negative: bool,
    now_ms: i64,
) -> (Adjusted, Option<AdjustWrite>) {
    let Some(balance) = snap.balance else {
        return (Adjusted::UnknownMember, None);
    };
    if let Some((openid, points)) = snap.first {
        return if openid == a.openid && points == a.points {
            (Adjusted::Duplicate { balance }, None)
        } else {
            (Adjusted::Conflict { openid, points }, None)
        };
    }
    let after = balance + a.points;
    if after < 0 && a.points < 0 && !allow_negative {
        return (Adjusted::WouldGoNegative { balance }, None);
    }
    let entry = LedgerRow {
        openid: a.openid.clone(),
        kind: "adjust",
        transaction_id: a.reference.clone(),
        refund_id: String::new(),
        points: a.points,
        balance_after: after,
        day: china_day(now_ms),
        rule: json!({"reason": "adjustment", "note": a.reason, "reference": a.reference}),
        created_at: now_ms,
    };
    (
        Adjusted::Applied { balance: after },
        Some(AdjustWrite {
            balance: after,
            entry,
        }),
    )
}
