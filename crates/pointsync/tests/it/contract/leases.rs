//! The storage contract's lease tests: claims, expiry, rescue, renewal and fencing. Leases run on
//! the store's clock (the database server's for a shared store), so these wait in real time.

use std::time::Duration;

use pointsync::store::{IngestContext, Ingested, Lease, Store, SyncOutcome};

use super::{Backend, ctx, payment, refund, trusting};

/// The lease of these tests: long enough that a stall of the shared machine between a claim and
/// the check that it is still held does not expire it.
const LEASE: i64 = 1_500;

/// The wall clock the instance and the database server share on this machine: leases run on the
/// store's clock (the database server's for a shared store), so these tests wait in real time.
fn wall_ms() -> i64 {
    pointsync::clock::now_ms()
}

async fn sleep_until_wall(t_ms: i64) {
    let wait = t_ms - wall_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

pub async fn leases_fence_completions_and_expire<B: Backend>() {
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    s.ingest(&payment("T1", "o1", 10_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    let a = s.claim("A", wall_ms(), LEASE, 10).await.unwrap().remove(0);
    let claimed = wall_ms();
    assert!(
        s.claim("B", wall_ms(), LEASE, 10).await.unwrap().is_empty(),
        "leased rows are not claimed twice"
    );
    assert_eq!(
        s.rescue(wall_ms()).await.unwrap(),
        0,
        "a live lease is kept"
    );
    // A's lease expires; the rescuer returns the row; B claims attempt 2
    sleep_until_wall(claimed + LEASE + 100).await;
    assert_eq!(s.rescue(wall_ms()).await.unwrap(), 1);
    let t = wall_ms();
    let b = s.claim("B", t, LEASE, 10).await.unwrap().remove(0);
    assert_eq!(
        (b.attempt, b.payload == a.payload),
        (2, true),
        "the resend is byte-identical"
    );
    // A's late completion changes nothing (I7); B's counts
    assert!(
        !s.complete(&a, "A", &SyncOutcome::Done, t + 100)
            .await
            .unwrap()
    );
    assert!(
        s.complete(
            &b,
            "B",
            &SyncOutcome::Retry {
                due_at: t + 5_000,
                error: "429".into()
            },
            t + 100
        )
        .await
        .unwrap()
    );
    // due times are the instance's: no waiting
    assert!(
        s.claim("B", t + 4_999, LEASE, 10).await.unwrap().is_empty(),
        "not due yet"
    );
    let c = s.claim("B", t + 5_000, LEASE, 10).await.unwrap().remove(0);
    assert!(
        s.complete(
            &c,
            "B",
            &SyncOutcome::Parked {
                error: "400 PARAM_ERROR".into()
            },
            t + 5_100
        )
        .await
        .unwrap()
    );
    let st = s.status().await.unwrap();
    assert_eq!(
        (st.syncs.get("parked"), st.parked[0].error.as_str()),
        (Some(&1), "400 PARAM_ERROR")
    );
    assert_eq!(s.retry_parked(&[], t + 6_000).await.unwrap(), 1);
    let d = s.claim("C", t + 6_000, LEASE, 10).await.unwrap().remove(0);
    assert!(
        s.complete(&d, "C", &SyncOutcome::Done, t + 6_100)
            .await
            .unwrap()
    );
    assert_eq!(s.status().await.unwrap().syncs.get("done"), Some(&1));
    // release returns an owner's in-flight rows
    s.ingest(&payment("T2", "o1", 10_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    s.claim("D", t + 7_000, 60_000, 10).await.unwrap();
    assert_eq!(s.release("D").await.unwrap(), 1);
}

pub async fn a_renewed_lease_is_not_rescued_and_renewal_is_fenced<B: Backend>() {
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    s.ingest(&payment("T1", "o1", 1_000, "S1"), &ctx(&rules))
        .await
        .unwrap();
    let t = wall_ms();
    let a = s.claim("A", t, LEASE, 10).await.unwrap().remove(0);
    // A's request is still in flight two thirds into its lease: it renews for another lease
    sleep_until_wall(t + LEASE * 2 / 3).await;
    assert!(s.renew(&a, "A", wall_ms(), LEASE).await.unwrap());
    let renewed = wall_ms();
    sleep_until_wall(t + LEASE + 200).await;
    assert_eq!(
        s.rescue(wall_ms()).await.unwrap(),
        0,
        "a renewed lease is kept past the first one's end"
    );
    sleep_until_wall(renewed + LEASE + 100).await;
    assert_eq!(s.rescue(wall_ms()).await.unwrap(), 1, "…until it expires");
    // B takes over; A's late renewal and completion are both fenced out
    let b = s.claim("B", wall_ms(), LEASE, 10).await.unwrap().remove(0);
    assert_eq!(b.attempt, 2);
    assert!(!s.renew(&a, "A", wall_ms(), LEASE).await.unwrap());
    assert!(
        !s.complete(&a, "A", &SyncOutcome::Done, wall_ms())
            .await
            .unwrap()
    );
    assert!(s.renew(&b, "B", wall_ms(), LEASE).await.unwrap());
    assert!(
        s.complete(&b, "B", &SyncOutcome::Done, wall_ms())
            .await
            .unwrap()
    );
    assert!(
        !s.renew(&b, "B", wall_ms(), LEASE).await.unwrap(),
        "a done row is not renewed"
    );
}

/// A payment's sync leased in the callback's own transaction is the first attempt, held as a
/// claimed one is: not claimed twice, not rescued while live, the resend after expiry
/// byte-identical, the late completion fenced out. Duplicates and refunds lease nothing.
pub async fn a_sync_leased_by_its_callback_is_fenced_like_a_claimed_one<B: Backend>() {
    let Some((_d, s)) = B::fresh().await else {
        return;
    };
    let rules = trusting();
    // the lease runs from now on the store's clock: the callback is stored now
    let now = IngestContext {
        now_ms: wall_ms(),
        ..ctx(&rules)
    };
    let lease = Lease {
        owner: "A",
        lease_ms: LEASE,
    };
    let p = payment("T1", "o1", 10_000, "S1");
    let (stored, a) = s.ingest_leased(&p, &now, &lease).await.unwrap();
    let leased = wall_ms();
    assert_eq!(stored, Ingested::Payment { points: 100 });
    if !B::LEASES_ON_RECEIPT {
        assert_eq!(a, None, "this backend leaves the sync to a claim");
        let c = s.claim("B", wall_ms(), LEASE, 10).await.unwrap();
        assert_eq!((c.len(), c[0].attempt), (1, 1), "pending, claimed once");
        return;
    }
    let a = a.expect("the payment's sync is leased with it");
    assert_eq!((a.transaction_id.as_str(), a.attempt), ("T1", 1));
    assert!(
        a.payload.contains("\"transaction_id\":\"T1\""),
        "{}",
        a.payload
    );
    assert!(
        s.claim("B", wall_ms(), LEASE, 10).await.unwrap().is_empty(),
        "a leased sync is not claimed again"
    );
    assert_eq!(
        s.rescue(wall_ms()).await.unwrap(),
        0,
        "a live lease is kept"
    );
    assert_eq!(
        s.ingest_leased(&p, &now, &lease).await.unwrap(),
        (Ingested::Duplicate, None),
        "a duplicate delivery leases nothing"
    );
    let (refunded, none) = s
        .ingest_leased(&refund("T1", "R1", 10_000, 5_000), &now, &lease)
        .await
        .unwrap();
    assert_eq!((refunded, none), (Ingested::Refund { points: 50 }, None));
    // A's lease expires unrenewed; B takes over attempt 2 with the same bytes
    sleep_until_wall(leased + LEASE + 100).await;
    assert_eq!(s.rescue(wall_ms()).await.unwrap(), 1);
    let b = s.claim("B", wall_ms(), LEASE, 10).await.unwrap().remove(0);
    assert_eq!((b.id, b.attempt, b.payload == a.payload), (a.id, 2, true));
    assert!(
        !s.complete(&a, "A", &SyncOutcome::Done, wall_ms())
            .await
            .unwrap(),
        "the stale first attempt is fenced out"
    );
    assert!(
        s.complete(&b, "B", &SyncOutcome::Done, wall_ms())
            .await
            .unwrap()
    );
    // a live leased sync completes as its first attempt
    let now = IngestContext {
        now_ms: wall_ms(),
        ..ctx(&rules)
    };
    let (_, c) = s
        .ingest_leased(&payment("T2", "o1", 2_000, "S1"), &now, &lease)
        .await
        .unwrap();
    let c = c.expect("leased");
    assert!(
        s.complete(&c, "A", &SyncOutcome::Done, wall_ms())
            .await
            .unwrap()
    );
    let status = s.status().await.unwrap();
    assert_eq!(status.syncs.get("done"), Some(&2), "{:?}", status.syncs);
}
