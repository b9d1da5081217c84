//! Points rules: a pure, deterministic decision per payment and per refund, with an explanation
//! recorded beside every ledger entry. Changing the rules never rewrites past entries: each entry
//! keeps the rule version (a hash of the rules) and the figures that produced it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How fractional points are rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    /// Down (the default: never promise a point not earned).
    #[default]
    Floor,
    /// Half up.
    Round,
    /// Up.
    Ceil,
}

/// A store's own rate, or its exclusion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreRule {
    /// `shop_number` as WeChat sends it.
    pub shop_number: String,
    /// Points per yuan in this store (overrides the default rate).
    #[serde(default)]
    pub points_per_yuan: Option<f64>,
    /// No points in this store.
    #[serde(default)]
    pub exclude: bool,
    /// The `no_points_remarks` sent for an excluded store.
    #[serde(default)]
    pub no_points_remarks: Option<String>,
}

/// What to do with a payment from a member whose authorization is unknown (no callback received,
/// never queried): `rules.unknown_authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownAuthorization {
    /// Ask WeChat (`GET /v3/businesscircle/user-authorizations/{openid}`, rate-limited) before
    /// deciding; if WeChat cannot say, the payment is kept not credited, as `hold` does.
    #[default]
    Query,
    /// Credit: WeChat sends payments of authorized members only. \[INFERRED\]
    Credit,
    /// Keep the payment not credited (no points sync); it is credited when the member applies
    /// for its points in WeChat's plugin and WeChat pushes it again with `commit_tag`.
    #[serde(alias = "no_points")]
    Hold,
}

/// The `[rules]` table of the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// Points per yuan (1 yuan = 100 fen). Kept to 1/1000 of a point.
    pub points_per_yuan: f64,
    /// Rounding of fractional points.
    pub rounding: Rounding,
    /// Payments below this many fen earn nothing.
    pub min_amount_fen: i64,
    /// At most this many points per member per day (China time), if set.
    pub daily_cap: Option<i64>,
    /// Let refunds take a balance below zero (otherwise the debit stops at zero and the rest is recorded).
    pub allow_negative_balance: bool,
    /// Payments from members whose authorization is unknown (`unknown_member` before 0.2, whose
    /// `no_points` is `hold`).
    #[serde(alias = "unknown_member")]
    pub unknown_authorization: UnknownAuthorization,
    /// Per-store rates and exclusions: shared, not copied, by every callback's copy of the rules.
    pub stores: Arc<[StoreRule]>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            points_per_yuan: 1.0,
            rounding: Rounding::Floor,
            min_amount_fen: 0,
            daily_cap: None,
            allow_negative_balance: false,
            unknown_authorization: UnknownAuthorization::Query,
            stores: Arc::new([]),
        }
    }
}

/// Remarks sent when no points are earned.
pub mod remarks {
    /// Excluded store (default text).
    pub const EXCLUDED: &str = "商品不参与积分活动";
    /// Below the minimum amount.
    pub const BELOW_MINIMUM: &str = "消费金额未达到积分门槛";
    /// Member not authorized.
    pub const NOT_AUTHORIZED: &str = "用户未授权商圈积分服务";
    /// Daily cap reached.
    pub const DAILY_CAP: &str = "今日积分已达上限";
    /// The amount earns less than one point.
    pub const TOO_SMALL: &str = "消费金额不足1积分";
}

/// A member's authorization as the service knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// Authorized for points.
    Authorized,
    /// Known, not authorized (card opened only, or revoked).
    NotAuthorized,
    /// Neither a callback nor WeChat's answer to a query received.
    Unknown,
}

/// The inputs of a credit decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment<'a> {
    /// Amount paid, fen.
    pub amount_fen: i64,
    /// Store.
    pub shop_number: &'a str,
    /// The member's authorization.
    pub authorization: Authorization,
    /// Points already credited to the member today.
    pub credited_today: i64,
}

/// A credit decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Points credited (0 when none).
    pub points: i64,
    /// `no_points_remarks` when no points.
    pub no_points_remarks: Option<String>,
    /// Why, for the ledger.
    pub explanation: Value,
    /// No points because the member is not (or not known to be) authorized: the payment is kept
    /// not credited, without a points sync, until a manual application (`commit_tag`).
    pub not_authorized: bool,
}

impl Rules {
    /// Checks the rules; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let rate_ok = |r: f64| r.is_finite() && (0.0..=1000.0).contains(&r);
        if !rate_ok(self.points_per_yuan) {
            return Err(format!(
                "rules.points_per_yuan = {} must be between 0 and 1000",
                self.points_per_yuan
            ));
        }
        if self.min_amount_fen < 0 {
            return Err("rules.min_amount_fen must not be negative".into());
        }
        if self.daily_cap.is_some_and(|c| c < 0) {
            return Err("rules.daily_cap must not be negative".into());
        }
        for (i, s) in self.stores.iter().enumerate() {
            if s.shop_number.is_empty() {
                return Err(format!("rules.stores[{i}].shop_number must not be empty"));
            }
            if let Some(r) = s.points_per_yuan.filter(|r| !rate_ok(*r)) {
                return Err(format!(
                    "rules.stores[{i}].points_per_yuan = {r} must be between 0 and 1000"
                ));
            }
            if let Some(t) = &s.no_points_remarks {
                wechatpay::businesscircle::check_string("no_points_remarks", t, 1, 128)
                    .map_err(|e| format!("rules.stores[{i}].no_points_remarks: {}", e.reason))?;
            }
        }
        Ok(())
    }

    /// A short stable id of these rules (hash of their canonical JSON), recorded with each entry.
    /// Every payment's decision records it, so each thread keeps the last rules it hashed and
    /// their id: rules equal to those are not serialised and hashed again (with a few hundred
    /// store rules that was most of a callback's work on the writer, BENCHMARKS.md).
    pub fn version(&self) -> String {
        thread_local! {
            static LAST: std::cell::RefCell<Option<(Rules, String)>> =
                const { std::cell::RefCell::new(None) };
        }
        LAST.with_borrow_mut(|last| match last {
            Some((rules, id)) if rules == self => id.clone(),
            _ => {
                let id = self.hashed();
                *last = Some((self.clone(), id.clone()));
                id
            }
        })
    }

    fn hashed(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json);
        d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Decides the points a payment earns. Pure and deterministic.
    pub fn decide(&self, p: &Payment<'_>) -> Decision {
        let store = self.stores.iter().find(|s| s.shop_number == p.shop_number);
        let rate_milli = (store
            .and_then(|s| s.points_per_yuan)
            .unwrap_or(self.points_per_yuan)
            * 1000.0)
            .round() as i64;
        let mut explanation = json!({
            "rules": self.version(),
            "amount_fen": p.amount_fen,
            "shop_number": p.shop_number,
            "milli_points_per_yuan": rate_milli,
            "rounding": self.rounding,
        });
        let none = |reason: &str, remarks: String, mut explanation: Value| {
            explanation["reason"] = json!(reason);
            Decision {
                points: 0,
                no_points_remarks: Some(remarks),
                explanation,
                not_authorized: false,
            }
        };
        let authorized = match p.authorization {
            Authorization::Authorized => true,
            Authorization::NotAuthorized => false,
            Authorization::Unknown => self.unknown_authorization == UnknownAuthorization::Credit,
        };
        if !authorized {
            let reason = match p.authorization {
                Authorization::Unknown => "member authorization unknown",
                _ => "member not authorized",
            };
            let mut d = none(reason, remarks::NOT_AUTHORIZED.into(), explanation);
            d.not_authorized = true;
            return d;
        }
        if let Some(s) = store.filter(|s| s.exclude) {
            let text = s
                .no_points_remarks
                .clone()
                .unwrap_or_else(|| remarks::EXCLUDED.into());
            return none("store excluded", text, explanation);
        }
        if p.amount_fen < self.min_amount_fen || p.amount_fen <= 0 {
            return none(
                "below minimum amount",
                remarks::BELOW_MINIMUM.into(),
                explanation,
            );
        }
        // points = amount_fen / 100 × rate_milli / 1000, in integers
        let num = i128::from(p.amount_fen) * i128::from(rate_milli);
        let den: i128 = 100_000;
        let raw = match self.rounding {
            Rounding::Floor => num / den,
            Rounding::Ceil => (num + den - 1) / den,
            Rounding::Round => (num + den / 2) / den,
        } as i64;
        explanation["computed"] = json!(raw);
        if raw <= 0 {
            return none(
                "less than one point",
                remarks::TOO_SMALL.into(),
                explanation,
            );
        }
        let points = match self.daily_cap {
            Some(cap) => raw.min((cap - p.credited_today).max(0)),
            None => raw,
        };
        if points < raw {
            explanation["capped_from"] = json!(raw);
            explanation["credited_today"] = json!(p.credited_today);
        }
        if points == 0 {
            return none("daily cap reached", remarks::DAILY_CAP.into(), explanation);
        }
        explanation["reason"] = json!("credited");
        Decision {
            points,
            no_points_remarks: None,
            explanation,
            not_authorized: false,
        }
    }
}

/// The points a refund deducts: the share of the credit that the refunded total represents, minus
/// what earlier refunds already deducted. Cumulative rounding down means partial refunds never
/// drift: their deductions add up to at most the credit, and to exactly the credit once the whole
/// amount is refunded.
pub fn refund_deduction(
    credit: i64,
    pay_amount: i64,
    refunded_before: i64,
    refund_amount: i64,
    debited_before: i64,
) -> i64 {
    if credit <= 0 || pay_amount <= 0 {
        return 0;
    }
    let refunded = (refunded_before + refund_amount).clamp(0, pay_amount);
    let target = (i128::from(credit) * i128::from(refunded) / i128::from(pay_amount)) as i64;
    (target - debited_before).clamp(0, credit - debited_before.min(credit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pay(amount_fen: i64, shop: &str) -> Payment<'_> {
        Payment {
            amount_fen,
            shop_number: shop,
            authorization: Authorization::Authorized,
            credited_today: 0,
        }
    }

    #[test]
    fn table() {
        let rules = Rules {
            points_per_yuan: 1.0,
            min_amount_fen: 1000,
            daily_cap: Some(500),
            stores: vec![
                StoreRule {
                    shop_number: "S3".into(),
                    points_per_yuan: Some(2.5),
                    exclude: false,
                    no_points_remarks: None,
                },
                StoreRule {
                    shop_number: "S6".into(),
                    points_per_yuan: None,
                    exclude: true,
                    no_points_remarks: Some("影票不积分".into()),
                },
            ]
            .into(),
            ..Rules::default()
        };
        let cases: Vec<(Payment<'_>, i64, Option<&str>)> = vec![
            (pay(12_345, "S1"), 123, None),
            (pay(12_345, "S3"), 308, None),
            (pay(50_000, "S6"), 0, Some("影票不积分")),
            (pay(999, "S1"), 0, Some(remarks::BELOW_MINIMUM)),
            (pay(1_000_000, "S1"), 500, None),
            (
                Payment {
                    credited_today: 450,
                    ..pay(12_345, "S1")
                },
                50,
                None,
            ),
            (
                Payment {
                    credited_today: 500,
                    ..pay(12_345, "S1")
                },
                0,
                Some(remarks::DAILY_CAP),
            ),
            (
                Payment {
                    authorization: Authorization::NotAuthorized,
                    ..pay(12_345, "S1")
                },
                0,
                Some(remarks::NOT_AUTHORIZED),
            ),
            (
                Payment {
                    authorization: Authorization::Unknown,
                    ..pay(12_345, "S1")
                },
                0,
                Some(remarks::NOT_AUTHORIZED),
            ),
        ];
        for (p, points, remark) in cases {
            let d = rules.decide(&p);
            assert_eq!(d.points, points, "{p:?} → {}", d.explanation);
            assert_eq!(d.no_points_remarks.as_deref(), remark, "{p:?}");
            assert_eq!(d.explanation["rules"], rules.version());
        }
        // `credit` trusts WeChat to push authorized members' payments only
        let trusting = Rules {
            unknown_authorization: UnknownAuthorization::Credit,
            ..Rules::default()
        };
        let d = trusting.decide(&Payment {
            authorization: Authorization::Unknown,
            ..pay(10_000, "S1")
        });
        assert_eq!((d.points, d.not_authorized), (100, false));
        let d = rules.decide(&Payment {
            authorization: Authorization::Unknown,
            ..pay(10_000, "S1")
        });
        assert_eq!(
            (d.points, d.not_authorized, d.explanation["reason"].as_str()),
            (0, true, Some("member authorization unknown"))
        );
    }

    #[test]
    fn rounding_modes() {
        for (rounding, expected) in [
            (Rounding::Floor, 12),
            (Rounding::Round, 13),
            (Rounding::Ceil, 13),
        ] {
            let r = Rules {
                rounding,
                ..Rules::default()
            };
            assert_eq!(r.decide(&pay(1_250, "S")).points, expected, "{rounding:?}");
        }
        let r = Rules {
            rounding: Rounding::Round,
            ..Rules::default()
        };
        assert_eq!(r.decide(&pay(1_249, "S")).points, 12);
        let tiny = Rules::default().decide(&pay(99, "S"));
        assert_eq!(
            (tiny.points, tiny.no_points_remarks.as_deref()),
            (0, Some(remarks::TOO_SMALL))
        );
    }

    #[test]
    fn version_changes_with_the_rules() {
        let a = Rules::default();
        let b = Rules {
            points_per_yuan: 2.0,
            ..Rules::default()
        };
        assert_ne!(a.version(), b.version());
        assert_eq!(a.version(), Rules::default().version());
    }

    /// The id each thread remembers is the id of equal rules only: rules changed in any field
    /// after it was taken, or taken on another thread, get their own, the same as computed afresh.
    #[test]
    fn a_remembered_version_is_never_another_rules_version() {
        let mut r = Rules::default();
        let first = r.version();
        assert_eq!(first, r.hashed());
        r.stores = vec![StoreRule {
            shop_number: "S1".into(),
            points_per_yuan: Some(2.0),
            exclude: false,
            no_points_remarks: None,
        }]
        .into();
        let with_store = r.version();
        assert_ne!(with_store, first);
        assert_eq!(with_store, r.hashed());
        let mut stores = r.stores.to_vec();
        stores[0].exclude = true;
        r.stores = stores.into();
        assert_ne!(r.version(), with_store, "a change deep in a store rule");
        assert_eq!(r.version(), r.hashed());
        let elsewhere = {
            let r = r.clone();
            std::thread::spawn(move || r.version()).join().unwrap()
        };
        assert_eq!(elsewhere, r.version());
        assert_eq!(Rules::default().version(), first);
    }

    #[test]
    fn validation_names_the_key() {
        let bad = Rules {
            points_per_yuan: f64::NAN,
            ..Rules::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("rules.points_per_yuan")
        );
        let bad = Rules {
            stores: vec![StoreRule {
                shop_number: "S".into(),
                points_per_yuan: None,
                exclude: true,
                no_points_remarks: Some("😀".into()),
            }]
            .into(),
            ..Rules::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("rules.stores[0].no_points_remarks")
        );
    }

    #[test]
    fn refund_table() {
        // credit 100 for 10_000 fen; three partial refunds of 3_333 + 3_333 + 3_334
        assert_eq!(refund_deduction(100, 10_000, 0, 3_333, 0), 33);
        assert_eq!(refund_deduction(100, 10_000, 3_333, 3_333, 33), 33);
        assert_eq!(refund_deduction(100, 10_000, 6_666, 3_334, 66), 34);
        assert_eq!(refund_deduction(0, 10_000, 0, 10_000, 0), 0);
        assert_eq!(refund_deduction(7, 3, 0, 1, 0), 2);
        assert_eq!(
            refund_deduction(100, 10_000, 0, 20_000, 0),
            100,
            "over-refund is clamped"
        );
    }

    proptest! {
        #[test]
        fn partial_refunds_never_exceed_the_credit(credit in 0i64..100_000, pay_amount in 1i64..10_000_000, cuts in proptest::collection::vec(1i64..1_000_000, 1..8)) {
            let mut refunded = 0;
            let mut debited = 0;
            for c in cuts {
                let amount = c.min(pay_amount - refunded);
                if amount <= 0 { break; }
                let d = refund_deduction(credit, pay_amount, refunded, amount, debited);
                prop_assert!(d >= 0);
                refunded += amount;
                debited += d;
                prop_assert!(debited <= credit);
            }
            if refunded == pay_amount {
                prop_assert_eq!(debited, credit, "a full refund takes back exactly the credit");
            }
        }

        #[test]
        fn decisions_are_deterministic_and_bounded(amount in 0i64..100_000_000, rate in 0.0f64..50.0, today in 0i64..10_000) {
            let r = Rules { points_per_yuan: rate, daily_cap: Some(5_000), ..Rules::default() };
            let p = Payment { credited_today: today, ..pay(amount, "S") };
            let a = r.decide(&p);
            prop_assert_eq!(a.clone(), r.decide(&p));
            prop_assert!(a.points >= 0 && a.points + today.min(5_000) <= 5_000.max(today));
            prop_assert_eq!(a.points == 0, a.no_points_remarks.is_some());
        }
    }
}
