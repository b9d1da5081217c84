//! The narrow storage contract, implemented by SQLite ([`sqlite::SqliteStore`], one process) and
//! PostgreSQL ([`postgres::PgStore`], several instances); both pass the same contract suite. All
//! SQL lives behind it, and no business decision: those are [`crate::domain`]'s.
//!
//! `error.rs` holds [`StoreError`], `database.rs` [`Database`] and [`OpenOptions`]; this file the
//! trait and the rows and views it exchanges.

use std::collections::BTreeMap;
use std::future::Future;

use serde::Serialize;
use serde_json::Value;

pub use crate::domain::{Adjusted, Adjustment, Incoming, IngestContext, Ingested, NewParking};

mod database;
mod error;
mod pace;
pub mod postgres;
pub mod sqlite;

pub use database::{DEFAULT_COMMIT_WAIT, Database, OpenOptions};
pub use error::{Source, StoreError};

/// A sync claimed by a dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Outbox row.
    pub id: i64,
    /// The transaction.
    pub transaction_id: String,
    /// HTTP method stored at enqueue time.
    pub method: String,
    /// Path and query stored at enqueue time.
    pub path: String,
    /// The body stored at enqueue time, sent byte for byte.
    pub payload: String,
    /// This attempt's number (fencing token).
    pub attempt: i64,
    /// When enqueued (Unix ms).
    pub created_at: i64,
}

/// Who leases a sync enqueued by a callback, in the callback's own transaction
/// ([`Store::ingest_leased`]).
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    /// The dispatcher's owner id.
    pub owner: &'a str,
    /// Lease length.
    pub lease_ms: i64,
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

impl SyncOutcome {
    /// The outbox row's new `state`, `due_at` (when it changes) and `last_error` (when there is
    /// one): what every backend writes.
    pub fn columns(&self) -> (&'static str, Option<i64>, Option<&str>) {
        match self {
            Self::Done => ("done", None, None),
            Self::Retry { due_at, error } => ("pending", Some(*due_at), Some(error)),
            Self::Parked { error } => ("parked", None, Some(error)),
            Self::Dead { error } => ("dead", None, Some(error)),
        }
    }
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

/// A parked or dead sync's recorded error as a sentence: WeChat's status, code and message and
/// the Request-ID when the error is WeChat's refusal (stored whole, as JSON); the text as stored
/// otherwise.
pub fn describe_failure(error: &str) -> String {
    let Ok(Value::Object(v)) = serde_json::from_str::<Value>(error) else {
        return error.to_string();
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let mut out = match v.get("status").and_then(Value::as_u64) {
        Some(status) => format!("WeChat Pay answered HTTP {status}"),
        None => "WeChat Pay refused it".to_string(),
    };
    if let Some(code) = text("code") {
        out.push_str(&format!(" {code}"));
    }
    if let Some(message) = text("message") {
        out.push_str(&format!(": {message}"));
    }
    if let Some(Value::Object(d)) = v.get("detail")
        && let Some(field) = d.get("field").and_then(Value::as_str)
    {
        out.push_str(&format!(" (field {field})"));
    }
    if let Some(hint) = text("hint") {
        out.push_str(&format!("; {hint}"));
    }
    if let Some(id) = text("request_id") {
        out.push_str(&format!(" [Request-ID {id}]"));
    }
    out
}

/// One stored callback, for the console.
#[derive(Debug, Clone, Serialize)]
pub struct InboxView {
    /// When received (Unix ms).
    pub received_at: i64,
    /// Event type.
    pub event_type: String,
    /// Transaction (openid for authorizations).
    pub transaction_id: String,
    /// Refund (or code:auth_type).
    pub refund_id: String,
    /// applied, held, rejected, ignored.
    pub status: String,
    /// Deliveries of the same notification.
    pub deliveries: i64,
    /// Why (rejections).
    pub note: String,
}

/// Callbacks stored and syncs done in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    /// Unix minute (ms / 60 000).
    pub minute: i64,
    /// Callbacks stored.
    pub callbacks: i64,
    /// Syncs WeChat answered 204.
    pub syncs: i64,
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

/// A member's authorization as WeChat's query API answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedAuthorization {
    /// Member.
    pub openid: String,
    /// WeChat's `authorize_state` (`AUTHORIZED`, `UNAUTHORIZED`, `DEAUTHORIZED`, or a value not
    /// known yet).
    pub state: String,
    /// Authorized for points; `None` for a state this version does not know (left unknown).
    pub authorized: Option<bool>,
}

impl LearnedAuthorization {
    /// From WeChat's answer.
    pub fn from_wechat(openid: &str, state: &wechatpay::businesscircle::AuthorizeState) -> Self {
        use wechatpay::businesscircle::AuthorizeState as S;
        Self {
            openid: openid.to_string(),
            state: state.as_str().to_string(),
            authorized: match state {
                S::Authorized => Some(true),
                S::Unauthorized | S::Deauthorized => Some(false),
                _ => None,
            },
        }
    }
}

/// A member's authorization as stored: what is known, from where, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuthorizationView {
    /// `authorized`, `not_authorized` or `unknown`.
    pub state: String,
    /// WeChat's own word: the query's `authorize_state` or the callback's `auth_type`.
    pub wechat_state: Option<String>,
    /// `callback` or `query`.
    pub source: Option<String>,
    /// When it was learned (Unix ms).
    pub learned_at: Option<i64>,
}

/// A member as the mall API shows her (without WeChat's pending-points status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberSummary {
    /// Openid.
    pub openid: String,
    /// Balance.
    pub balance: i64,
    /// Authorization.
    pub authorization: AuthorizationView,
    /// Points credited today (China time), manual applications included.
    pub credited_today: i64,
    /// Payments kept not credited because she was not authorized (credited if she applies).
    pub not_credited_payments: i64,
    /// The appid of her latest payment.
    pub appid: Option<String>,
}

/// One ledger entry with its id (the mall API's cursor).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LedgerItem {
    /// Entry id (increasing).
    pub id: i64,
    /// When (Unix ms).
    pub created_at: i64,
    /// `credit`, `debit` or `adjust`.
    pub kind: String,
    /// Signed points.
    pub points: i64,
    /// Balance after.
    pub balance_after: i64,
    /// The transaction (credits, debits) or the operator's reference (adjustments).
    pub reference: String,
    /// The refund (debits), `manual` for a manual application's credit.
    pub refund_id: String,
    /// The rule and figures that produced it.
    #[schema(value_type = Object)]
    pub rule: Value,
}

/// A member whose authorization is unknown or old, to query again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleMember {
    /// Openid.
    pub openid: String,
    /// The appid of her latest payment, if any.
    pub appid: Option<String>,
}

/// What storing a parking event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkingEnqueued {
    /// Stored, its request enqueued.
    Created(i64),
    /// The same key was used before for the same event: that row.
    Existing(i64),
    /// The same key was used before for another event: that row; nothing stored.
    Conflict(i64),
}

/// A stored parking event and its relay to WeChat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ParkingView {
    /// Id.
    pub id: i64,
    /// Member.
    pub openid: String,
    /// Plate number.
    pub plate_number: String,
    /// `IN` or `OUT`.
    pub state: String,
    /// When (RFC 3339).
    pub time: String,
    /// Appid sent.
    pub appid: String,
    /// Brand id sent.
    pub brandid: i64,
    /// When stored (Unix ms).
    pub created_at: i64,
    /// The relay: `pending`, `inflight`, `done`, `parked` or `dead`.
    pub relay: String,
    /// Attempts made.
    pub attempts: i64,
    /// The last error (WeChat's refusal as a sentence), if any.
    pub last_error: Option<String>,
    /// When WeChat answered 204 (Unix ms).
    pub relayed_at: Option<i64>,
}

/// Totals for reports and invariant checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    /// Credit points per transaction (one ledger credit each, two when credited on a manual
    /// application: their sum).
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
    /// Payments without a sync row, not counting those kept not credited (must be empty).
    pub payments_without_sync: Vec<String>,
    /// Refunds still held (their payment never arrived).
    pub held_refunds: i64,
    /// Payments kept not credited (member not authorized): no sync until a manual application.
    pub not_credited: Vec<String>,
}

/// A backend's migrations: (version, name, SQL), oldest first.
pub(crate) type Migrations = [(i64, &'static str, &'static str)];

/// The newest migration as `"version name"` (`"5 mall api"`).
pub(crate) fn schema_of(m: &Migrations) -> String {
    m.last()
        .map(|(v, n, _)| format!("{v} {n}"))
        .unwrap_or_default()
}

/// The newest migration's version.
pub(crate) fn latest_of(m: &Migrations) -> i64 {
    m.last().map_or(0, |m| m.0)
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Migrations applied now (`"2 adjustments"`), oldest first.
    pub applied: Vec<String>,
    /// The schema version reached (`"3 outbox requests"`).
    pub version: String,
}

/// The storage contract of the service. Every backend passes the same contract suite
/// (`tests/it/contract.rs`); decisions are made by [`crate::domain`], a store only reads snapshots
/// and applies plans.
pub trait Store: Clone + Send + Sync + 'static {
    /// Opens the store for serving: created if missing, migrated to this binary's schema.
    fn open(
        db: &Database,
        opts: &OpenOptions,
    ) -> impl Future<Output = Result<Self, StoreError>> + Send;
    /// Opens an existing store for reading only (`status`, `member`): nothing is created or
    /// migrated; a schema other than this binary's is refused with
    /// [`StoreError::SchemaMismatch`]; writes fail with [`StoreError::Closed`].
    fn open_read_only(db: &Database) -> impl Future<Output = Result<Self, StoreError>> + Send;
    /// Checks, without creating or migrating anything, that the store exists, is at this binary's
    /// schema and takes a write (rolled back): `pointsync doctor`. Returns the schema version.
    fn check(db: &Database) -> impl Future<Output = Result<String, StoreError>> + Send;
    /// Creates or upgrades the schema (`pointsync migrate`).
    fn migrate(db: &Database) -> impl Future<Output = Result<Migrated, StoreError>> + Send;
    /// Stores a callback with all its effects in one transaction (inbox, decision, ledger,
    /// balance, outbox), committed durably before returning.
    fn ingest(
        &self,
        n: &Incoming,
        ctx: &IngestContext<'_>,
    ) -> impl Future<Output = Result<Ingested, StoreError>> + Send;
    /// [`Store::ingest`], and when the callback enqueues a sync due now, leases it to
    /// `lease.owner` in the same transaction — its first attempt, leased for `lease.lease_ms` on
    /// the store's clock (see [`Store::claim`]) — and returns it claimed: the dispatcher sends it
    /// without claiming it again. `None` when nothing due was enqueued, or when the store
    /// leaves the sync pending for a claim (a backend may always do so).
    fn ingest_leased(
        &self,
        n: &Incoming,
        ctx: &IngestContext<'_>,
        lease: &Lease<'_>,
    ) -> impl Future<Output = Result<(Ingested, Option<Claimed>), StoreError>> + Send {
        let _ = lease;
        async move { Ok((self.ingest(n, ctx).await?, None)) }
    }
    /// Claims up to `limit` syncs due at `now_ms` (the instance's clock) for `owner`, leased for
    /// `lease_ms` on the store's clock: the instance's own clock for the embedded store, the
    /// database server's clock for a store shared by several instances, so a skewed instance can
    /// neither keep a lease past its time nor take one over early.
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
    /// Extends the lease of `c` to `lease_ms` from now on the store's clock (see
    /// [`Store::claim`]; `now_ms` is the instance's clock) while its request is in flight, if that
    /// attempt still owns the row; returns whether it did.
    fn renew(
        &self,
        c: &Claimed,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Returns an owner's in-flight rows to pending (graceful shutdown).
    fn release(&self, owner: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Returns leases expired on the store's clock to pending (see [`Store::claim`]; `now_ms` is
    /// the instance's clock, which a shared store does not use for this).
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
    /// The newest stored callbacks, newest first.
    fn recent_callbacks(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<InboxView>, StoreError>> + Send;
    /// Callbacks stored and syncs done per minute since `since_ms` (recent history only).
    fn activity(
        &self,
        since_ms: i64,
    ) -> impl Future<Output = Result<Vec<Minute>, StoreError>> + Send;
    /// Totals and consistency checks.
    fn audit(&self) -> impl Future<Output = Result<Audit, StoreError>> + Send;
    /// Records a member's authorization as WeChat's query API answered it.
    fn record_authorization(
        &self,
        a: &LearnedAuthorization,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A member's balance, authorization, today's credits and payments not credited.
    fn member_summary(
        &self,
        openid: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<MemberSummary>, StoreError>> + Send;
    /// A member's ledger, newest first: at most `limit` entries with ids below `before` (all when
    /// `None`).
    fn ledger_page(
        &self,
        openid: &str,
        before: Option<i64>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<LedgerItem>, StoreError>> + Send;
    /// Members whose authorization is unknown or was learned before `learned_before_ms`, in
    /// openid order after `after`, at most `limit`.
    fn stale_members(
        &self,
        learned_before_ms: i64,
        after: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StaleMember>, StoreError>> + Send;
    /// Stores a parking event and enqueues `request` (its WeChat request) in one transaction,
    /// idempotent on `p.idempotency_key`.
    fn enqueue_parking(
        &self,
        p: &NewParking,
        request: &crate::domain::OutboxRow,
    ) -> impl Future<Output = Result<ParkingEnqueued, StoreError>> + Send;
    /// A parking event and its relay.
    fn parking(
        &self,
        id: i64,
    ) -> impl Future<Output = Result<Option<ParkingView>, StoreError>> + Send;
    /// Whether the database takes a durable write now (a tiny committed write): readiness.
    fn probe_write(&self, now_ms: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Whether the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
