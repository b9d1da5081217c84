//! What the simulated WeChat remembers: members, transactions, synced points, parking events,
//! callback deliveries and counters.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A mall member as WeChat knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Openid.
    pub openid: String,
    /// Mini-program appid.
    pub appid: String,
    /// Card code.
    pub code: String,
    /// `UNAUTHORIZED`, `AUTHORIZED` or `DEAUTHORIZED`.
    pub authorize_state: String,
    /// When authorized (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorize_time: Option<String>,
    /// When revoked (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deauthorize_time: Option<String>,
}

/// A payment WeChat generated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// WeChat order no.
    pub transaction_id: String,
    /// Payer.
    pub openid: String,
    /// Appid.
    pub appid: String,
    /// Partner mode: the mall's sub-merchant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_mchid: Option<String>,
    /// Store number.
    pub shop_number: String,
    /// Store name.
    pub shop_name: String,
    /// Amount in fen.
    pub amount: i64,
    /// Completion time (RFC 3339).
    pub time_end: String,
    /// Refunded so far, fen.
    pub refunded: i64,
    /// Unix time created.
    pub created_at: i64,
}

/// One points-notify call the simulator received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncCall {
    /// Unix time received.
    pub at: i64,
    /// The transaction.
    pub transaction_id: String,
    /// The raw body.
    pub body: String,
    /// HTTP status answered.
    pub status: u16,
    /// Whether the body differs from the first accepted body for this transaction.
    pub conflicting: bool,
}

/// One callback (one notification id) and its delivery attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Notification id.
    pub id: String,
    /// Event type.
    pub event_type: String,
    /// transaction_id, refund_id or openid.
    pub key: String,
    /// Attempts made.
    pub attempts: u32,
    /// Acknowledged with 200/204.
    pub delivered: bool,
    /// The schedule ran out.
    pub gave_up: bool,
    /// Last HTTP status (0 = connection failure or timeout).
    pub last_status: u16,
}

/// Counters, for tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// API requests received.
    pub requests: u64,
    /// 401 SIGN_ERROR answered.
    pub sign_errors: u64,
    /// 400 PARAM_ERROR / INVALID_REQUEST answered.
    pub param_errors: u64,
    /// Business errors (unknown transaction, mismatch, unauthorized).
    pub business_errors: u64,
    /// Faults injected.
    pub faults: u64,
    /// 429 from the global rate limit.
    pub rate_limited: u64,
    /// Points-notify calls accepted (204).
    pub points_accepted: u64,
    /// Accepted points-notify calls whose body differed from the first one for the transaction.
    pub conflicting_syncs: u64,
    /// Callback delivery attempts.
    pub callback_attempts: u64,
    /// Callback attempts acknowledged 200/204.
    pub callback_acks: u64,
    /// Probe callbacks the receiver wrongly acknowledged.
    pub probes_accepted: u64,
}

/// The whole simulated state.
#[derive(Debug, Default)]
pub struct State {
    pub(crate) members: BTreeMap<String, Member>,
    pub(crate) transactions: BTreeMap<String, Transaction>,
    pub(crate) syncs: Vec<SyncCall>,
    /// First accepted body per transaction.
    pub(crate) first_sync: HashMap<String, String>,
    pub(crate) parkings: Vec<Value>,
    pub(crate) deliveries: BTreeMap<String, Delivery>,
    pub(crate) counters: Counters,
    /// Time the receiver took to acknowledge each acknowledged delivery, µs.
    pub(crate) ack_latencies_us: Vec<u32>,
    pub(crate) seq: u64,
}

impl State {
    pub(crate) fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{:020}", 4_200_000_000_000_000u64 + self.seq)
    }

    /// The points WeChat was told for each transaction: the last accepted body's `increased_points`.
    pub fn synced_points(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for s in self.syncs.iter().filter(|s| s.status == 204) {
            let v: Value = serde_json::from_str(&s.body).unwrap_or_default();
            out.insert(
                s.transaction_id.clone(),
                v["increased_points"].as_i64().unwrap_or(0),
            );
        }
        out
    }
}

/// Acknowledgement latency of the receiver, as WeChat measures it (send → 2xx answer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AckLatency {
    /// Acknowledged deliveries measured.
    pub count: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

impl State {
    /// Percentiles of the acknowledgement latencies recorded so far.
    pub fn ack_latency(&self) -> AckLatency {
        let mut v = self.ack_latencies_us.clone();
        v.sort_unstable();
        let at = |p: f64| {
            v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
                .map_or(0.0, |us| f64::from(*us) / 1000.0)
        };
        AckLatency {
            count: v.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}
