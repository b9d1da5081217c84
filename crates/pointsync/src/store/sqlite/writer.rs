//! The writer thread: takes the queued jobs as one group, runs each in its own savepoint inside one
//! `BEGIN IMMEDIATE` transaction (a group's only job needs none), commits once, and only then
//! answers each job's caller.
//!
//! A group made only of a finished send's bookkeeping (recording its outcome, renewing or
//! releasing a lease) waits up to [`LINGER`] for another job to share its commit. At a moderate
//! rate a payment's outcome then goes into the next callback's commit, whose pages it shares (the
//! outbox's last leaf, the `inflight` entries of its index), instead of a commit of its own with
//! its own write calls and `synchronous` switches. Its caller is answered after that commit, as
//! before.
//!
//! Callbacks do the same while they arrive closer together than the store's commit wait
//! (`service.commit_wait_ms`, [`Pace`]): a group holding one waits up to that long after its first
//! job for the next ones, so at 200 payments/s about four callbacks share a commit, its fsync, its
//! shared pages (the tables' last leaves) and its thread wake-ups. Each is answered after that
//! commit, as before: nothing is acknowledged before it is durable. Slower than that, a callback
//! commits at once, as it always did.
//!
//! A waiting group sleeps until its deadline and then takes everything queued meanwhile, instead of
//! waking for each job as it arrives: one wake-up of this thread per group, not one per job, and a
//! sender finds no sleeping receiver to wake (no futex call on its side either). Each job carries
//! the time it was queued, so the pace is measured from arrivals, not from when they were taken.
//! A claim or a rescue is the exception ([`URGENT`]): the dispatcher's free slots wait on it, so
//! [`Queue::send`] unparks this thread for it and the group commits at once (on 39baace a claim
//! waited out a lingering group's deadline, and 13–21 % of the CPUs idled while syncs drained;
//! BENCHMARKS.md).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::Thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;
use wechatpay::clock::monotonic;

use super::connection::classify;
use super::write;
use crate::store::StoreError;
use crate::store::pace::Pace;

/// What an ingest job is called (in errors, and to tell callback groups apart).
pub(super) const STORING_A_CALLBACK: &str = "storing a callback";

/// Jobs that only keep the outbox's leases: their loss in a power cut re-sends a stored sync, so
/// their groups commit without an fsync of their own (see the store's module header).
const LEASE_BOOKKEEPING: [&str; 5] = [CLAIMING, COMPLETING, RENEWING, RELEASING, RESCUING];
/// Lease bookkeeping that may wait a moment to share the next job's commit (see [`next_group`]):
/// what a finished send records. A claim or a rescue goes at once; sends wait on them.
const LINGERING: [&str; 3] = [COMPLETING, RENEWING, RELEASING];
/// Jobs that end a waiting group's wait: the dispatcher's free slots wait on a claim (and rescued
/// rows on a rescue), so a group lingering for company commits as soon as one joins it, instead
/// of leaving every slot idle until its deadline. Whoever queues one wakes the writer.
const URGENT: [&str; 2] = [CLAIMING, RESCUING];
pub(super) const CLAIMING: &str = "claiming syncs";
pub(super) const COMPLETING: &str = "recording a sync outcome";
pub(super) const RENEWING: &str = "renewing a lease";
pub(super) const RELEASING: &str = "releasing leases";
pub(super) const RESCUING: &str = "rescuing leases";

/// Jobs written in one group at most.
const MAX_GROUP: usize = 512;

/// How long a group of lease bookkeeping alone waits for a job to share its commit.
const LINGER: Duration = Duration::from_millis(5);

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write, run by the writer thread inside the group's transaction.
type Work<T> = Box<dyn FnOnce(&Connection) -> rusqlite::Result<T> + Send>;

/// Runs a job inside the group (given the group's BEGIN outcome, and whether it is the group's only
/// job) and returns its answer.
type RunJob = Box<dyn FnOnce(&Connection, &Result<(), StoreError>, bool, &Path) -> Answer + Send>;

/// Sends a job's answer once its group has committed (or failed to).
type Answer = Box<dyn FnOnce(&Result<(), StoreError>) + Send>;

/// A queued write.
pub(super) struct Job {
    run: RunJob,
    /// It stores a callback (the kill -9 tests' `before_commit` point is about those).
    callback: bool,
    /// Its group must be fsynced before anyone is answered (all but lease bookkeeping).
    durable: bool,
    /// It may wait [`LINGER`] for company (a finished send's bookkeeping).
    lingers: bool,
    /// It ends its group's wait, and [`Queue::send`] wakes the writer for it ([`URGENT`]).
    urgent: bool,
    /// When it was queued (a callback's arrival, for the pace).
    queued: Instant,
}

impl Job {
    /// `work`, called `what`; its result goes to `reply` once its group has committed.
    pub(super) fn new<T: Send + 'static>(
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        what: &'static str,
        reply: Reply<T>,
    ) -> Self {
        let work: Work<T> = Box::new(work);
        let run = Box::new(
            move |c: &Connection, begun: &Result<(), StoreError>, alone: bool, path: &Path| {
                let r = attempt(c, begun, alone, work).map_err(|e| match e {
                    Failed::Sql(e) => classify(e, path, what),
                    Failed::Group(e) => e,
                });
                answer(r, reply)
            },
        );
        Self {
            run,
            callback: what == STORING_A_CALLBACK,
            durable: !LEASE_BOOKKEEPING.contains(&what),
            lingers: LINGERING.contains(&what),
            urgent: URGENT.contains(&what),
            queued: monotonic(),
        }
    }
}

/// The writer thread's queue: jobs go in without waking it (a waiting group takes them at its
/// deadline), except an urgent one, for which the thread is unparked ([`next_group`]).
#[derive(Debug, Clone)]
pub(super) struct Queue {
    tx: Sender<Job>,
    /// The writer thread; none where nothing writes (a read-only store, whose jobs are refused).
    writer: Option<Thread>,
}

impl Queue {
    pub(super) fn new(tx: Sender<Job>, writer: Option<Thread>) -> Self {
        Self { tx, writer }
    }

    /// Queues `job`, waking the writer if it is urgent. Gives the job back when the writer is
    /// gone.
    pub(super) fn send(&self, job: Job) -> Result<(), Job> {
        let urgent = job.urgent;
        self.tx.send(job).map_err(|e| e.0)?;
        if let (true, Some(w)) = (urgent, &self.writer) {
            w.unpark();
        }
        Ok(())
    }
}

/// A group being formed, with what decides how long it may wait: whether every job so far is
/// lingering bookkeeping, whether any stores a callback, and whether any is urgent.
struct Forming {
    jobs: Vec<Job>,
    lingering: bool,
    callbacks: bool,
    urgent: bool,
}

impl Forming {
    /// Adds `job`, noting a callback's arrival in `pace`.
    fn push(&mut self, job: Job, pace: &mut Pace) {
        if job.callback {
            pace.arrived(job.queued);
            self.callbacks = true;
        }
        self.lingering &= job.lingers;
        self.urgent |= job.urgent;
        self.jobs.push(job);
    }
}

/// The next group: every job queued now; while they are all bookkeeping that lingers, any
/// arriving within [`LINGER`] of the first; and, while callbacks arrive closer together than
/// `wait`, any arriving within `wait` of the first, so the group's callbacks share one commit and
/// one fsync. A group that waits sleeps until its deadline, then takes what queued meanwhile (up
/// to [`MAX_GROUP`]; the rest starts the next group); an urgent job ends the wait at once
/// ([`Queue::send`] unparks this thread for it). `None` once every sender is gone.
fn next_group(rx: &Receiver<Job>, pace: &mut Pace, wait: Duration) -> Option<Vec<Job>> {
    let first = rx.recv().ok()?;
    let start = monotonic();
    let mut group = Forming {
        jobs: Vec::new(),
        lingering: true,
        callbacks: false,
        urgent: false,
    };
    group.push(first, pace);
    loop {
        while group.jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j, pace),
                Err(_) => break,
            }
        }
        if group.jobs.len() >= MAX_GROUP || group.urgent {
            return Some(group.jobs);
        }
        let deadline = if group.lingering {
            start + LINGER
        } else if group.callbacks && pace.brisk(wait) {
            start + wait
        } else {
            return Some(group.jobs);
        };
        let left = deadline.saturating_duration_since(monotonic());
        if left.is_zero() {
            return Some(group.jobs);
        }
        // jobs queue without waking this thread; those queued by the deadline join the group (a
        // callback joining bookkeeping that lingered may extend it to the commit wait). Only an
        // urgent job unparks it early (Queue::send); a stale or spurious unpark just looks again.
        std::thread::park_timeout(left);
    }
}

/// The writer thread: takes every queued job, runs them in one transaction, commits, answers.
/// `wait`: how long a callback may wait for company while callbacks come that fast.
/// Counts each commit in `commits`.
pub(super) fn writer_loop(
    mut c: Connection,
    rx: Receiver<Job>,
    path: &Path,
    wait: Duration,
    commits: &AtomicU64,
) {
    // after a write failed for lack of space (or another I/O error), the WAL is checkpointed and
    // truncated once writes work again, so it does not grow back to fill the space just freed
    let mut truncate_when_healthy = false;
    // the connection opens with synchronous=FULL
    let mut full = true;
    let mut pace = Pace::default();
    while let Some(group) = next_group(&rx, &mut pace, wait) {
        let durable = group.iter().any(|j| j.durable);
        let mut refused = None;
        if durable != full {
            let mode = if durable { "FULL" } else { "NORMAL" };
            match c.pragma_update(None, "synchronous", mode) {
                Ok(()) => full = durable,
                // left at NORMAL, a durable group is refused rather than committed without fsync
                Err(e) if durable => {
                    refused = Some(classify(e, path, "cannot set synchronous=FULL"));
                }
                // left at FULL: only more durable than asked
                Err(e) => {
                    tracing::warn!(database = %path.display(), "cannot set synchronous=NORMAL: {e}")
                }
            }
        }
        match run_group(&mut c, group, path, refused, commits) {
            Err(StoreError::Io { .. }) => {
                truncate_when_healthy = true;
                truncate_wal(&c, path);
            }
            Ok(()) if truncate_when_healthy => {
                truncate_when_healthy = !truncate_wal(&c, path);
            }
            _ => {}
        }
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`: everything into the database file, the WAL emptied.
/// Returns whether it completed.
fn truncate_wal(c: &Connection, path: &Path) -> bool {
    match c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(0) => {
            tracing::info!(database = %path.display(), "WAL checkpointed and truncated");
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(database = %path.display(), "cannot truncate the WAL yet: {e}");
            false
        }
    }
}

enum Failed {
    Sql(rusqlite::Error),
    Group(StoreError),
}

/// Runs `f` in its own savepoint, or fails as the group's BEGIN did. The group's only job needs
/// no savepoint (whose statement journal copies every page before it changes): if it fails, the
/// whole transaction is rolled back, and there is nothing left to commit.
fn attempt<T>(
    c: &Connection,
    begun: &Result<(), StoreError>,
    alone: bool,
    f: Work<T>,
) -> Result<T, Failed> {
    if let Err(e) = begun {
        return Err(Failed::Group(e.clone()));
    }
    if alone {
        return f(c).map_err(|e| {
            if !c.is_autocommit() {
                let _ = c.execute_batch("ROLLBACK");
            }
            Failed::Sql(e)
        });
    }
    write::exec(c, "SAVEPOINT job", []).map_err(Failed::Sql)?;
    match f(c) {
        Ok(v) => {
            write::exec(c, "RELEASE job", []).map_err(Failed::Sql)?;
            Ok(v)
        }
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(Failed::Sql(e))
        }
    }
}

/// Holds a job's result until the group's outcome is known: nothing is acknowledged before the
/// group is durable.
fn answer<T: Send + 'static>(r: Result<T, StoreError>, reply: Reply<T>) -> Answer {
    Box::new(move |committed| {
        let _ = reply.send(match committed {
            Ok(()) => r,
            Err(e) => Err(e.clone()),
        });
    })
}

fn run_group(
    c: &mut Connection,
    group: Vec<Job>,
    path: &Path,
    refused: Option<StoreError>,
    commits: &AtomicU64,
) -> Result<(), StoreError> {
    let begun = match refused {
        Some(e) => Err(e),
        None => write::exec(c, "BEGIN IMMEDIATE", [])
            .map(|_| ())
            .map_err(|e| classify(e, path, "cannot begin a write transaction")),
    };
    let callbacks = group.iter().any(|j| j.callback);
    let alone = group.len() == 1;
    let answers: Vec<Answer> = group
        .into_iter()
        .map(|job| (job.run)(c, &begun, alone, path))
        .collect();
    if callbacks {
        crate::crash::point("before_commit");
    }
    let committed = begun.and_then(|()| {
        if c.is_autocommit() {
            // the only job failed and rolled the transaction back: its answer is its own error
            return Ok(());
        }
        write::exec(c, "COMMIT", [])
            .map(|_| {
                commits.fetch_add(1, Ordering::Relaxed);
            })
            .map_err(|e| classify(e, path, "commit failed"))
    });
    if committed.is_err() && !c.is_autocommit() {
        let _ = c.execute_batch("ROLLBACK");
    }
    for a in answers {
        a(&committed);
    }
    committed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's voluntary context switches so far (Linux: each time it slept and was woken).
    fn my_switches() -> u64 {
        std::fs::read_to_string("/proc/thread-self/status")
            .expect("/proc/thread-self/status")
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches")
    }

    /// A job called `what` that writes nothing.
    fn job(what: &'static str) -> Job {
        let (tx, _rx) = oneshot::channel::<Result<(), StoreError>>();
        Job::new(|_| Ok(()), what, tx)
    }

    fn callback_job() -> Job {
        job(STORING_A_CALLBACK)
    }

    /// A pace that saw callbacks coming 2 ms apart (brisk), and when it began.
    fn brisk_pace() -> (Pace, Instant) {
        let mut pace = Pace::default();
        let t0 = monotonic();
        for i in 0..10 {
            pace.arrived(t0 + Duration::from_millis(2 * i));
        }
        (pace, t0)
    }

    #[test]
    fn a_claim_queued_ends_a_waiting_groups_wait() {
        // callbacks brisk and a commit wait far longer than the test: only the claim's wake-up
        // can end this group's wait
        let wait = Duration::from_secs(60);
        let (mut pace, t0) = brisk_pace();
        let (tx, rx) = std::sync::mpsc::channel();
        // this thread plays the writer; jobs go in as the store queues them
        let queue = Queue::new(tx, Some(std::thread::current()));
        assert!(queue.send(callback_job()).is_ok());
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            assert!(queue.send(callback_job()).is_ok());
            let claim = job(CLAIMING);
            assert!(claim.urgent, "a claim is urgent");
            assert!(queue.send(claim).is_ok());
            queue
        });
        let group = next_group(&rx, &mut pace, wait).expect("a group");
        let took = monotonic() - t0;
        let _tx = sender.join().unwrap();
        assert_eq!(
            group.len(),
            3,
            "the callbacks and the claim share the group"
        );
        assert!(group.last().is_some_and(|j| j.urgent));
        assert!(
            took < Duration::from_secs(30),
            "the group waited {took:?}: the claim did not end the commit wait"
        );
    }

    #[test]
    fn bookkeeping_and_callbacks_are_not_urgent() {
        for what in [STORING_A_CALLBACK, COMPLETING, RENEWING, RELEASING] {
            assert!(!job(what).urgent, "{what}");
        }
        assert!(job(RESCUING).urgent);
    }

    #[test]
    fn a_waiting_group_takes_what_queued_by_its_deadline_without_waking_for_each_job() {
        let wait = Duration::from_millis(500);
        let (mut pace, _) = brisk_pace();
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(callback_job()).unwrap();
        let sender = std::thread::spawn(move || {
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(2));
                tx.send(callback_job()).unwrap();
            }
            tx
        });
        let before = my_switches();
        let group = next_group(&rx, &mut pace, wait).expect("a group");
        let woken = my_switches() - before;
        let tx = sender.join().unwrap();
        assert_eq!(
            group.len(),
            21,
            "every job queued within the wait joins the group"
        );
        // one sleep until the deadline; waking for each arrival would be ~20
        assert!(
            woken <= 3,
            "the writer was woken {woken} times for one group"
        );
        // the pace saw the arrivals ~2 ms apart, as they were queued, not all at once when taken
        assert!(pace.apart(Duration::from_millis(1)), "{pace:?}");
        // once every sender is gone, the writer's loop ends
        drop(tx);
        assert!(next_group(&rx, &mut pace, wait).is_none());
    }
}
