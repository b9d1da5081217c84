//! The outbox dispatcher: claims due syncs under a lease, sends each stored request byte for
//! byte within the rate limit, records the outcome fenced by the attempt; and the rescuer that
//! returns expired leases.
//!
//! A callback's new sync can skip the claim: when the dispatcher has room (a free in-flight slot,
//! with at most half of them going this way, and a rate token), the receiver takes a [`Slot`]
//! from the [`Handoff`], the store leases the sync in the callback's own transaction, and the
//! dispatcher sends it at once — one commit and two hand-offs fewer per payment at moderate rates.
//! The lease and the attempt's fencing are the same as a claim's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Method;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use wechatpay::RawRequest;

use super::bucket::TokenBucket;
use crate::clock::{Clock, monotonic};
use crate::config::DispatcherConfig;
use crate::metrics::Metrics;
use crate::retry::{RetryPolicy, classify, retry_outcome};
use crate::store::{Claimed, Lease, Store, StoreError, SyncOutcome};

/// A sync leased by the callback that enqueued it, with the in-flight slot it was leased under.
#[derive(Debug)]
struct Handed {
    claimed: Claimed,
    permit: OwnedSemaphorePermit,
}

/// Lets the receiver lease a callback's new sync in the callback's own transaction when the
/// dispatcher has room for it now.
#[derive(Debug)]
pub struct Handoff {
    owner: String,
    lease_ms: i64,
    concurrency: usize,
    permits: Arc<Semaphore>,
    bucket: Arc<TokenBucket>,
    tx: mpsc::UnboundedSender<Handed>,
    open: AtomicBool,
    /// Told each time a send frees its slot (before its outcome is recorded).
    freed: Notify,
}

impl Handoff {
    /// A slot to lease one sync under, if the dispatcher is running, more than half its in-flight
    /// slots are free and the rate allows a request now; `None` leaves the sync to a claim.
    pub fn slot(self: &Arc<Self>) -> Option<Slot> {
        if !self.open.load(Ordering::Acquire)
            || self.permits.available_permits() * 2 <= self.concurrency
        {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        if self.bucket.take_up_to(1) == 0 {
            self.free(permit);
            return None;
        }
        Some(Slot {
            handoff: self.clone(),
            permit: Some(permit),
        })
    }

    /// Gives an in-flight slot back and tells the dispatcher, which may be waiting for one with
    /// every slot taken: a finished send, a callback's slot given back unused, and a slot taken
    /// for a callback when no rate token was there all go through here (only the dispatcher's own
    /// loop returns the slots it took and claimed no row for without telling itself).
    fn free(&self, permit: OwnedSemaphorePermit) {
        drop(permit);
        self.freed.notify_one();
    }
}

/// An in-flight slot and a rate token held while a callback is stored: [`Slot::hand`] gives the
/// sync leased under it to the dispatcher; dropped unused, both are given back.
#[derive(Debug)]
pub struct Slot {
    handoff: Arc<Handoff>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// The lease to store the sync under.
    pub fn lease(&self) -> Lease<'_> {
        Lease {
            owner: &self.handoff.owner,
            lease_ms: self.handoff.lease_ms,
        }
    }

    /// Gives the sync leased under this slot to the dispatcher, which sends it at once.
    pub fn hand(mut self, claimed: Claimed) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        if let Err(mpsc::error::SendError(h)) = self.handoff.tx.send(Handed { claimed, permit }) {
            // stopping: the lease is released with the others, or expires and is rescued
            tracing::info!(
                transaction_id = h.claimed.transaction_id,
                "the dispatcher has stopped; the sync just stored waits for its lease to end"
            );
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.handoff.bucket.give_back(1);
            self.handoff.free(permit);
        }
    }
}

/// Sends queued points syncs.
#[derive(Debug)]
pub struct Dispatcher<S> {
    store: S,
    client: wechatpay::Client,
    cfg: DispatcherConfig,
    policy: RetryPolicy,
    owner: String,
    bucket: Arc<TokenBucket>,
    handoff: Arc<Handoff>,
    handed: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Handed>>>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    clock_watch: Option<Arc<super::ClockWatch>>,
    unknown_serial: Option<Arc<Notify>>,
    recent_errors: Option<Arc<super::RecentErrors>>,
}

/// The request stored at enqueue time, byte for byte.
fn stored_request(c: &Claimed) -> RawRequest {
    let method = Method::from_bytes(c.method.as_bytes()).unwrap_or(Method::POST);
    RawRequest::new(method, c.path.clone(), c.payload.clone().into_bytes())
}

impl<S: Store> Dispatcher<S> {
    /// A dispatcher with a fresh owner id (one per process start).
    pub fn new(
        store: S,
        client: wechatpay::Client,
        cfg: DispatcherConfig,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let owner = format!(
            "{}-{}",
            std::process::id(),
            wechatpay::crypto::random_token(10)
        );
        let bucket = Arc::new(TokenBucket::new(cfg.qps));
        let (tx, rx) = mpsc::unbounded_channel();
        let handoff = Arc::new(Handoff {
            owner: owner.clone(),
            lease_ms: cfg.lease_ms,
            concurrency: cfg.concurrency,
            permits: Arc::new(Semaphore::new(cfg.concurrency)),
            bucket: bucket.clone(),
            tx,
            open: AtomicBool::new(false),
            freed: Notify::new(),
        });
        Self {
            store,
            client,
            bucket,
            handoff,
            handed: std::sync::Mutex::new(Some(rx)),
            owner,
            policy: RetryPolicy::from(&cfg),
            cfg,
            metrics,
            clock,
            clock_watch: None,
            unknown_serial: None,
            recent_errors: None,
        }
    }

    /// Where the receiver leases new syncs for this dispatcher (open while [`Dispatcher::run`]
    /// runs).
    pub fn handoff(&self) -> Arc<Handoff> {
        self.handoff.clone()
    }

    /// Remembers failed syncs in `errors` (the console's last errors).
    pub fn with_recent_errors(mut self, errors: Arc<super::RecentErrors>) -> Self {
        self.recent_errors = Some(errors);
        self
    }

    /// Notifies `n` when WeChat's answer is signed by a serial not trusted yet.
    pub fn with_unknown_serial(mut self, n: Arc<Notify>) -> Self {
        self.unknown_serial = Some(n);
        self
    }

    /// Reports the clock skew seen in WeChat's answers to `watch`.
    pub fn with_clock_watch(mut self, watch: Arc<super::ClockWatch>) -> Self {
        self.clock_watch = Some(watch);
        self
    }

    /// This process's lease owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Sends the stored request, renewing the lease while it is in flight so a slow answer is
    /// never taken over and sent again. The caller claimed the row with a rate token in hand.
    async fn send(&self, c: &Claimed) -> Result<wechatpay::Response, wechatpay::Error> {
        let req = stored_request(c);
        let send = self.client.execute(&req);
        tokio::pin!(send);
        let every = Duration::from_millis((self.cfg.lease_ms / 3).max(1) as u64);
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::from_std(monotonic()) + every, every);
        loop {
            tokio::select! {
                r = &mut send => return r,
                _ = renew.tick() => {
                    let now = self.clock.now_ms();
                    match self.store.renew(c, &self.owner, now, self.cfg.lease_ms).await {
                        Ok(true) => self.metrics.syncs.with_label_values(&["renewed"]).inc(),
                        Ok(false) => tracing::warn!(
                            transaction_id = c.transaction_id,
                            attempt = c.attempt,
                            "lease lost while the request is in flight (taken over after expiry)"
                        ),
                        Err(e) => {
                            self.metrics.store_error("renew", &e);
                            tracing::warn!(
                                transaction_id = c.transaction_id,
                                "cannot renew the lease of an in-flight sync: {e}"
                            )
                        }
                    }
                }
            }
        }
    }

    /// Sends `c` in the in-flight slot `permit`, frees the slot once the request is over, then
    /// records the outcome: a store that batches outcomes (and may wait a moment for company)
    /// never holds a slot another sync could be sent in.
    async fn send_one(self: Arc<Self>, c: Claimed, permit: OwnedSemaphorePermit) {
        let outcome = if self.policy.expired(self.clock.now_ms() - c.created_at) {
            self.policy.dead()
        } else {
            crate::crash::point("before_send");
            let started = monotonic();
            let result = self.send(&c).await;
            self.metrics
                .sync_seconds
                .observe(started.elapsed().as_secs_f64());
            if result.is_ok() {
                crate::crash::point("after_204");
            }
            let skew = match &result {
                Ok(res) => res.clock_skew_secs,
                Err(e) => e.api().and_then(|a| a.clock_skew_secs),
            };
            if let (Some(w), Some(skew)) = (&self.clock_watch, skew) {
                w.observe("the Date of WeChat's answers", skew);
            }
            if let (
                Some(n),
                Err(wechatpay::Error::Verify {
                    source: wechatpay::VerifyError::UnknownSerial { .. },
                    ..
                }),
            ) = (&self.unknown_serial, &result)
            {
                n.notify_one();
            }
            if let Err(e) = &result {
                let request_id = e
                    .api()
                    .and_then(|a| a.request_id.clone())
                    .unwrap_or_default();
                tracing::warn!(
                    transaction_id = c.transaction_id,
                    attempt = c.attempt,
                    request_id,
                    "points sync failed: {e}"
                );
                if let Some(errors) = &self.recent_errors {
                    errors.push(format!(
                        "{}: points sync of {} (attempt {}) failed: {e}",
                        crate::domain::china_time(self.clock.now_ms()),
                        c.transaction_id,
                        c.attempt
                    ));
                }
            }
            let now = self.clock.now_ms();
            let failure = result.as_ref().err().map(classify);
            retry_outcome(
                failure.as_ref(),
                c.attempt,
                now - c.created_at,
                now,
                &self.policy,
                rand::random::<f64>(),
            )
        };
        // the request is over: the slot is free before the outcome waits to be recorded
        self.handoff.free(permit);
        let label = match &outcome {
            SyncOutcome::Done => "done",
            SyncOutcome::Retry { .. } => "retry",
            SyncOutcome::Parked { .. } => "parked",
            SyncOutcome::Dead { .. } => "dead",
        };
        let now = self.clock.now_ms();
        match self.store.complete(&c, &self.owner, &outcome, now).await {
            Ok(true) => {
                self.metrics.syncs.with_label_values(&[label]).inc();
                if label == "done" {
                    let secs = (now - c.created_at).max(0) as f64 / 1000.0;
                    self.metrics.callback_to_sync_seconds.observe(secs);
                }
            }
            Ok(false) => {
                self.metrics.syncs.with_label_values(&["fenced_out"]).inc();
                tracing::warn!(
                    transaction_id = c.transaction_id,
                    attempt = c.attempt,
                    "lease was taken over; completion ignored"
                );
            }
            Err(e) => {
                self.metrics.store_error("complete", &e);
                tracing::error!(
                    transaction_id = c.transaction_id,
                    "cannot record sync outcome (the lease will expire and the row be retried): {e}"
                )
            }
        }
    }

    /// Returns once at least `n` in-flight slots are free. A send frees its slot before its
    /// outcome is recorded, and outcomes wait to be recorded in batches (up to 20 ms on
    /// PostgreSQL): waiting for a send's task to end instead left every slot idle that long.
    async fn slots_free(&self, n: usize) {
        while self.handoff.permits.available_permits() < n {
            // a slot freed between the check and the wait is not missed: `notify_one` keeps
            // its permit for the next wait
            self.handoff.freed.notified().await;
        }
    }

    /// Sends `c` in its own task once an in-flight slot is free.
    async fn spawn_send(self: &Arc<Self>, tasks: &mut JoinSet<()>, c: Claimed) {
        let permit = self
            .handoff
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        self.spawn_with(tasks, c, permit);
    }

    fn spawn_with(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        c: Claimed,
        permit: OwnedSemaphorePermit,
    ) {
        let me = self.clone();
        tasks.spawn(me.send_one(c, permit));
    }

    /// Sends a sync its callback leased, in the slot it was leased under.
    fn spawn_handed(self: &Arc<Self>, tasks: &mut JoinSet<()>, h: Handed) {
        self.metrics
            .syncs
            .with_label_values(&["leased_on_receipt"])
            .inc();
        self.spawn_with(tasks, h.claimed, h.permit);
    }

    /// Claims at most `limit` due rows, only as many as there are rate tokens for now: a claimed
    /// row is sent at once, so its lease never runs while it waits for the rate limit. Returns the
    /// rows and whether the rate limit (not the backlog) stopped the claim.
    async fn claim(&self, limit: i64) -> Result<(Vec<Claimed>, bool), StoreError> {
        let tokens = self.bucket.take_up_to(limit.max(0) as usize);
        if tokens == 0 {
            return Ok((Vec::new(), true));
        }
        let rows = self
            .store
            .claim(
                &self.owner,
                self.clock.now_ms(),
                self.cfg.lease_ms,
                tokens as i64,
            )
            .await;
        let used = rows.as_ref().map_or(0, Vec::len);
        self.bucket.give_back(tokens - used);
        let starved = used == tokens && (tokens as i64) < limit;
        rows.map(|r| (r, starved))
    }

    /// One round: claim due rows (as many as the rate allows now) and send them, at most
    /// `concurrency` at once. Returns how many were claimed.
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, StoreError> {
        self.bucket.ready().await;
        let (claimed, _) = self.claim(self.cfg.batch).await?;
        let n = claimed.len();
        let mut tasks = JoinSet::new();
        for c in claimed {
            self.spawn_send(&mut tasks, c).await;
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }

    /// Runs until `stop` turns true. Keeps up to `concurrency` syncs in flight, claiming more as
    /// slots free up (no per-batch barrier); sleeps when nothing is due, woken early by `wake`;
    /// sends at once what callbacks leased through the handoff ([`Dispatcher::handoff`]). On stop
    /// it claims nothing more, lets in-flight syncs finish, and releases any lease left.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        let taken = self.handed.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut handed) = taken else {
            tracing::error!("the dispatcher is already running");
            return;
        };
        self.handoff.open.store(true, Ordering::Release);
        let permits = self.handoff.permits.clone();
        // how many free slots are worth a claim while syncs are in flight
        let refill = (self.cfg.concurrency / 2)
            .min(usize::try_from(self.cfg.batch).unwrap_or(0))
            .max(1);
        let mut tasks = JoinSet::new();
        // how many slots the next claim may take (`None`: every free one). After a quiet wait a
        // claim takes one, then twice as many each time it comes back full: a claim waits for the
        // store (on SQLite up to the commit wait), and callbacks arriving meanwhile need more
        // than half the slots free to lease their own syncs. Taking every slot for the few a
        // callback could not lease left the next callbacks none, each waking one more claim; a
        // backlog is still found in a few quick rounds.
        let mut ramp: Option<i64> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            while let Ok(h) = handed.try_recv() {
                self.spawn_handed(&mut tasks, h);
            }
            // the slots first, then as many rows: a claimed row never waits for a slot. (Waiting
            // for one here, the loop stopped reading what callbacks hand over; with one slot, a
            // callback that took it between a claim's count and its send stalled every sync.)
            let most = ramp.map_or(self.cfg.batch, |r| r.min(self.cfg.batch));
            let mut slots: Vec<OwnedSemaphorePermit> = (0..most)
                .map_while(|_| permits.clone().try_acquire_owned().ok())
                .collect();
            let want = slots.len() as i64;
            let (mut claimed, mut starved) = (0, false);
            if want > 0 {
                match self.claim(want).await {
                    Ok((rows, rate_limited)) => {
                        claimed = rows.len() as i64;
                        starved = rate_limited;
                        for (c, slot) in rows.into_iter().zip(slots.drain(..)) {
                            self.spawn_with(&mut tasks, c, slot);
                        }
                    }
                    Err(e) => {
                        self.metrics.store_error("claim", &e);
                        tracing::error!("dispatcher cannot claim work (retrying): {e}")
                    }
                }
            }
            // the slots no row was claimed for
            drop(slots);
            if starved {
                // more may be due than the rate allows now: claim again when a token is there
                tokio::select! {
                    _ = self.bucket.ready() => {}
                    Some(h) = handed.recv() => self.spawn_handed(&mut tasks, h),
                    _ = stop.changed() => {}
                }
                continue;
            }
            if want == 0 || (claimed > 0 && claimed == want) {
                if claimed > 0 {
                    ramp = ramp
                        .map(|r| r.saturating_mul(2))
                        .filter(|&r| r < self.cfg.batch);
                }
                // every slot busy, or probably more due: claim again once half the slots are
                // free (one statement claims them all), or a task ends
                tokio::select! {
                    _ = self.slots_free(refill) => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    Some(h) = handed.recv() => self.spawn_handed(&mut tasks, h),
                    _ = stop.changed() => {}
                }
                continue;
            }
            // nothing more is due now: a finished send frees a slot but makes nothing due (a
            // retry is due later, found by the poll), so only new work or the poll wakes us; a
            // sync leased by its callback is sent without waking the claim
            ramp = Some(1);
            let poll = tokio::time::sleep(Duration::from_millis(self.cfg.poll_ms));
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    _ = wake.notified() => break,
                    _ = &mut poll => break,
                    _ = stop.changed() => break,
                    Some(h) = handed.recv() => self.spawn_handed(&mut tasks, h),
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            }
        }
        // no new leases; what callbacks leased meanwhile is sent with the rest
        self.handoff.open.store(false, Ordering::Release);
        while let Ok(h) = handed.try_recv() {
            self.spawn_handed(&mut tasks, h);
        }
        while tasks.join_next().await.is_some() {}
        handed.close();
        while let Ok(h) = handed.try_recv() {
            self.spawn_handed(&mut tasks, h);
        }
        while tasks.join_next().await.is_some() {}
        match self.store.release(&self.owner).await {
            Ok(n) if n > 0 => tracing::info!("released {n} leased syncs"),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot release leases (they will expire): {e}"),
        }
    }
}

/// Returns expired leases to pending, until `stop`.
pub async fn rescuer<S: Store>(
    store: S,
    every: Duration,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match store.rescue(clock.now_ms()).await {
            Ok(n) if n > 0 => {
                metrics.syncs.with_label_values(&["rescued"]).inc_by(n);
                tracing::warn!("rescued {n} syncs whose lease expired");
            }
            Ok(_) => {}
            Err(e) => tracing::error!("rescuer: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
