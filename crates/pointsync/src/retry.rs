//! What to do after a sync attempt: a pure decision of (how it failed, the attempt number, the
//! sync's age, the policy, a random roll), so every outcome is table-tested without a clock, a
//! network or a random generator.

use crate::config::DispatcherConfig;
use crate::store::SyncOutcome;

/// The retry policy of the durable outbox (the only retry loop for syncs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Back-off base: the first retry waits up to this long.
    pub base_ms: i64,
    /// Back-off cap.
    pub cap_ms: i64,
    /// A sync older than this is dead, not sent or retried (WeChat watches for 30 days).
    pub max_age_ms: i64,
}

impl From<&DispatcherConfig> for RetryPolicy {
    fn from(c: &DispatcherConfig) -> Self {
        Self {
            base_ms: c.backoff_base_ms,
            cap_ms: c.backoff_cap_ms,
            max_age_ms: c.max_age_hours.saturating_mul(3_600_000),
        }
    }
}

impl RetryPolicy {
    /// The longest wait before attempt `attempt + 1`: `min(cap, base × 2^(attempt−1))`.
    pub fn ceiling_ms(&self, attempt: i64) -> i64 {
        self.base_ms
            .saturating_mul(1i64 << (attempt - 1).clamp(0, 30))
            .min(self.cap_ms)
            .max(1)
    }

    /// Full jitter: `roll` in `[0, 1)` picks the wait in `[0, ceiling]`.
    pub fn backoff_ms(&self, attempt: i64, roll: f64) -> i64 {
        let ceiling = self.ceiling_ms(attempt);
        ((roll.clamp(0.0, 1.0) * (ceiling + 1) as f64) as i64).min(ceiling)
    }

    /// Whether a sync of this age must not be sent any more.
    pub fn expired(&self, age_ms: i64) -> bool {
        age_ms > self.max_age_ms
    }

    /// The outcome for a sync too old to send.
    pub fn dead(&self) -> SyncOutcome {
        SyncOutcome::Dead {
            error: format!("older than {} hours, not sent", self.max_age_ms / 3_600_000),
        }
    }
}

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying with the same bytes: 429, 5xx, a transport error, an answer whose
    /// signature did not verify.
    Transient(String),
    /// Retrying cannot fix it (WeChat refused the request): kept for an operator, whole.
    Permanent(String),
}

/// Classifies an SDK error. WeChat's refusal is kept whole, as JSON.
pub fn classify(e: &wechatpay::Error) -> Failure {
    if e.is_retryable() || matches!(e, wechatpay::Error::Verify { .. }) {
        return Failure::Transient(e.to_string());
    }
    match e.api() {
        Some(api) => Failure::Permanent(
            serde_json::json!({
                "status": api.status, "code": api.code, "message": api.message,
                "detail": api.detail, "request_id": api.request_id, "body": api.body,
                "explanation": api.sign_explanation.as_ref().map(ToString::to_string),
                "hint": api.hint,
            })
            .to_string(),
        ),
        None => Failure::Permanent(e.to_string()),
    }
}

/// The outcome of attempt `attempt` (1 for the first) of a sync `age_ms` old, ended at `now_ms`
/// with `failure` (`None`: WeChat answered a verified 2xx). A transient failure is retried after
/// a full-jitter back-off picked by `roll` unless the retry would come after the sync's maximum
/// age; a permanent one is parked.
pub fn retry_outcome(
    failure: Option<&Failure>,
    attempt: i64,
    age_ms: i64,
    now_ms: i64,
    policy: &RetryPolicy,
    roll: f64,
) -> SyncOutcome {
    match failure {
        None => SyncOutcome::Done,
        Some(Failure::Permanent(error)) => SyncOutcome::Parked {
            error: error.clone(),
        },
        Some(Failure::Transient(error)) => {
            let wait = policy.backoff_ms(attempt, roll);
            if policy.expired(age_ms + wait) {
                SyncOutcome::Dead {
                    error: format!(
                        "{error}; not retried: the sync would be older than {} hours",
                        policy.max_age_ms / 3_600_000
                    ),
                }
            } else {
                SyncOutcome::Retry {
                    due_at: now_ms + wait,
                    error: error.clone(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy {
        base_ms: 500,
        cap_ms: 300_000,
        max_age_ms: 29 * 24 * 3_600_000,
    };

    #[test]
    fn every_outcome() {
        let t = || Some(Failure::Transient("HTTP 429 FREQUENCY_LIMITED".into()));
        let hour = 3_600_000;
        // (failure, attempt, age, roll, expected)
        let cases: Vec<(Option<Failure>, i64, i64, f64, SyncOutcome)> = vec![
            (None, 1, 0, 0.5, SyncOutcome::Done),
            (None, 9, 28 * 24 * hour, 0.5, SyncOutcome::Done),
            (
                Some(Failure::Permanent("HTTP 400 PARAM_ERROR".into())),
                1,
                0,
                0.5,
                SyncOutcome::Parked {
                    error: "HTTP 400 PARAM_ERROR".into(),
                },
            ),
            // first retry: jitter over [0, 500]
            (t(), 1, 0, 0.0, SyncOutcome::Retry { due_at: 1_000, error: "HTTP 429 FREQUENCY_LIMITED".into() }),
            (t(), 1, 0, 0.5, SyncOutcome::Retry { due_at: 1_250, error: "HTTP 429 FREQUENCY_LIMITED".into() }),
            (t(), 1, 0, 0.999_999, SyncOutcome::Retry { due_at: 1_500, error: "HTTP 429 FREQUENCY_LIMITED".into() }),
            // doubling: attempt 4 waits up to 4,000 ms
            (t(), 4, 0, 0.999_999, SyncOutcome::Retry { due_at: 5_000, error: "HTTP 429 FREQUENCY_LIMITED".into() }),
            // capped at 300 s however many attempts
            (t(), 40, 0, 0.999_999, SyncOutcome::Retry { due_at: 301_000, error: "HTTP 429 FREQUENCY_LIMITED".into() }),
            // a retry that would land past the maximum age: dead by age
            (
                t(),
                40,
                P.max_age_ms - 1_000,
                0.5,
                SyncOutcome::Dead {
                    error: "HTTP 429 FREQUENCY_LIMITED; not retried: the sync would be older than 696 hours".into(),
                },
            ),
            // …but not if the roll keeps it inside
            (t(), 40, P.max_age_ms - 1_000, 0.0, SyncOutcome::Retry { due_at: 1_000, error: "HTTP 429 FREQUENCY_LIMITED".into() }),
        ];
        for (failure, attempt, age, roll, want) in cases {
            let got = retry_outcome(failure.as_ref(), attempt, age, 1_000, &P, roll);
            assert_eq!(
                got, want,
                "{failure:?} attempt {attempt} age {age} roll {roll}"
            );
        }
    }

    #[test]
    fn expiry_before_sending() {
        assert!(!P.expired(P.max_age_ms));
        assert!(P.expired(P.max_age_ms + 1));
        assert_eq!(
            P.dead(),
            SyncOutcome::Dead {
                error: "older than 696 hours, not sent".into()
            }
        );
    }

    #[test]
    fn classification() {
        let v = wechatpay::Error::Validation(wechatpay::ValidationError {
            field: "openid",
            reason: "must not be empty".into(),
        });
        assert!(matches!(classify(&v), Failure::Permanent(m) if m.contains("openid")));
        let r = wechatpay::Error::Request("bad path".into());
        assert!(matches!(classify(&r), Failure::Permanent(_)));
        let verify = wechatpay::Error::Verify {
            method: "POST".into(),
            path: "/v3/businesscircle/points/notify".into(),
            request_id: None,
            source: wechatpay::VerifyError::MissingHeader("Wechatpay-Signature"),
        };
        assert!(
            matches!(classify(&verify), Failure::Transient(_)),
            "an unverifiable answer is retried, never taken as done"
        );
    }
}
