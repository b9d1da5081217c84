//! Table tests of the decisions, without a database.

use serde_json::Value;
use wechatpay::notify::{AuthType, Event, MallAuth, MallRefund, MallTransaction};

use super::*;
use crate::rules::{Rules, StoreRule};

const T0: i64 = 1_700_000_000_000;

fn incoming(event: Event) -> Incoming {
    Incoming {
        notification_id: "EV-1".into(),
        event_type: event.event_type().to_string(),
        plaintext: String::from_utf8(event.to_resource_json()).unwrap(),
        event,
    }
}

fn tx(id: &str, openid: &str, amount: i64, shop: &str) -> MallTransaction {
    let mut t = wechatpay::testing::example_transaction();
    t.transaction_id = id.into();
    t.openid = openid.into();
    t.amount = amount;
    t.shop_number = shop.into();
    t
}

fn refund(id: &str, refund_id: &str, pay: i64, amount: i64) -> MallRefund {
    MallRefund {
        mchid: "1230000109".into(),
        merchant_name: String::new(),
        shop_name: String::new(),
        shop_number: "S1".into(),
        appid: "wx1".into(),
        openid: "o1".into(),
        refund_time: "2026-11-27T11:00:00+08:00".into(),
        pay_amount: pay,
        refund_amount: amount,
        transaction_id: id.into(),
        refund_id: refund_id.into(),
        extra: Default::default(),
    }
}

fn ctx(rules: &Rules) -> IngestContext<'_> {
    IngestContext {
        rules,
        partner_mode: false,
        now_ms: T0,
    }
}

fn member(authorization: Authorization, balance: i64) -> Snapshot {
    Snapshot {
        member: MemberSnapshot {
            authorization,
            balance,
        },
        ..Snapshot::default()
    }
}

fn body(plan: &Plan) -> Value {
    serde_json::from_str(&plan.outbox.as_ref().unwrap().body).unwrap()
}

fn final_balance(plan: &Plan) -> Option<i64> {
    plan.members.iter().rev().find_map(|m| match m {
        MemberWrite::Balance { balance, .. } => Some(*balance),
        MemberWrite::Authorization { .. } => None,
    })
}

#[test]
fn payments_by_member_state() {
    let rules = Rules::default();
    // (authorization, balance before, credited today, cap, expected points, expected earn_points, remarks)
    let cases = [
        (Authorization::Authorized, 0, 0, None, 123, true, None),
        (Authorization::Authorized, 40, 0, None, 123, true, None),
        (Authorization::Authorized, 0, 450, Some(500), 50, true, None),
        (
            Authorization::Authorized,
            0,
            500,
            Some(500),
            0,
            false,
            Some(crate::rules::remarks::DAILY_CAP),
        ),
    ];
    for (auth, before, today, cap, points, earn, remarks) in cases {
        let rules = Rules {
            daily_cap: cap,
            ..rules.clone()
        };
        let n = incoming(Event::MallTransaction(tx("T1", "o1", 12_345, "S1")));
        let snap = Snapshot {
            credited_today: today,
            ..member(auth, before)
        };
        let plan = ingest(&n, &snap, &ctx(&rules));
        let case = format!("{auth:?} before {before} today {today} cap {cap:?}");
        assert_eq!(plan.outcome, Ingested::Payment { points }, "{case}");
        assert_eq!(
            plan.inbox.as_ref().unwrap().status,
            InboxStatus::Applied,
            "{case}"
        );
        assert_eq!(plan.ledger.len(), 1, "{case}");
        assert_eq!(plan.ledger[0].points, points, "{case}");
        assert_eq!(plan.ledger[0].balance_after, before + points, "{case}");
        assert_eq!(final_balance(&plan), Some(before + points), "{case}");
        let b = body(&plan);
        assert_eq!(b["increased_points"], points, "{case}");
        assert_eq!(b["earn_points"], earn, "{case}");
        assert_eq!(b["total_points"], before + points, "{case}");
        assert_eq!(
            b["points_update_time"], "2023-11-15T06:13:20+08:00",
            "{case}"
        );
        assert_eq!(b["no_points_remarks"].as_str(), remarks, "{case}");
        let o = plan.outbox.as_ref().unwrap();
        assert_eq!(
            (o.method.as_str(), o.path.as_str(), o.invalid.as_deref()),
            ("POST", "/v3/businesscircle/points/notify", None),
            "{case}"
        );
        let p = plan.payment.as_ref().unwrap();
        assert_eq!((p.amount, p.credited_points), (12_345, points), "{case}");
    }
}

#[test]
fn the_credited_today_total_is_read_only_when_a_daily_cap_needs_it() {
    let t = incoming(Event::MallTransaction(tx("T1", "o1", 10_000, "S1")));
    let uncapped = Rules::default();
    assert_eq!(uncapped.daily_cap, None);
    assert_eq!(
        reads(&t, &ctx(&uncapped)).day,
        None,
        "nothing needs the total"
    );
    let capped = Rules {
        daily_cap: Some(500),
        ..Rules::default()
    };
    // T0 is 2023-11-14 22:13:20 UTC: already the 15th in China (UTC+8)
    assert_eq!(reads(&t, &ctx(&capped)).day, Some(china_day(T0)));
    assert_eq!(china_day(T0), (1_700_000_000 + 8 * 3_600) / 86_400);
    // a refund reads its payment's member, whose total the cap does not need either
    let r = incoming(Event::MallRefund(refund("T1", "R1", 10_000, 100)));
    assert_eq!(reads(&r, &ctx(&uncapped)).day, None);
    assert_eq!(reads(&r, &ctx(&capped)).day, Some(china_day(T0)));
}

#[test]
fn duplicates_rejections_and_other_events() {
    let rules = Rules::default();
    let pay = incoming(Event::MallTransaction(tx("T1", "o1", 100, "S1")));
    let seen = Snapshot {
        seen: true,
        ..Snapshot::default()
    };
    let plan = ingest(&pay, &seen, &ctx(&rules));
    assert_eq!(plan.outcome, Ingested::Duplicate);
    assert!(plan.inbox.is_none() && plan.ledger.is_empty() && plan.outbox.is_none());
    assert_eq!(plan.key.transaction_id, "T1");

    // (transaction, why)
    let bad = [
        (tx("T2", "o1", -5, "S1"), "amount -5 is not positive"),
        (
            tx("T3", "", 100, "S1"),
            "transaction_id, openid or appid is empty",
        ),
    ];
    for (t, why) in bad {
        let plan = ingest(
            &incoming(Event::MallTransaction(t)),
            &Snapshot::default(),
            &ctx(&rules),
        );
        assert_eq!(plan.outcome, Ingested::Rejected(why.into()));
        let row = plan.inbox.unwrap();
        assert_eq!(
            (row.status, row.note.as_str()),
            (InboxStatus::Rejected, why)
        );
        assert!(plan.ledger.is_empty() && plan.outbox.is_none() && plan.members.is_empty());
    }
    let r = incoming(Event::MallRefund(refund("T1", "R1", 100, 0)));
    assert!(matches!(
        ingest(&r, &Snapshot::default(), &ctx(&rules)).outcome,
        Ingested::Rejected(_)
    ));

    let other = Incoming {
        event_type: "MALL_SOMETHING.NEW".into(),
        event: Event::decode("MALL_SOMETHING.NEW", b"{}").unwrap(),
        ..pay.clone()
    };
    let plan = ingest(&other, &Snapshot::default(), &ctx(&rules));
    assert_eq!(plan.outcome, Ingested::Ignored);
    assert_eq!(plan.inbox.unwrap().key.transaction_id, "EV-1");
}

#[test]
fn authorizations_record_the_member_state() {
    let rules = Rules::default();
    for (auth_type, authorized) in [
        (AuthType::RegisteredAndAuthorizationMode, true),
        (AuthType::RegisteredMode, false),
    ] {
        let n = incoming(Event::MallAuth(MallAuth {
            openid: "o1".into(),
            code: "C1".into(),
            mchid: "1230000109".into(),
            auth_type: auth_type.clone(),
            extra: Default::default(),
        }));
        let plan = ingest(&n, &Snapshot::default(), &ctx(&rules));
        assert_eq!(plan.outcome, Ingested::Authorization);
        assert_eq!(
            plan.key.refund_id,
            format!("C1:{}", auth_type.as_str()),
            "the key tells authorization kinds apart"
        );
        assert_eq!(
            plan.members,
            vec![MemberWrite::Authorization {
                openid: "o1".into(),
                authorized,
                auth_type: auth_type.as_str().into(),
                code: "C1".into(),
            }]
        );
    }
}

#[test]
fn refunds_deduct_their_share_hold_until_the_payment_and_respect_the_balance() {
    let stored = PaymentSnapshot {
        openid: "o1".into(),
        amount: 10_000,
        credited_points: 100,
        refunded_amount: 0,
        entitled_debit: 0,
        not_credited: false,
    };
    // (allow negative, balance, refund amount, debited, balance after, shortfall)
    let cases = [
        (false, 100, 2_500, 25, 75, None),
        (false, 100, 10_000, 100, 0, None),
        (false, 10, 5_000, 10, 0, Some(40)),
        (true, 10, 5_000, 50, -40, None),
    ];
    for (allow, balance, amount, debited, after, shortfall) in cases {
        let rules = Rules {
            allow_negative_balance: allow,
            ..Rules::default()
        };
        let n = incoming(Event::MallRefund(refund("T1", "R1", 10_000, amount)));
        let snap = Snapshot {
            payment: Some(stored.clone()),
            ..member(Authorization::Authorized, balance)
        };
        let plan = ingest(&n, &snap, &ctx(&rules));
        let case = format!("allow {allow} balance {balance} refund {amount}");
        assert_eq!(plan.outcome, Ingested::Refund { points: debited }, "{case}");
        assert_eq!(plan.ledger[0].kind, "debit");
        assert_eq!(plan.ledger[0].points, -debited, "{case}");
        assert_eq!(final_balance(&plan), Some(after), "{case}");
        assert_eq!(
            plan.ledger[0].rule["shortfall"].as_i64(),
            shortfall,
            "{case}"
        );
        let u = plan.payment_update.as_ref().unwrap();
        assert_eq!(u.refunded_amount, amount, "{case}");
    }

    // a refund before its payment is held; the payment applies it when it arrives
    let rules = Rules::default();
    let early = incoming(Event::MallRefund(refund("T9", "R1", 10_000, 4_000)));
    let plan = ingest(&early, &Snapshot::default(), &ctx(&rules));
    assert_eq!(plan.outcome, Ingested::Held);
    assert_eq!(plan.inbox.as_ref().unwrap().status, InboxStatus::Held);
    assert!(plan.ledger.is_empty() && plan.members.is_empty());

    let pay = incoming(Event::MallTransaction(tx("T9", "o1", 10_000, "S1")));
    let snap = Snapshot {
        held_refunds: vec![HeldRefund {
            inbox_id: 7,
            resource: early.plaintext.clone(),
        }],
        ..member(Authorization::Authorized, 0)
    };
    let plan = ingest(&pay, &snap, &ctx(&rules));
    assert_eq!(plan.outcome, Ingested::Payment { points: 100 });
    assert_eq!(
        plan.ledger
            .iter()
            .map(|e| (e.kind, e.points, e.balance_after))
            .collect::<Vec<_>>(),
        vec![("credit", 100, 100), ("debit", -40, 60)]
    );
    assert_eq!(plan.released, vec![7]);
    assert_eq!(final_balance(&plan), Some(60));
    // the sync reports the credit; the refund is WeChat's own record
    assert_eq!(body(&plan)["total_points"], 100);
    let p = plan.payment.unwrap();
    assert_eq!((p.refunded_amount, p.entitled_debit), (4_000, 40));
}

#[test]
fn the_sync_is_validated_when_enqueued_and_parked_when_invalid() {
    let rules = Rules {
        stores: vec![StoreRule {
            shop_number: "S6".into(),
            points_per_yuan: None,
            exclude: true,
            no_points_remarks: None,
        }]
        .into(),
        ..Rules::default()
    };
    // an openid longer than WeChat's 64 characters: credited, the sync kept but parked
    let long = "o".repeat(65);
    let plan = ingest(
        &incoming(Event::MallTransaction(tx("T1", &long, 100, "S1"))),
        &member(Authorization::Authorized, 0),
        &ctx(&rules),
    );
    assert_eq!(plan.outcome, Ingested::Payment { points: 1 });
    let o = plan.outbox.unwrap();
    let why = o.invalid.unwrap();
    assert!(why.contains("openid"), "{why}");
    assert!(o.body.contains(&long));

    // partner mode sends the mall's merchant as sub_mchid; an excluded store syncs 0 with remarks
    let partner = IngestContext {
        partner_mode: true,
        ..ctx(&rules)
    };
    let plan = ingest(
        &incoming(Event::MallTransaction(tx("T2", "o1", 10_000, "S6"))),
        &member(Authorization::Authorized, 0),
        &partner,
    );
    let b = body(&plan);
    assert_eq!(b["sub_mchid"], "1230000109");
    assert_eq!(
        (b["earn_points"].as_bool(), b["increased_points"].as_i64()),
        (Some(false), Some(0))
    );
    assert_eq!(b["no_points_remarks"], crate::rules::remarks::EXCLUDED);
}

#[test]
fn adjustments() {
    let a = |points: i64| Adjustment {
        openid: "o1".into(),
        points,
        reference: "DESK-1".into(),
        reason: "redeemed".into(),
    };
    let snap = |balance: Option<i64>, first: Option<(&str, i64)>| AdjustSnapshot {
        balance,
        first: first.map(|(o, p)| (o.to_string(), p)),
    };
    // (adjustment, snapshot, allow negative, outcome, written balance)
    let cases = [
        (
            a(-50),
            snap(None, None),
            false,
            Adjusted::UnknownMember,
            None,
        ),
        (
            a(-50),
            snap(Some(80), Some(("o1", -50))),
            false,
            Adjusted::Duplicate { balance: 80 },
            None,
        ),
        // the same reference with another amount or member: refused, the first named
        (
            a(-40),
            snap(Some(80), Some(("o1", -50))),
            false,
            Adjusted::Conflict {
                openid: "o1".into(),
                points: -50,
            },
            None,
        ),
        (
            a(-50),
            snap(Some(80), Some(("o2", -50))),
            false,
            Adjusted::Conflict {
                openid: "o2".into(),
                points: -50,
            },
            None,
        ),
        (
            a(-50),
            snap(Some(30), None),
            false,
            Adjusted::WouldGoNegative { balance: 30 },
            None,
        ),
        (
            a(-50),
            snap(Some(30), None),
            true,
            Adjusted::Applied { balance: -20 },
            Some(-20),
        ),
        (
            a(-50),
            snap(Some(80), None),
            false,
            Adjusted::Applied { balance: 30 },
            Some(30),
        ),
        // a positive correction on a negative balance is always allowed
        (
            a(10),
            snap(Some(-20), None),
            false,
            Adjusted::Applied { balance: -10 },
            Some(-10),
        ),
    ];
    for (adj, s, allow, outcome, written) in cases {
        let (got, write) = adjust(&adj, s.clone(), allow, T0);
        assert_eq!(got, outcome, "{adj:?} {s:?} allow {allow}");
        assert_eq!(write.as_ref().map(|w| w.balance), written);
        if let Some(w) = write {
            assert_eq!(
                (
                    w.entry.kind,
                    w.entry.transaction_id.as_str(),
                    w.entry.points
                ),
                ("adjust", "DESK-1", adj.points)
            );
            assert_eq!(w.entry.rule["note"], "redeemed");
        }
    }
}

fn manual_push(t: &MallTransaction, tag: &str) -> Incoming {
    let mut t = t.clone();
    t.commit_tag = Some(tag.into());
    Incoming {
        notification_id: format!("EV-{tag}"),
        ..incoming(Event::MallTransaction(t))
    }
}

#[test]
fn a_payment_of_a_member_not_authorized_is_kept_not_credited_and_credited_on_her_application() {
    let rules = Rules::default();
    let t = tx("T1", "o1", 12_345, "S1");
    // not authorized, or unknown (the query failed or was not made): kept, not credited, no sync
    for auth in [Authorization::NotAuthorized, Authorization::Unknown] {
        let plan = ingest(
            &incoming(Event::MallTransaction(t.clone())),
            &member(auth, 40),
            &ctx(&rules),
        );
        assert_eq!(plan.outcome, Ingested::Payment { points: 0 }, "{auth:?}");
        assert!(plan.outbox.is_none(), "{auth:?}: WeChat refuses her sync");
        assert!(plan.payment.as_ref().unwrap().not_credited, "{auth:?}");
        assert_eq!(plan.ledger[0].points, 0, "{auth:?}");
    }
    // her manual application: WeChat pushes the transaction again with commit_tag
    let stored = PaymentSnapshot {
        openid: "o1".into(),
        amount: 12_345,
        credited_points: 0,
        refunded_amount: 0,
        entitled_debit: 0,
        not_credited: true,
    };
    let snap = |auth, p: &PaymentSnapshot| Snapshot {
        payment: Some(p.clone()),
        ..member(auth, 40)
    };
    let manual = manual_push(&t, "M1");
    assert_eq!(reads(&manual, &ctx(&rules)).key.refund_id, "commit:M1");
    for auth in [Authorization::Authorized, Authorization::Unknown] {
        let plan = ingest(&manual, &snap(auth, &stored), &ctx(&rules));
        assert_eq!(
            plan.outcome,
            Ingested::ManualCredit { points: 123 },
            "{auth:?}"
        );
        assert_eq!(plan.inbox.as_ref().unwrap().key.refund_id, "commit:M1");
        assert_eq!(
            (
                plan.ledger[0].refund_id.as_str(),
                plan.ledger[0].points,
                plan.ledger[0].balance_after
            ),
            (MANUAL_CREDIT, 123, 163)
        );
        assert_eq!(final_balance(&plan), Some(163));
        assert_eq!(
            plan.payment_credit,
            Some(PaymentCredit {
                transaction_id: "T1".into(),
                credited_points: 123
            })
        );
        let b = body(&plan);
        assert_eq!(
            (
                &b["earn_points"],
                &b["increased_points"],
                &b["total_points"]
            ),
            (&Value::Bool(true), &Value::from(123), &Value::from(163))
        );
    }
    // known not to be authorized: nothing; credited before, or a plain repeat: a duplicate
    let not_authorized = ingest(
        &manual,
        &snap(Authorization::NotAuthorized, &stored),
        &ctx(&rules),
    );
    let credited = PaymentSnapshot {
        not_credited: false,
        credited_points: 123,
        ..stored.clone()
    };
    let again = ingest(
        &manual_push(&t, "M2"),
        &snap(Authorization::Authorized, &credited),
        &ctx(&rules),
    );
    let plain = ingest(
        &incoming(Event::MallTransaction(t.clone())),
        &snap(Authorization::Authorized, &stored),
        &ctx(&rules),
    );
    for plan in [not_authorized, again, plain] {
        assert_eq!(plan.outcome, Ingested::Duplicate);
        assert!(plan.inbox.is_none() && plan.ledger.is_empty() && plan.outbox.is_none());
        assert_eq!(
            plan.key.refund_id, "",
            "the delivery is counted on the payment's row"
        );
    }
}

#[test]
fn a_parking_event_becomes_wechats_request_or_names_its_bad_field() {
    let p = NewParking {
        idempotency_key: "k1".into(),
        openid: "o1".into(),
        plate_number: "粤B888888".into(),
        state: "IN".into(),
        time: "2026-12-01T10:43:39+08:00".into(),
        appid: "wx1".into(),
        brandid: 1000,
        sub_mchid: None,
    };
    let row = parking_request(&p, T0).unwrap();
    assert_eq!(
        (row.method.as_str(), row.path.as_str()),
        ("POST", "/v3/businesscircle/parkings")
    );
    let b: Value = serde_json::from_str(&row.body).unwrap();
    assert_eq!(
        (&b["brandid"], &b["plate_number"], &b["state"], &b["time"]),
        (
            &Value::from(1000),
            &Value::from("粤B888888"),
            &Value::from("IN"),
            &Value::from("2026-12-01T10:43:39+08:00")
        )
    );
    let bad = |f: fn(&mut NewParking)| {
        let mut q = p.clone();
        f(&mut q);
        parking_request(&q, T0).unwrap_err().field
    };
    assert_eq!(
        bad(|q| q.plate_number = "粤B\u{7}88".into()),
        "plate_number"
    );
    assert_eq!(bad(|q| q.plate_number = String::new()), "plate_number");
    assert_eq!(bad(|q| q.state = "PARKED".into()), "state");
    assert_eq!(bad(|q| q.time = "2026-12-01 10:43".into()), "time");
    assert_eq!(bad(|q| q.openid = "o".repeat(65)), "openid");
    assert!(p.same_event(&NewParking {
        idempotency_key: "other".into(),
        ..p.clone()
    }));
    assert!(!p.same_event(&NewParking {
        state: "OUT".into(),
        ..p.clone()
    }));
}
