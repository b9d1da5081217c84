//! The narrow storage interface. SQLite implements it today ([`crate::sqlite::SqliteStore`]); the
//! PostgreSQL issue implements it a second time. All SQL lives behind it.

use std::collections::BTreeMap;
use std::future::Future;

use serde::Serialize;
use serde_json::Value;
use wechatpay::notify::Event;

use crate::rules::Rules;

/// A verified, decrypted callback to store.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// WeChat's notification id.
    pub notification_id: String,
    /// The event type.
    pub event_type: String,
    /// The decrypted resource, as decrypted.
    pub plaintext: String,
    /// The typed event.
    pub event: Event,
}

impl From<wechatpay::notify::Notification> for Incoming {
    fn from(n: wechatpay::notify::Notification) -> Self {
        Self {
            notification_id: n.id,
            event_type: n.event_type,
            plaintext: n.plaintext,
            event: n.event,
        }
    }
}

/// What storing a callback did. Every variant is committed before the caller answers 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// New payment: credited (possibly 0 points) and a points sync enqueued.
    Payment {
        /// Points credited.
        points: i64,
    },
    /// New refund applied: points deducted.
    Refund {
        /// Points deducted.
        points: i64,
    },
    /// Refund of a payment not seen yet: held until the payment arrives.
    Held,
    /// Authorization recorded.
    Authorization,
    /// Seen before (same natural key): no new effect.
    Duplicate,
    /// Verified but business-invalid: stored raw as rejected, no effect.
    Rejected(String),
    /// An event type this service does not act on: stored.
    Ignored,
}

/// How ingest behaves.
#[derive(Debug, Clone)]
pub struct IngestContext<'a> {
    /// Points rules.
    pub rules: &'a Rules,
    /// Partner mode: send the callback's `mchid` as `sub_mchid`.
    pub partner_mode: bool,
    /// Now, Unix milliseconds.
    pub now_ms: i64,
}

/// A sync claimed by a dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Outbox row.
    pub id: i64,
    /// The transaction.
    pub transaction_id: String,
    /// The body stored at enqueue time.
    pub payload: String,
    /// This attempt's number (fencing token).
    pub attempt: i64,
    /// When enqueued (Unix ms).
    pub created_at: i64,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// WeChat answered 204.
    Done,
    /// Retry at `due_at` (Unix ms).
    Retry {
        /// Next attempt.
        due_at: i64,
        /// What went wrong.
        error: String,
    },
    /// Not retryable: kept for an operator.
    Parked {
        /// WeChat's error, whole.
        error: String,
    },
    /// Too old to send.
    Dead {
        /// Why.
        error: String,
    },
}

/// A parked or dead sync.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedSync {
    /// Outbox row.
    pub id: i64,
    /// The transaction.
    pub transaction_id: String,
    /// State (`parked` or `dead`).
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// The recorded error.
    pub error: String,
}

/// Backlog overview.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Outbox rows per state.
    pub syncs: BTreeMap<String, i64>,
    /// Inbox rows per status.
    pub inbox: BTreeMap<String, i64>,
    /// Oldest pending sync's enqueue time (Unix ms).
    pub oldest_pending_at: Option<i64>,
    /// Parked and dead syncs.
    pub parked: Vec<ParkedSync>,
}

/// One ledger entry.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    /// `credit` or `debit`.
    pub kind: String,
    /// Transaction.
    pub transaction_id: String,
    /// Refund (debits).
    pub refund_id: String,
    /// Signed points.
    pub points: i64,
    /// Balance after.
    pub balance_after: i64,
    /// The rule and figures that produced it.
    pub rule: Value,
    /// When (Unix ms).
    pub created_at: i64,
}

/// A member's balance and ledger.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// Openid.
    pub openid: String,
    /// Authorized for points (as last reported by WeChat).
    pub authorized: Option<bool>,
    /// Balance.
    pub balance: i64,
    /// Entries, oldest first.
    pub entries: Vec<LedgerEntry>,
}

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
}

/// Totals for reports and invariant checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    /// Credit points per transaction (one ledger credit each).
    pub credits: BTreeMap<String, i64>,
    /// Number of debit entries (one per applied refund).
    pub debits: i64,
    /// Sum of credits.
    pub points_issued: i64,
    /// Sum of debits (positive).
    pub points_deducted: i64,
    /// Enqueue-to-204 latency of every done sync, ms.
    pub sync_latencies_ms: Vec<i64>,
    /// Members whose balance differs from the sum of their ledger (must be empty).
    pub unbalanced_members: Vec<String>,
    /// Payments without a sync row (must be empty).
    pub payments_without_sync: Vec<String>,
    /// Refunds still held (their payment never arrived).
    pub held_refunds: i64,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (locked, I/O error, unavailable…).
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// A database task failed to run to completion.
    #[error("database task: {0}")]
    Task(String),
    /// Another connection held the write lock for longer than the busy timeout.
    #[error(
        "database {0} is locked: another connection held its write lock longer than the busy \
         timeout (service.busy_timeout_ms); nothing was written"
    )]
    Locked(String),
    /// The database cannot be written.
    #[error(
        "database {0} is read-only (file permissions, the immutable attribute or a read-only \
         mount); pointsync must be able to write it; nothing was written"
    )]
    ReadOnly(String),
    /// The file system refused a read or write (I/O error, disk full).
    #[error("database {0}; nothing was written")]
    Io(String),
}

impl StoreError {
    /// Names a SQLite failure precisely: a lock held too long and a read-only file get their own
    /// errors naming the database file.
    pub fn classify(e: rusqlite::Error, path: &std::path::Path) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                Self::Locked(path.display().to_string())
            }
            Some(ErrorCode::ReadOnly) => Self::ReadOnly(path.display().to_string()),
            Some(ErrorCode::SystemIoFailure | ErrorCode::DiskFull) => {
                Self::Io(format!("{}: {e}", path.display()))
            }
            _ => Self::Db(e),
        }
    }
}

/// The storage contract of the service.
pub trait Store: Clone + Send + Sync + 'static {
    /// Stores a callback with all its effects in one transaction (inbox, decision, ledger,
    /// balance, outbox), committed durably before returning.
    fn ingest(
        &self,
        n: &Incoming,
        ctx: &IngestContext<'_>,
    ) -> impl Future<Output = Result<Ingested, StoreError>> + Send;
    /// Claims up to `limit` due syncs for `owner` until `now_ms + lease_ms`.
    fn claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Claimed>, StoreError>> + Send;
    /// Records an attempt's outcome if that attempt still owns the row; returns whether it did.
    fn complete(
        &self,
        c: &Claimed,
        owner: &str,
        outcome: &SyncOutcome,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Returns an owner's in-flight rows to pending (graceful shutdown).
    fn release(&self, owner: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Returns expired leases to pending.
    fn rescue(&self, now_ms: i64) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Re-drives parked syncs (all, or the given ids).
    fn retry_parked(
        &self,
        ids: &[i64],
        now_ms: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Applies an operator's adjustment, refusing one that would make the balance negative unless
    /// `allow_negative`.
    fn adjust(
        &self,
        a: &Adjustment,
        allow_negative: bool,
        now_ms: i64,
    ) -> impl Future<Output = Result<Adjusted, StoreError>> + Send;
    /// Sync rows not done, by state (pending, inflight, parked, dead): cheap whatever the
    /// history's size, for the metrics scrape.
    fn backlog(&self) -> impl Future<Output = Result<BTreeMap<String, i64>, StoreError>> + Send;
    /// Backlog overview. Counts every row (about a second per million transactions on the
    /// development machine): for operators, not for frequent polling.
    fn status(&self) -> impl Future<Output = Result<Status, StoreError>> + Send;
    /// A member's balance and ledger.
    fn member(
        &self,
        openid: &str,
    ) -> impl Future<Output = Result<Option<MemberView>, StoreError>> + Send;
    /// Totals and consistency checks.
    fn audit(&self) -> impl Future<Output = Result<Audit, StoreError>> + Send;
    /// Whether the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
