//! The outgoing rate limit: a token bucket. The dispatcher takes a token for each row *before*
//! claiming it, so a claimed row never waits for the rate limit while its lease runs.

use std::time::{Duration, Instant};

use crate::clock::monotonic;

/// At most `qps` requests per second, bursts of up to one second's worth.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(qps: f64) -> Self {
        Self {
            qps,
            state: std::sync::Mutex::new((qps.max(1.0), monotonic())),
        }
    }

    fn capacity(&self) -> f64 {
        self.qps.max(1.0)
    }

    /// The state, held for a few arithmetic steps only (never across an await).
    fn lock(&self) -> std::sync::MutexGuard<'_, (f64, Instant)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refill(&self, s: &mut (f64, Instant)) {
        let now = monotonic();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.qps).min(self.capacity());
        s.1 = now;
    }

    /// Waits for a token and takes it.
    pub async fn acquire(&self) {
        loop {
            if self.take_up_to(1) == 1 {
                return;
            }
            self.ready().await;
        }
    }

    /// Takes up to `n` tokens available now, without waiting; returns how many were taken.
    pub fn take_up_to(&self, n: usize) -> usize {
        let mut s = self.lock();
        self.refill(&mut s);
        let k = (s.0.floor().max(0.0) as usize).min(n);
        s.0 -= k as f64;
        k
    }

    /// Returns tokens taken but not used.
    pub fn give_back(&self, k: usize) {
        if k > 0 {
            let mut s = self.lock();
            s.0 = (s.0 + k as f64).min(self.capacity());
        }
    }

    /// Waits until at least one token is available (without taking it).
    pub async fn ready(&self) {
        loop {
            let wait = {
                let mut s = self.lock();
                self.refill(&mut s);
                if s.0 >= 1.0 {
                    return;
                }
                (1.0 - s.0) / self.qps
            };
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}
