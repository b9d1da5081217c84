//! Sync outcomes recorded in batches: every outcome queued while one batch is in flight, or
//! within [`LINGER`] of the batch's first, goes in the next, one `UPDATE … FROM UNNEST(…)` for all
//! of them, so a completion costs a fraction of a round trip, under load and at moderate rates.
//! Each row keeps its own fence (state, owner, attempt): an outcome whose attempt lost its lease
//! changes nothing and its caller hears `false`, as one by one.
//!
//! The statement runs on a pool of its own whose planner settings ([`PLANNER`]) leave it one plan:
//! each outcome's row looked up by its key. Left to itself, PostgreSQL planned it once, early, on
//! a nearly empty outbox, and kept that plan: a hash join over every `inflight` entry of the state
//! index, which holds a dead entry for every sync finished since the last vacuum (a bitmap scan
//! never marks them dead). Behind two instances at the maximum each batch read ~15,000 index
//! entries after 15,000 payments, 8–11 ms a batch, ~70 µs per outcome (BENCHMARKS.md).

use sqlx::postgres::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use wechatpay::clock::monotonic;

use super::held::Held;
use super::{again, classify};
use crate::store::{Claimed, StoreError, SyncOutcome};

/// At most this many outcomes in one statement.
const MAX_BATCH: usize = 512;

/// The recorder's pool's planner settings: no sequential, bitmap, hash or merge plan, so the
/// outcomes (a function scan of the arrays) drive a nested loop over the outbox's primary key,
/// whatever the table's size and statistics when the plan was made. Only [`RECORD`] runs there.
pub(super) const PLANNER: [(&str, &str); 4] = [
    ("enable_seqscan", "off"),
    ("enable_bitmapscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
];

/// Records a batch's outcomes, each row fenced by its state, owner and attempt. The state's test
/// is written `(…) IS TRUE`, which no index can answer: otherwise a plan made while the outbox was
/// small would scan the state index's `inflight` entries, dead ones included.
const RECORD: &str = "UPDATE outbox o SET state = v.state, due_at = COALESCE(v.due_at, o.due_at),
         last_error = COALESCE(v.error, o.last_error),
         done_at = CASE WHEN v.state = 'done' THEN v.now_ms ELSE o.done_at END,
         lease_owner = NULL, lease_until = NULL
     FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[], $7::BIGINT[])
          AS v (id, state, due_at, error, now_ms, owner, attempt)
     WHERE o.id = v.id AND (o.state = 'inflight') IS TRUE AND o.lease_owner = v.owner
       AND o.attempts = v.attempt
     RETURNING o.id";

/// How long a batch waits for more outcomes before it is written. Under load the queue fills a
/// batch on its own; at a moderate rate (200 payments/s: one outcome every 5 ms, every 10 ms on
/// each of two instances) each outcome would otherwise be a statement and a commit of its own.
/// Nothing waits on it: the callback was acknowledged, the sync sent and its in-flight slot freed
/// before (`Dispatcher::send_one`), and a graceful stop waits for the batch. At 200/s, 100 ms
/// instead of 20 cut PostgreSQL's commits per payment by a quarter to a third, behind one
/// instance and behind two, with the acknowledgement's p99 unchanged (BENCHMARKS.md). What a
/// crash costs is unchanged in kind: outcomes not yet written leave their rows leased, and each
/// of those syncs (at most this long's worth) is sent again, byte for byte, after its lease.
const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// One attempt's outcome.
#[derive(Debug)]
struct Completion {
    id: i64,
    owner: String,
    attempt: i64,
    state: &'static str,
    due_at: Option<i64>,
    error: Option<String>,
    now_ms: i64,
}

type Queued = (Completion, oneshot::Sender<Result<bool, StoreError>>);

/// The queue of outcomes and the task recording them. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Completions {
    queue: mpsc::UnboundedSender<Queued>,
    database: String,
}

impl Completions {
    /// Starts the recording task on the current runtime, on `pool` (its own, opened with
    /// [`PLANNER`]); the task ends when the last clone goes.
    pub(super) fn start(pool: PgPool, database: String) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(record_batches(pool, database.clone(), rx));
        Self { queue, database }
    }

    /// Records an attempt's outcome if that attempt still owns the row; returns whether it did.
    pub(super) async fn record(
        &self,
        c: &Claimed,
        owner: &str,
        outcome: &SyncOutcome,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (state, due_at, error) = outcome.columns();
        let completion = Completion {
            id: c.id,
            owner: owner.to_string(),
            attempt: c.attempt,
            state,
            due_at,
            error: error.map(str::to_string),
            now_ms,
        };
        let closed = || StoreError::Closed {
            database: self.database.clone(),
        };
        let (tx, rx) = oneshot::channel();
        self.queue.send((completion, tx)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

async fn record_batches(pool: PgPool, database: String, mut rx: mpsc::UnboundedReceiver<Queued>) {
    // the recorder's connection, kept while batches come close together
    let mut conn = Held::new(pool);
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::from_std(monotonic()) + LINGER;
        while batch.len() < MAX_BATCH {
            let next = match rx.try_recv() {
                Ok(q) => Some(q),
                Err(_) => tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            match next {
                // one row once per statement: a second outcome for it waits for the next batch
                Some(q) if batch.iter().any(|(b, _)| b.id == q.0.id) => {
                    carried = Some(q);
                    break;
                }
                Some(q) => batch.push(q),
                // the wait is over (or the store is closing): write what is there
                None => break,
            }
        }
        // one lock order for every instance's batches
        batch.sort_by_key(|(c, _)| c.id);
        let result = record(&mut conn, &batch).await;
        match result {
            Ok(updated) => {
                for (c, reply) in batch {
                    let _ = reply.send(Ok(updated.contains(&c.id)));
                }
            }
            Err(e) => {
                let e = classify(&database, "recording sync outcomes", e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// [`record_batch`] on the recorder's connection, kept for the next batch if it succeeds.
async fn record(conn: &mut Held, batch: &[Queued]) -> Result<Vec<i64>, sqlx::Error> {
    let mut c = conn.take().await?;
    let mut attempt = 0;
    loop {
        match record_batch(&mut c, batch).await {
            // run again on the same connection, as `retried` would
            Err(e) => match again(&e, &mut attempt) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(e),
            },
            Ok(recorded) => {
                conn.keep(c);
                return Ok(recorded);
            }
        }
    }
}

/// The ids whose outcome was recorded (one statement, its own transaction).
async fn record_batch(c: &mut PgConnection, batch: &[Queued]) -> Result<Vec<i64>, sqlx::Error> {
    let column = |f: fn(&Completion) -> i64| batch.iter().map(|(c, _)| f(c)).collect::<Vec<_>>();
    let (ids, attempts, nows) = (
        column(|c| c.id),
        column(|c| c.attempt),
        column(|c| c.now_ms),
    );
    let states: Vec<&str> = batch.iter().map(|(c, _)| c.state).collect();
    let owners: Vec<&str> = batch.iter().map(|(c, _)| c.owner.as_str()).collect();
    let dues: Vec<Option<i64>> = batch.iter().map(|(c, _)| c.due_at).collect();
    let errors: Vec<Option<&str>> = batch.iter().map(|(c, _)| c.error.as_deref()).collect();
    sqlx::query_scalar(RECORD)
        .bind(&ids)
        .bind(&states)
        .bind(&dues)
        .bind(&errors)
        .bind(&nows)
        .bind(&owners)
        .bind(&attempts)
        .fetch_all(c)
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::postgres::{connect, testing};

    /// [`RECORD`]'s generic plan on a connection of `pool`.
    async fn plan(pool: &PgPool) -> String {
        testing::generic_plan(
            pool,
            RECORD,
            "BIGINT[], TEXT[], BIGINT[], TEXT[], BIGINT[], TEXT[], BIGINT[]",
            "'{1,2}', '{done,done}', '{NULL,NULL}', '{NULL,NULL}', '{1,1}', '{a,a}', '{1,1}'",
        )
        .await
    }

    #[tokio::test]
    async fn outcomes_are_looked_up_by_their_key_however_large_the_outbox_was_when_planned() {
        let Some((db, main, _drop)) = testing::migrated("the outcome statement's plan").await
        else {
            return;
        };
        let recorder = connect(&db, Duration::from_secs(5), 1, &PLANNER)
            .await
            .unwrap();
        // an outbox never analysed (as in its first minute), empty, then with 3,000 rows of which
        // 200 in flight: sizes at which PostgreSQL left to itself plans a scan of the state index
        for rows in [0, 3000] {
            sqlx::query(
                "INSERT INTO outbox (transaction_id, payload, state, attempts, due_at, created_at,
                                     lease_owner, lease_until)
                 SELECT 't' || g, repeat('x', 300),
                        CASE WHEN g > $1 - 200 THEN 'inflight' ELSE 'done' END, 1, g, g, 'a', 9
                 FROM generate_series(1, $1) g",
            )
            .bind(rows)
            .execute(&main)
            .await
            .unwrap();
            let pinned = plan(&recorder).await;
            assert!(
                pinned.contains("Nested Loop")
                    && pinned.contains("Index Scan using outbox_pkey on outbox"),
                "{rows} rows: the outcomes drive lookups by key:\n{pinned}"
            );
            for other in ["outbox_due", "Seq Scan on outbox", "Bitmap", "Hash"] {
                assert!(
                    !pinned.contains(other),
                    "{rows} rows: no {other} in the plan:\n{pinned}"
                );
            }
            eprintln!(
                "{rows} rows, the plan without the recorder's settings:\n{}",
                plan(&main).await
            );
            sqlx::query("TRUNCATE outbox").execute(&main).await.unwrap();
        }
        main.close().await;
        recorder.close().await;
    }
}
