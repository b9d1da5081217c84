//! The storage contract for what the mall's own systems record and read: parking events relayed
//! through the outbox, and the member's ledger page by page.

use pointsync::domain::parking_request;
use pointsync::store::{NewParking, ParkingEnqueued, Store};

use super::*;

fn parking(key: &str, state: &str) -> NewParking {
    NewParking {
        idempotency_key: key.into(),
        openid: "o1".into(),
        plate_number: "粤B888888".into(),
        state: state.into(),
        time: "2026-12-01T10:43:39+08:00".into(),
        appid: "wx1".into(),
        brandid: 1000,
        sub_mchid: None,
    }
}

pub async fn parkings_are_stored_once_per_key_and_relayed_through_the_outbox<B: Backend>() {
    let Some((_keep, s)) = B::fresh().await else {
        return;
    };
    let p = parking("k1", "IN");
    let req = parking_request(&p, T0).unwrap();
    assert_eq!(
        s.enqueue_parking(&p, &req).await.unwrap(),
        ParkingEnqueued::Created(1)
    );
    assert_eq!(
        s.enqueue_parking(&p, &req).await.unwrap(),
        ParkingEnqueued::Existing(1)
    );
    let out = parking("k1", "OUT");
    let req_out = parking_request(&out, T0).unwrap();
    assert_eq!(
        s.enqueue_parking(&out, &req_out).await.unwrap(),
        ParkingEnqueued::Conflict(1)
    );
    let claimed = s.claim("w", T0, 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (
            claimed[0].transaction_id.as_str(),
            claimed[0].path.as_str(),
            claimed[0].payload.as_str()
        ),
        (
            "parking:1",
            "/v3/businesscircle/parkings",
            req.body.as_str()
        )
    );
    let v = s.parking(1).await.unwrap().unwrap();
    assert_eq!(
        (v.relay.as_str(), v.attempts, v.state.as_str()),
        ("inflight", 1, "IN")
    );
    assert!(
        s.complete(&claimed[0], "w", &SyncOutcome::Done, T0 + 7)
            .await
            .unwrap()
    );
    let v = s.parking(1).await.unwrap().unwrap();
    assert_eq!((v.relay.as_str(), v.relayed_at), ("done", Some(T0 + 7)));
    assert!(s.parking(2).await.unwrap().is_none());
}

pub async fn the_ledger_pages_newest_first<B: Backend>() {
    let Some((_keep, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    for i in 1..=5 {
        s.ingest(
            &payment(&format!("T{i}"), "o1", i * 1_000, "S1"),
            &ctx(&rules),
        )
        .await
        .unwrap();
    }
    let first = s.ledger_page("o1", None, 2).await.unwrap();
    assert_eq!(
        first
            .iter()
            .map(|e| e.reference.as_str())
            .collect::<Vec<_>>(),
        ["T5", "T4"]
    );
    let next = s.ledger_page("o1", Some(first[1].id), 10).await.unwrap();
    assert_eq!(
        next.iter().map(|e| e.points).collect::<Vec<_>>(),
        [30, 20, 10]
    );
    assert_eq!(next[0].rule["reason"], "credited");
    assert!(s.ledger_page("o2", None, 10).await.unwrap().is_empty());
}
