//! The storage contract, generic over any [`Store`]: ingest effects, dedupe, refunds, outbox
//! leases and fencing, adjustments. Each backend runs the whole suite with [`contract_suite!`]
//! (SQLite in `sqlite.rs`); a new backend only implements [`Backend`].

use std::time::Duration;

use pointsync::rules::{Rules, StoreRule};
use pointsync::store::{
    Incoming, IngestContext, Ingested, LearnedAuthorization, Store, SyncOutcome,
};
use wechatpay::notify::{AuthType, Event, MallAuth, MallRefund};

mod leases;
mod mall_records;
pub use leases::*;
pub use mall_records::*;

pub const T0: i64 = 1_700_000_000_000;

/// What keeps a fresh store alive (a folder, a database dropped when it goes).
pub type Keep = Box<dyn std::any::Any + Send>;

/// A backend under test: a fresh, empty, migrated store and whatever keeps it alive; `None` when
/// the backend's server is not there and the test is skipped (said on stderr).
pub trait Backend {
    /// The store.
    type S: Store;
    /// Whether the store leases a callback's new sync in the callback's own transaction
    /// ([`Store::ingest_leased`]); a backend that does not leaves it pending for a claim.
    const LEASES_ON_RECEIPT: bool;
    /// A fresh store.
    fn fresh() -> impl std::future::Future<Output = Option<(Keep, Self::S)>> + Send;
}

/// Runs every contract test against `$backend`, one `#[tokio::test]` each.
#[macro_export]
macro_rules! contract_suite {
    ($backend:ty) => {
        $crate::contract_suite!(@ $backend: payments_credit_once_and_enqueue_one_sync_with_the_payload_stored, excluded_store_syncs_zero_points_with_remarks, partial_refunds_deduct_once_each_without_drift_and_early_refunds_wait, refunding_every_payment_brings_the_balance_to_exactly_zero, business_invalid_callbacks_are_stored_as_rejected, leases_fence_completions_and_expire, unauthorized_members_are_not_credited_and_daily_caps_hold, cancelled_callers_never_leave_the_writer_inside_a_transaction, partner_mode_syncs_with_the_malls_sub_mchid, adjustments_are_idempotent_and_refunds_respect_allow_negative_balance, a_renewed_lease_is_not_rescued_and_renewal_is_fenced, a_payment_not_credited_is_credited_once_on_the_manual_application, authorizations_learned_by_query_are_kept_with_their_source_and_staleness, parkings_are_stored_once_per_key_and_relayed_through_the_outbox, the_ledger_pages_newest_first, a_sync_leased_by_its_callback_is_fenced_like_a_claimed_one);
    };
    (@ $backend:ty: $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::contract::$name::<$backend>().await
            }
        )*
    };
}

pub fn incoming(event: Event) -> Incoming {
    Incoming {
        notification_id: format!("EV-{}", rand::random::<u32>()),
        event_type: event.event_type().to_string(),
        plaintext: String::from_utf8(event.to_resource_json()).unwrap(),
        event,
    }
}

/// Stores `count` payments of different members (transaction ids `prefix`0.., members `o`0..),
/// one every `gap`, each in a task of its own running `store`; returns what each answered, in order.
pub async fn paced<S, T, F, Fut>(
    s: &S,
    prefix: &str,
    count: usize,
    gap: Duration,
    store: F,
) -> Vec<T>
where
    S: Store,
    T: Send + 'static,
    F: Fn(S, Incoming) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let mut tick = tokio::time::interval(gap);
    let mut tasks = Vec::new();
    for i in 0..count {
        tick.tick().await;
        let p = payment(&format!("{prefix}{i}"), &format!("o{i}"), 1_000, "S1");
        tasks.push(tokio::spawn(store(s.clone(), p)));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// [`paced`] payments stored with [`Store::ingest`]; returns what each store call answered and
/// how long it took.
pub async fn paced_payments<S: Store>(
    s: &S,
    prefix: &str,
    count: usize,
    gap: Duration,
) -> Vec<(Ingested, Duration)> {
    let rules = trusting();
    paced(s, prefix, count, gap, |s, p| {
        let rules = rules.clone();
        async move {
            let start = wechatpay::clock::monotonic();
            let stored = s.ingest(&p, &ctx(&rules)).await.unwrap();
            (stored, start.elapsed())
        }
    })
    .await
}

/// After a pause, 3 payments 700 ms apart (transaction ids `prefix`0..2): each is stored and
/// answered in less than the commit `wait` — none waits for company that is not coming.
pub async fn slow_payments_wait_for_no_one<S: Store>(s: &S, prefix: &str, wait: Duration) {
    tokio::time::sleep(Duration::from_millis(700)).await;
    let slow = paced_payments(s, prefix, 3, Duration::from_millis(700)).await;
    for (stored, took) in &slow {
        assert_eq!(*stored, Ingested::Payment { points: 10 });
        assert!(
            *took < wait,
            "a callback 700 ms after the last waited {took:?} for company"
        );
    }
}

pub fn payment(txid: &str, openid: &str, amount: i64, shop: &str) -> Incoming {
    let mut t = wechatpay::testing::example_transaction();
    t.transaction_id = txid.into();
    t.openid = openid.into();
    t.amount = amount;
    t.shop_number = shop.into();
    incoming(Event::MallTransaction(t))
}

pub fn refund(txid: &str, refund_id: &str, pay: i64, amount: i64) -> Incoming {
    incoming(Event::MallRefund(MallRefund {
        mchid: "1230000109".into(),
        merchant_name: "广场".into(),
        shop_name: "店".into(),
        shop_number: "S1".into(),
        appid: "wx1".into(),
        openid: "o1".into(),
        refund_time: "2026-11-27T11:00:00+08:00".into(),
        pay_amount: pay,
        refund_amount: amount,
        transaction_id: txid.into(),
        refund_id: refund_id.into(),
        extra: Default::default(),
    }))
}

pub fn auth(openid: &str, authorized: bool) -> Incoming {
    incoming(Event::MallAuth(MallAuth {
        openid: openid.into(),
        code: "C1".into(),
        mchid: "1230000109".into(),
        auth_type: if authorized {
            AuthType::RegisteredAndAuthorizationMode
        } else {
            AuthType::RegisteredMode
        },
        extra: Default::default(),
    }))
}

/// The default rules, with members of unknown authorization credited (WeChat sends authorized
/// members' payments only), as most of these tests assume.
pub fn trusting() -> Rules {
    Rules {
        unknown_authorization: pointsync::rules::UnknownAuthorization::Credit,
        ..Rules::default()
    }
}

pub fn ctx(rules: &Rules) -> IngestContext<'_> {
    IngestContext {
        rules,
        partner_mode: false,
        now_ms: T0,
    }
}

pub async fn payments_credit_once_and_enqueue_one_sync_with_the_payload_stored<B: Backend>() {
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    assert_eq!(
        s.ingest(&auth("o1", true), &ctx(&rules)).await.unwrap(),
        Ingested::Authorization
    );
    let p = payment("T1", "o1", 12_345, "S1");
    assert_eq!(
        s.ingest(&p, &ctx(&rules)).await.unwrap(),
        Ingested::Payment { points: 123 }
    );
    // the same payment again, and under a new notification id (manual application): no effect
    assert_eq!(
        s.ingest(&p, &ctx(&rules)).await.unwrap(),
        Ingested::Duplicate
    );
    let again = Incoming {
        notification_id: "EV-other".into(),
        ..p.clone()
    };
    assert_eq!(
        s.ingest(&again, &ctx(&rules)).await.unwrap(),
        Ingested::Duplicate
    );
    let m = s.member("o1").await.unwrap().unwrap();
    assert_eq!(
        (m.balance, m.entries.len(), m.authorized),
        (123, 1, Some(true))
    );
    assert_eq!(m.entries[0].rule["reason"], "credited");

    let c = s.claim("w1", T0, 30_000, 10).await.unwrap();
    assert_eq!(c.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&c[0].payload).unwrap();
    assert_eq!(
        (
            v["increased_points"].as_i64(),
            v["total_points"].as_i64(),
            v["earn_points"].as_bool()
        ),
        (Some(123), Some(123), Some(true))
    );
    assert_eq!(v["points_update_time"], "2023-11-15T06:13:20+08:00");
    assert_eq!(c[0].attempt, 1);
}

pub async fn excluded_store_syncs_zero_points_with_remarks<B: Backend>() {
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = Rules {
        stores: vec![StoreRule {
            shop_number: "S6".into(),
            points_per_yuan: None,
            exclude: true,
            no_points_remarks: None,
        }]
        .into(),
        ..trusting()
    };
    assert_eq!(
        s.ingest(&payment("T1", "o1", 50_000, "S6"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 0 }
    );
    let c = s.claim("w", T0, 1000, 10).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&c[0].payload).unwrap();
    assert_eq!(
        (v["earn_points"].as_bool(), v["increased_points"].as_i64()),
        (Some(false), Some(0))
    );
    assert_eq!(v["no_points_remarks"], "商品不参与积分活动");
}

pub async fn partial_refunds_deduct_once_each_without_drift_and_early_refunds_wait<B: Backend>() {
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    // a refund before its payment is held
    assert_eq!(
        s.ingest(&refund("T1", "R1", 10_000, 3_333), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Held
    );
    assert_eq!(
        s.ingest(&payment("T1", "o1", 10_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 100 }
    );
    assert_eq!(
        s.member("o1").await.unwrap().unwrap().balance,
        67,
        "the held refund was applied"
    );
    assert_eq!(
        s.ingest(&refund("T1", "R1", 10_000, 3_333), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Duplicate
    );
    assert_eq!(
        s.ingest(&refund("T1", "R2", 10_000, 3_333), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Refund { points: 33 }
    );
    assert_eq!(
        s.ingest(&refund("T1", "R3", 10_000, 3_334), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Refund { points: 34 }
    );
    let m = s.member("o1").await.unwrap().unwrap();
    assert_eq!(m.balance, 0);
    assert_eq!(
        m.balance,
        m.entries.iter().map(|e| e.points).sum::<i64>(),
        "balance = sum of ledger"
    );
    assert_eq!(m.entries.len(), 4);
}

pub async fn refunding_every_payment_brings_the_balance_to_exactly_zero<B: Backend>() {
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    s.ingest(&payment("T1", "o1", 10_001, "S1"), &ctx(&rules))
        .await
        .unwrap();
    s.ingest(&payment("T2", "o1", 777, "S1"), &ctx(&rules))
        .await
        .unwrap();
    s.ingest(&refund("T1", "R1", 10_001, 4_000), &ctx(&rules))
        .await
        .unwrap();
    s.ingest(&refund("T2", "R2", 777, 777), &ctx(&rules))
        .await
        .unwrap();
    s.ingest(&refund("T1", "R3", 10_001, 6_001), &ctx(&rules))
        .await
        .unwrap();
    let m = s.member("o1").await.unwrap().unwrap();
    assert_eq!(m.balance, 0);
    assert!(m.entries.iter().all(|e| e.balance_after >= 0));
}

pub async fn business_invalid_callbacks_are_stored_as_rejected<B: Backend>() {
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    let r = s
        .ingest(&payment("T1", "o1", -5, "S1"), &ctx(&rules))
        .await
        .unwrap();
    assert!(
        matches!(r, Ingested::Rejected(ref why) if why.contains("-5")),
        "{r:?}"
    );
    assert_eq!(
        s.ingest(&payment("T1", "o1", -5, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Duplicate
    );
    let st = s.status().await.unwrap();
    assert_eq!(st.inbox.get("rejected"), Some(&1));
    assert!(st.syncs.is_empty(), "no sync for a rejected payment");
}

pub async fn unauthorized_members_are_not_credited_and_daily_caps_hold<B: Backend>() {
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = Rules {
        daily_cap: Some(150),
        ..trusting()
    };
    s.ingest(&auth("o9", false), &ctx(&rules)).await.unwrap();
    assert_eq!(
        s.ingest(&payment("T1", "o9", 10_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 0 }
    );
    assert_eq!(
        s.ingest(&payment("T2", "o1", 10_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 100 }
    );
    assert_eq!(
        s.ingest(&payment("T3", "o1", 10_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 50 }
    );
    assert_eq!(
        s.ingest(&payment("T4", "o1", 10_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 0 }
    );
    let next_day = IngestContext {
        now_ms: T0 + 86_400_000,
        ..ctx(&rules)
    };
    assert_eq!(
        s.ingest(&payment("T5", "o1", 10_000, "S1"), &next_day)
            .await
            .unwrap(),
        Ingested::Payment { points: 100 }
    );
}

pub async fn cancelled_callers_never_leave_the_writer_inside_a_transaction<B: Backend>() {
    // A callback handler is dropped when WeChat hangs up or the handler times out. Before ingest
    // ran detached, a drop at the wrong moment left the single writer connection in an open
    // transaction and every later write failed ("begin_with at non-zero transaction depth").
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    for i in 0..400u64 {
        let p = payment(&format!("C{i}"), &format!("o{}", i % 7), 1_000, "S1");
        let _ = tokio::time::timeout(
            Duration::from_micros(i * 37 % 3000),
            s.ingest(&p, &ctx(&rules)),
        )
        .await;
    }
    // the next write queues behind whatever the cancelled callers left; it must succeed
    assert_eq!(
        s.ingest(&payment("AFTER", "o2", 1_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 10 }
    );
    let c = s.claim("w", T0, 1_000, 1_000).await.unwrap();
    assert!(c.iter().any(|c| c.transaction_id == "AFTER"));
    let audit = s.audit().await.unwrap();
    assert!(audit.unbalanced_members.is_empty() && audit.payments_without_sync.is_empty());
}

pub async fn partner_mode_syncs_with_the_malls_sub_mchid<B: Backend>() {
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    let partner = IngestContext {
        partner_mode: true,
        ..ctx(&rules)
    };
    s.ingest(&payment("T1", "o1", 10_000, "S1"), &partner)
        .await
        .unwrap();
    s.ingest(&payment("T2", "o1", 10_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    let c = s.claim("w", T0, 1_000, 10).await.unwrap();
    let payload = |tx: &str| -> serde_json::Value {
        serde_json::from_str(&c.iter().find(|c| c.transaction_id == tx).unwrap().payload).unwrap()
    };
    assert_eq!(
        payload("T1")["sub_mchid"],
        wechatpay::testing::example_transaction().mchid,
        "the mall merchant from the callback"
    );
    assert!(
        payload("T2").get("sub_mchid").is_none(),
        "direct merchants send no sub_mchid"
    );
}

pub async fn adjustments_are_idempotent_and_refunds_respect_allow_negative_balance<B: Backend>() {
    use pointsync::store::{Adjusted, Adjustment};
    let adj = |points: i64, reference: &str| Adjustment {
        openid: "o1".into(),
        points,
        reference: reference.into(),
        reason: "停车兑换".into(),
    };
    for allow in [false, true] {
        let Some((_d, s)) = B::fresh().await else {
            return;
        };
        let rules = Rules {
            allow_negative_balance: allow,
            ..trusting()
        };
        assert_eq!(
            s.adjust(&adj(-1, "R-0"), allow, T0).await.unwrap(),
            Adjusted::UnknownMember
        );
        assert_eq!(
            s.ingest(&payment("N1", "o1", 10_000, "S1"), &ctx(&rules))
                .await
                .unwrap(),
            Ingested::Payment { points: 100 }
        );
        assert_eq!(
            s.adjust(&adj(-80, "R-1"), allow, T0).await.unwrap(),
            Adjusted::Applied { balance: 20 }
        );
        assert_eq!(
            s.adjust(&adj(-80, "R-1"), allow, T0).await.unwrap(),
            Adjusted::Duplicate { balance: 20 },
            "the same reference twice has one effect"
        );
        assert_eq!(
            s.adjust(&adj(-70, "R-1"), allow, T0).await.unwrap(),
            Adjusted::Conflict {
                openid: "o1".into(),
                points: -80
            },
            "the same reference with another amount is refused, naming the first"
        );
        let second = s.adjust(&adj(-30, "R-2"), allow, T0).await.unwrap();
        let refunded = s
            .ingest(&refund("N1", "RF1", 10_000, 10_000), &ctx(&rules))
            .await
            .unwrap();
        let m = s.member("o1").await.unwrap().unwrap();
        if allow {
            assert_eq!(second, Adjusted::Applied { balance: -10 });
            assert_eq!(refunded, Ingested::Refund { points: 100 });
            assert_eq!(m.balance, -110);
        } else {
            assert_eq!(second, Adjusted::WouldGoNegative { balance: 20 });
            // the refund takes what is left and records the shortfall
            assert_eq!(refunded, Ingested::Refund { points: 20 });
            assert_eq!(m.balance, 0);
            let debit = m.entries.iter().find(|e| e.kind == "debit").unwrap();
            assert_eq!(debit.rule["shortfall"], 80, "{}", debit.rule);
        }
        assert_eq!(m.balance, m.entries.iter().map(|e| e.points).sum::<i64>());
        assert!(s.audit().await.unwrap().unbalanced_members.is_empty());
    }
}

fn manual(p: &Incoming, tag: &str) -> Incoming {
    let Event::MallTransaction(mut t) = p.event.clone() else {
        unreachable!("a payment")
    };
    t.commit_tag = Some(tag.into());
    incoming(Event::MallTransaction(t))
}

fn learned(openid: &str, state: &str, authorized: Option<bool>) -> LearnedAuthorization {
    LearnedAuthorization {
        openid: openid.into(),
        state: state.into(),
        authorized,
    }
}

pub async fn a_payment_not_credited_is_credited_once_on_the_manual_application<B: Backend>() {
    let Some((_keep, s)) = B::fresh().await else {
        return;
    };
    let rules = Rules::default();
    // WeChat said she is not authorized: kept, not credited, no sync
    s.record_authorization(&learned("o1", "UNAUTHORIZED", Some(false)), T0)
        .await
        .unwrap();
    let p = payment("T1", "o1", 10_000, "S1");
    assert_eq!(
        s.ingest(&p, &ctx(&rules)).await.unwrap(),
        Ingested::Payment { points: 0 }
    );
    let audit = s.audit().await.unwrap();
    assert_eq!(audit.not_credited, vec!["T1".to_string()]);
    assert!(audit.payments_without_sync.is_empty());
    assert!(s.claim("w", T0, 1_000, 10).await.unwrap().is_empty());
    let m = s.member_summary("o1", T0).await.unwrap().unwrap();
    assert_eq!((m.balance, m.not_credited_payments), (0, 1));
    // she authorizes and applies: credited once, synced with earn_points
    s.record_authorization(&learned("o1", "AUTHORIZED", Some(true)), T0)
        .await
        .unwrap();
    let first = manual(&p, "M1");
    assert_eq!(
        s.ingest(&first, &ctx(&rules)).await.unwrap(),
        Ingested::ManualCredit { points: 100 }
    );
    for again in [first.clone(), manual(&p, "M2"), p.clone()] {
        assert_eq!(
            s.ingest(&again, &ctx(&rules)).await.unwrap(),
            Ingested::Duplicate
        );
    }
    let claimed = s.claim("w", T0, 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&claimed[0].payload).unwrap();
    assert_eq!(
        (&body["earn_points"], &body["increased_points"]),
        (&serde_json::json!(true), &serde_json::json!(100))
    );
    let audit = s.audit().await.unwrap();
    assert_eq!(audit.credits.get("T1"), Some(&100));
    assert!(audit.not_credited.is_empty() && audit.unbalanced_members.is_empty());
    let m = s.member_summary("o1", T0).await.unwrap().unwrap();
    assert_eq!(
        (m.balance, m.not_credited_payments, m.credited_today),
        (100, 0, 100)
    );
    // a refund deducts from what she was credited
    assert_eq!(
        s.ingest(&refund("T1", "R1", 10_000, 5_000), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Refund { points: 50 }
    );
}

pub async fn authorizations_learned_by_query_are_kept_with_their_source_and_staleness<
    B: Backend,
>() {
    let Some((_keep, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    s.ingest(&payment("T1", "o1", 1_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    s.ingest(&payment("T2", "o2", 1_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    let m = s.member_summary("o1", T0).await.unwrap().unwrap();
    assert_eq!(
        (
            m.authorization.state.as_str(),
            m.authorization.source,
            m.appid.as_deref()
        ),
        ("unknown", None, Some("wxd678efh567hg6787"))
    );
    let stale = s.stale_members(T0, "", 10).await.unwrap();
    assert_eq!(
        stale.iter().map(|m| m.openid.as_str()).collect::<Vec<_>>(),
        ["o1", "o2"]
    );
    assert_eq!(
        s.stale_members(T0, "o1", 10).await.unwrap().len(),
        1,
        "paged by openid"
    );
    s.record_authorization(&learned("o1", "DEAUTHORIZED", Some(false)), T0 + 5)
        .await
        .unwrap();
    s.record_authorization(&learned("o2", "PAUSED", None), T0 + 5)
        .await
        .unwrap();
    let m = s.member_summary("o1", T0).await.unwrap().unwrap();
    assert_eq!(
        (
            m.authorization.state.as_str(),
            m.authorization.wechat_state.as_deref(),
            m.authorization.source.as_deref(),
            m.authorization.learned_at
        ),
        (
            "not_authorized",
            Some("DEAUTHORIZED"),
            Some("query"),
            Some(T0 + 5)
        )
    );
    assert_eq!(
        s.member_summary("o2", T0)
            .await
            .unwrap()
            .unwrap()
            .authorization
            .state,
        "unknown",
        "a state not known stays unknown"
    );
    assert_eq!(
        s.member_summary("o1", T0).await.unwrap().unwrap().balance,
        10,
        "the balance is kept"
    );
    // learned at T0+5: stale before T0+6, not before T0+5
    assert_eq!(s.stale_members(T0 + 5, "", 10).await.unwrap().len(), 0);
    assert_eq!(s.stale_members(T0 + 6, "", 10).await.unwrap().len(), 2);
    // revoked: her next payment earns nothing
    let rules = Rules::default();
    assert_eq!(
        s.ingest(&payment("T3", "o1", 1_000, "S1"), &ctx(&rules))
            .await
            .unwrap(),
        Ingested::Payment { points: 0 }
    );
    assert!(s.member_summary("nobody", T0).await.unwrap().is_none());
}
