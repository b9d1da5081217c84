//! The outgoing rate limit: a token bucket.

use std::time::{Duration, Instant};

use crate::clock::monotonic;

/// At most `qps` requests per second, bursts of up to one second's worth.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(qps: f64) -> Self {
        Self {
            qps,
            state: tokio::sync::Mutex::new((qps.max(1.0), monotonic())),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let mut s = self.state.lock().await;
        loop {
            let now = monotonic();
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.qps).min(self.qps.max(1.0));
            s.1 = now;
            if s.0 >= 1.0 {
                s.0 -= 1.0;
                return;
            }
            tokio::time::sleep(Duration::from_secs_f64((1.0 - s.0) / self.qps)).await;
        }
    }
}
