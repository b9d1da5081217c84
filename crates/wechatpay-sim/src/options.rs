//! The simulator's behaviour switches and push settings: plain data, changed at run time through
//! the control API.

use serde::{Deserialize, Serialize};

/// Behaviour switches, several of them for `\[INFERRED\]` WeChat behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimOptions {
    /// Reject points sync for members not `AUTHORIZED` (400 `INVALID_REQUEST`). \[INFERRED\]
    pub require_authorized: bool,
    /// Reject a second points sync for a transaction with a different body. \[INFERRED\]: default accepts and counts it.
    pub reject_conflicting: bool,
    /// Answer commit_status with an empty 204 instead of 200 JSON (as some mirrors describe).
    pub commit_status_204: bool,
    /// Sign answers with a key that does not match the trusted certificate/public key.
    pub sign_with_wrong_key: bool,
    /// Status for points sync of an unknown transaction: 404 `RESOURCE_NOT_EXISTS` or 400 `PARAM_ERROR`. \[INFERRED\]
    pub unknown_transaction_status: u16,
    /// Body characters kept in `truncated_sign_message`.
    pub truncate_body_chars: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            require_authorized: true,
            reject_conflicting: false,
            commit_status_204: false,
            sign_with_wrong_key: false,
            unknown_transaction_status: 404,
            truncate_body_chars: 10,
        }
    }
}

impl SimOptions {
    pub(crate) fn unknown_transaction(&self) -> (http::StatusCode, &'static str) {
        if self.unknown_transaction_status == 400 {
            (http::StatusCode::BAD_REQUEST, "PARAM_ERROR")
        } else {
            (http::StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS")
        }
    }
}

/// Where and how callbacks are pushed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushConfig {
    /// Consumption callback URL (payments, refunds). `None`: nothing is pushed.
    pub notify_url: Option<String>,
    /// More URLs for the same callbacks, as a load balancer in front of several instances would
    /// spread them: every delivery attempt (retries too) goes to the next URL of `notify_url` and
    /// these, round-robin, so a retry may land on another instance.
    #[serde(default)]
    pub more_notify_urls: Vec<String>,
    /// Authorization callback URL; defaults to `notify_url`.
    #[serde(default)]
    pub auth_notify_url: Option<String>,
    /// Multiplies every retry interval (1.0 = real time; 0.001 turns 15 s into 15 ms).
    pub time_scale: f64,
    /// Probability of delivering an acknowledged callback once more (same notification id).
    #[serde(default)]
    pub duplicate_rate: f64,
    /// Probability of sending a `WECHATPAY/SIGNTEST/` probe before a callback.
    #[serde(default)]
    pub probe_rate: f64,
    /// How long WeChat waits for an answer (5 s).
    pub timeout_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            notify_url: None,
            more_notify_urls: Vec::new(),
            auth_notify_url: None,
            time_scale: 1.0,
            duplicate_rate: 0.0,
            probe_rate: 0.0,
            timeout_ms: 5000,
        }
    }
}
