//! The service's clock, injected everywhere a decision depends on the time (ingest, leases,
//! back-off, expiry), so tests can set it. The machine's clocks are read only through
//! `wechatpay::clock` (see `clippy.toml`).

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};

pub use wechatpay::clock::monotonic;

/// A source of the current time in Unix milliseconds.
pub trait Clock: Send + Sync + Debug {
    /// Unix milliseconds now.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        wechatpay::clock::unix_ms()
    }
}

/// Unix milliseconds now, from the system clock (the command-line tools).
pub fn now_ms() -> i64 {
    SystemClock.now_ms()
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock at `ms`.
    pub fn new(ms: i64) -> Self {
        Self(AtomicI64::new(ms))
    }
    /// Moves it by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    /// Sets it to `ms`.
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
