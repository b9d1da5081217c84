//! Callbacks stored on PostgreSQL, grouped under load.
//!
//! An instance writes its callbacks in a few lanes, a member's always in the same one. Every
//! callback queued in a lane while the lane writes a group joins the next group: one transaction
//! for all of them — their members' locks tried at once, the snapshots of those whose reads no
//! other one's writes can change in one statement, each callback's decision exactly as alone and
//! their writes in one more statement (`group.rs`, `batch.rs`), then one `COMMIT` — so under load
//! a callback costs a share of a few round trips and of one commit instead of four round trips
//! and a commit of its own.
//!
//! Written alone instead, each in a task of its own as before grouping: a callback that finds its
//! lane idle (it keeps its lease on receipt), one whose member another transaction holds (it waits
//! for the lock; a held member never stalls a lane; under load it first waits the commit wait
//! again and tries the next group), and every callback of a group that fails (one
//! bad callback never fails another; a group cut short mid-`COMMIT` is written again, and what had
//! committed is then a duplicate). A group's new payments' syncs are leased on receipt too, as
//! a callback written alone leases its own: in the statement that writes them, as many as the
//! shared rate has tokens for (its row taken once, and skipped if another transaction holds it);
//! those it has no token for wait for the dispatcher's claim.
//!
//! At a moderate rate nothing queues, so nothing would group: with two lanes (an instance of
//! three or four runtime workers, [`default_lanes`]) at 200 callbacks/s each sees one every 10 ms. There, while callbacks come closer together than the commit wait
//! (`service.commit_wait_ms`) and further apart than [`MODERATE_GAP`], an instance sends them all
//! to one lane, which waits until a group's first has waited the commit wait for the rest to join
//! (about four at 200/s), as the SQLite writer does. A member's callbacks may then be in two lanes
//! for a moment when the rate crosses that line; its lock keeps them apart as it keeps two
//! instances apart.
//!
//! Faster than that, a member's callbacks keep to their own lane, and a lane still waits for
//! company until its group's first callback has waited the commit wait. Behind several instances
//! each lane sees a share of the callbacks, and a lane that took only what was queued wrote groups
//! of a few and a fifth of the callbacks alone: a transaction, a commit and their round trips each
//! (BENCHMARKS.md, twelfth session). A lane kept busy does not wait: its first callback has
//! waited longer than that while the lane wrote the group before. Behind several instances a group
//! also finds some of its members held by another instance's transaction; those callbacks wait the
//! commit wait once more and join the lane's next group, where each used to take a transaction of
//! its own.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};
use wechatpay::clock::monotonic;
use wechatpay::notify::Event;

use super::group::{Grouped, store_group};
use super::held::Held;
use super::write::{self, PgLease};
use super::{classify, retried};
use crate::rules::Rules;
use crate::store::pace::Pace;
use crate::store::{Claimed, Incoming, IngestContext, Ingested, StoreError};

/// Lanes per instance by default: one per two runtime worker threads, at least one
/// (`OpenOptions::lanes` overrides). Fewer lanes make larger groups but leave an instance fewer
/// transactions at once. While a group's callbacks were written one statement each, 2 lanes made
/// one instance's acknowledgements so slow at the maximum rate that WeChat re-sent most callbacks
/// and 4 did best; with a group's writes in one statement (`batch.rs`), 2 lanes cost PostgreSQL
/// 0.41–0.44 of the service's CPU per payment at the maximum rate against 0.53–0.54 with 4 behind
/// one instance. One lane for an instance of one or two workers cost ~10 % less again behind one,
/// two and three instances, with groups half as large again and the same throughput
/// (BENCHMARKS.md, sixteenth session); a lane's group of [`MAX_GROUP`] takes a few milliseconds,
/// so one lane is far from the limit of two cores' callbacks. Larger machines were not measured.
pub(super) fn default_lanes() -> usize {
    let workers = tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
    workers.div_ceil(2).max(1)
}

/// At most this many callbacks in one group (and so under one transaction's locks).
const MAX_GROUP: usize = 16;

/// How long a lane waits for a callback it writes alone before it takes the next.
const LANE_WAIT: Duration = Duration::from_millis(20);

/// Below this many callbacks per second (one every 2.5 ms) an instance writes its callbacks in one
/// lane, so that, while they come closer together than the commit wait, one lane's group gathers
/// several: two lanes at 200/s would each see a callback every 10 ms.
const MODERATE_GAP: Duration = Duration::from_micros(2500);

/// How a callback's transaction begins: its snapshot statement keeps one plan (a prepared
/// statement reading arrays is otherwise planned again on every execution, ~0.5 ms, because its
/// plan for one callback looks cheaper than the plan for any number).
const BEGIN: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

type Stored = Result<(Ingested, Option<Claimed>), StoreError>;

/// One callback to store, with what deciding it needs.
#[derive(Debug)]
struct Job {
    n: Incoming,
    /// Its member's lock key (`None`: an event about no member).
    key: Option<String>,
    rules: Rules,
    partner_mode: bool,
    now_ms: i64,
    /// The owner and length of the lease its sync may take on receipt.
    lease: Option<(String, i64)>,
    /// Its lane waits until then for others to share its transaction: the commit wait after it
    /// was queued.
    company: Option<tokio::time::Instant>,
    /// Its member was held by another transaction when its group was written, and it waits for
    /// the next group.
    carried: bool,
    reply: oneshot::Sender<Stored>,
}

impl Job {
    /// The lease its sync may take on receipt, under the instances' shared rate `qps`.
    fn pg_lease(&self, qps: f64) -> Option<PgLease<'_>> {
        self.lease.as_ref().map(|(owner, lease_ms)| PgLease {
            owner,
            lease_ms: *lease_ms,
            qps,
        })
    }

    fn ctx(&self) -> IngestContext<'_> {
        IngestContext {
            rules: &self.rules,
            partner_mode: self.partner_mode,
            now_ms: self.now_ms,
        }
    }
}

/// What every lane shares.
#[derive(Debug, Clone)]
struct Writer {
    pool: PgPool,
    database: String,
    rate_qps: f64,
    /// `service.commit_wait_ms`.
    wait: Duration,
}

/// The lanes and their writing tasks. Cheap to clone; the tasks end with the last clone.
#[derive(Debug, Clone)]
pub(super) struct Ingests {
    lanes: Vec<mpsc::UnboundedSender<Job>>,
    database: String,
    pace: Arc<Mutex<Pace>>,
    /// `service.commit_wait_ms`.
    wait: Duration,
}

impl Ingests {
    /// Starts the lanes on the current runtime.
    pub(super) fn start(
        pool: PgPool,
        database: String,
        rate_qps: f64,
        wait: Duration,
        lanes: usize,
    ) -> Self {
        let w = Writer {
            pool,
            database: database.clone(),
            rate_qps,
            wait,
        };
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(lane(w.clone(), rx));
                tx
            })
            .collect();
        Self {
            lanes,
            database,
            pace: Arc::default(),
            wait,
        }
    }

    /// Stores a callback, its sync leased under `lease` (owner, length) when a rate token is there
    /// for it (written alone or in a group); returns what was stored and the leased sync.
    pub(super) async fn store(
        &self,
        n: &Incoming,
        ctx: &IngestContext<'_>,
        lease: Option<(String, i64)>,
    ) -> Stored {
        let key = member_key(n);
        // while callbacks come closer together than the commit wait, each may wait that long
        // for company; at a moderate rate one lane gathers them, otherwise a member's callbacks
        // always go to the same lane
        let now = monotonic();
        let (company, one_lane) = {
            let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
            pace.arrived(now);
            if pace.brisk(self.wait) {
                let until = tokio::time::Instant::from_std(now + self.wait);
                (Some(until), pace.apart(MODERATE_GAP))
            } else {
                (None, false)
            }
        };
        let lane = if one_lane {
            &self.lanes[0]
        } else {
            let mut h = DefaultHasher::new();
            key.as_ref().unwrap_or(&n.notification_id).hash(&mut h);
            &self.lanes[(h.finish() % self.lanes.len() as u64) as usize]
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            n: n.clone(),
            key,
            rules: ctx.rules.clone(),
            partner_mode: ctx.partner_mode,
            now_ms: ctx.now_ms,
            lease,
            company,
            carried: false,
            reply,
        };
        let closed = || StoreError::Closed {
            database: self.database.clone(),
        };
        lane.send(job).map_err(|_| closed())?;
        // the writing task ended without an answer: it panicked or the runtime is stopping
        answer
            .await
            .map_err(|e| StoreError::unfinished(self.database.clone(), "storing a callback", e))?
    }
}

/// The lock key of a callback's member (`None`: an event about no member).
fn member_key(n: &Incoming) -> Option<String> {
    let openid = match &n.event {
        Event::MallTransaction(t) => &t.openid,
        Event::MallRefund(r) => &r.openid,
        Event::MallAuth(a) => &a.openid,
        _ => return None,
    };
    Some(write::member_lock(openid))
}

/// `s` as an escaped string constant (`E'…'`: backslashes and quotes escaped, whatever
/// `standard_conforming_strings` says), or `None` for text PostgreSQL cannot hold (a NUL).
fn literal(s: &str) -> Option<String> {
    if s.contains('\0') {
        return None;
    }
    Some(format!(
        "E'{}'",
        s.replace('\\', "\\\\").replace('\'', "\\'")
    ))
}

/// One callback in a transaction of its own, its member's lock taken with `BEGIN` (one round
/// trip).
async fn ingest_alone(
    pool: &PgPool,
    job: &Job,
    lease: Option<&PgLease<'_>>,
) -> Result<(Ingested, Option<Claimed>), sqlx::Error> {
    let mut tx = match job.key.as_deref().and_then(literal) {
        Some(key) => {
            pool.begin_with(format!(
                "{BEGIN}; SELECT pg_advisory_xact_lock(hashtextextended({key}, 0))"
            ))
            .await?
        }
        None => {
            let mut tx = pool.begin_with(BEGIN).await?;
            if let Some(key) = &job.key {
                write::lock_key(&mut tx, key).await?;
            }
            tx
        }
    };
    let outcome = write::store_locked(&mut tx, &job.n, &job.ctx(), lease).await?;
    tx.commit().await?;
    Ok(outcome)
}

async fn lane(w: Writer, mut rx: mpsc::UnboundedReceiver<Job>) {
    // the lane's connection for its groups, kept while they come close together
    let mut conn = Held::new(w.pool.clone());
    // callbacks whose member another transaction held when their group was written (of those
    // that may wait for company): they wait the commit wait again, for that transaction to end,
    // and try the next group before they wait for their members' locks alone
    let mut held: Vec<Job> = Vec::new();
    loop {
        let mut group = std::mem::take(&mut held);
        let until = if group.is_empty() {
            let Some(first) = rx.recv().await else {
                break;
            };
            let until = first.company;
            group.push(first);
            until
        } else {
            Some(tokio::time::Instant::from_std(monotonic()) + w.wait)
        };
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        // the first came while callbacks came that fast: wait for the next ones to join, until
        // it has waited the commit wait (a lane kept busy has made it wait that long already)
        if let Some(until) = until {
            while group.len() < MAX_GROUP {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(j)) => group.push(j),
                    _ => break,
                }
            }
        }
        if group.len() == 1 {
            // written alone; the lane waits for it a little, so callbacks arriving meanwhile
            // form a group, but never for a member another transaction holds
            for j in group {
                let _ = tokio::time::timeout(LANE_WAIT, w.alone(j)).await;
            }
        } else {
            let (again, alone) = (w.group(&mut conn, group).await.into_iter())
                .partition(|j: &Job| j.company.is_some() && !j.carried);
            w.all_alone(alone);
            held = again;
            for j in &mut held {
                j.carried = true;
            }
        }
    }
}

impl Writer {
    /// Writes `job` in a transaction of its own, in a task of its own (retried on a serialization
    /// failure or deadlock); the task answers the job.
    fn alone(&self, job: Job) -> tokio::task::JoinHandle<()> {
        let w = self.clone();
        tokio::spawn(async move {
            let lease = job.pg_lease(w.rate_qps);
            let stored = retried(|| ingest_alone(&w.pool, &job, lease.as_ref()))
                .await
                .map_err(|e| classify(&w.database, "storing a callback", e));
            let _ = job.reply.send(stored);
        })
    }

    /// Writes each of `jobs` [`Writer::alone`].
    fn all_alone(&self, jobs: Vec<Job>) {
        for j in jobs {
            drop(self.alone(j));
        }
    }

    /// Writes `jobs` in one transaction: those whose member lock is free now, all of them alone
    /// if the transaction fails; returns the others.
    async fn group(&self, conn: &mut Held, jobs: Vec<Job>) -> Vec<Job> {
        let Ok(mut c) = conn.take().await else {
            self.all_alone(jobs);
            return Vec::new();
        };
        let mut tx = match c.begin_with(BEGIN).await {
            Ok(tx) => tx,
            Err(_) => {
                self.all_alone(jobs);
                return Vec::new();
            }
        };
        // text with a NUL cannot be bound: such a callback fails alone, as it always did
        let mut wanted: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j.key.as_deref())
            .filter(|k| !k.contains('\0'))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let locked: Result<Vec<(String, bool)>, sqlx::Error> = sqlx::query_as(
            "SELECT k, pg_try_advisory_xact_lock(hashtextextended(k, 0)) FROM UNNEST($1::TEXT[]) AS k",
        )
        .bind(&wanted)
        .fetch_all(&mut *tx)
        .await;
        let Ok(locked) = locked else {
            let _ = tx.rollback().await;
            self.all_alone(jobs);
            return Vec::new();
        };
        let held: HashSet<String> = locked
            .into_iter()
            .filter_map(|(k, l)| l.then_some(k))
            .collect();
        let (mut grouped, mut waiting) = (Vec::new(), Vec::new());
        for job in jobs {
            match &job.key {
                Some(k) if !held.contains(k) => waiting.push(job),
                _ => grouped.push(job),
            }
        }
        let leases: Vec<Option<PgLease<'_>>> =
            grouped.iter().map(|j| j.pg_lease(self.rate_qps)).collect();
        let each: Vec<Grouped<'_>> = grouped
            .iter()
            .zip(&leases)
            .map(|(j, lease)| Grouped {
                n: &j.n,
                ctx: j.ctx(),
                key: j.key.as_deref(),
                lease: lease.as_ref(),
            })
            .collect();
        let written = store_group(&mut tx, &each).await;
        drop(each);
        drop(leases);
        let stored = match written {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    "a group of {} callbacks is written one by one: {e}",
                    grouped.len()
                );
                let _ = tx.rollback().await;
                self.all_alone(grouped);
                return waiting;
            }
        };
        if let Err(e) = tx.commit().await {
            tracing::debug!(
                "a group of {} callbacks did not commit, written one by one: {e}",
                grouped.len()
            );
            self.all_alone(grouped);
            return waiting;
        }
        conn.keep(c);
        for (job, s) in grouped.into_iter().zip(stored) {
            let _ = job.reply.send(Ok(s));
        }
        waiting
    }
}

#[cfg(test)]
mod tests {
    use super::default_lanes;

    /// An instance writes in one lane per two runtime workers, at least one: one lane on one or
    /// two workers (two instances sharing two cores, or one alone on them), two on four.
    #[test]
    fn an_instance_has_a_lane_per_two_runtime_workers() {
        let lanes = |workers: usize| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .build()
                .unwrap();
            rt.block_on(async { default_lanes() })
        };
        assert_eq!([lanes(1), lanes(2), lanes(3), lanes(4)], [1, 1, 2, 2]);
        let one = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(one.block_on(async { default_lanes() }), 1);
        assert_eq!(default_lanes(), 1, "outside a runtime");
    }
}
