//! Injected time and randomness, so signing and verification are testable to the second.
//!
//! This module is the one place in the workspace that reads the machine's clocks
//! (`clippy.toml` disallows `SystemTime::now` and `Instant::now` everywhere else): code that
//! needs the time takes a [`Clock`], or calls [`unix_ms`] or [`monotonic`].

use std::fmt::Debug;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now, from the system clock.
pub fn unix_ms() -> i64 {
    #[allow(clippy::disallowed_methods)]
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Now on the monotonic clock, for durations and deadlines.
pub fn monotonic() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

/// A source of the current Unix time in seconds.
pub trait Clock: Send + Sync + Debug {
    /// Seconds since the Unix epoch.
    fn now(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        unix_ms().div_euclid(1000)
    }
}

/// A clock fixed at one instant (tests).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now(&self) -> i64 {
        self.0
    }
}

/// A source of request nonces.
pub trait NonceSource: Send + Sync + Debug {
    /// A fresh nonce (WeChat accepts up to 32 characters).
    fn nonce(&self) -> String;
}

/// 32 random characters from `[0-9A-Z]`, from the system CSPRNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomNonce;

impl NonceSource for RandomNonce {
    fn nonce(&self) -> String {
        crate::crypto::random_token(32)
    }
}

/// Always the same nonce (known-answer tests).
#[derive(Debug, Clone)]
pub struct FixedNonce(pub String);

impl NonceSource for FixedNonce {
    fn nonce(&self) -> String {
        self.0.clone()
    }
}

/// Formats Unix seconds as RFC 3339 in China time (+08:00), as WeChat writes times.
pub fn rfc3339_china(unix: i64) -> String {
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.to_offset(offset))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
