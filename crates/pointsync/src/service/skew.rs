//! How far this machine's clock looks from WeChat's: sampled from callback timestamps and the
//! `Date` of WeChat's answers, shown as a gauge, and said in a log line at most once a minute
//! when it is off by more than a few seconds. A clock far off means refused callbacks (outside
//! WeChat's 5-minute window), refused signatures and syncs that silently wait.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::monotonic;
use crate::metrics::Metrics;

/// Skews smaller than this are not worth a log line.
pub const SAY_FROM_SECS: i64 = 5;

/// How often at most the log line is written.
pub const SAY_EVERY: Duration = Duration::from_secs(60);

/// Whether to write the log line now: a skew worth saying, and nothing said within `every`.
pub fn should_say(skew_secs: i64, last: Option<Instant>, now: Instant, every: Duration) -> bool {
    skew_secs.abs() >= SAY_FROM_SECS && last.is_none_or(|t| now.duration_since(t) >= every)
}

/// Watches the clock skew.
#[derive(Debug)]
pub struct ClockWatch {
    metrics: Metrics,
    last_said: Mutex<Option<Instant>>,
}

impl ClockWatch {
    /// A watch reporting to `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            last_said: Mutex::new(None),
        }
    }

    /// Records one sample: WeChat's clock minus ours, seconds, seen in `source`.
    pub fn observe(&self, source: &str, skew_secs: i64) {
        self.metrics.clock_skew.set(skew_secs);
        let now = monotonic();
        let mut last = self.last_said.lock().unwrap_or_else(|p| p.into_inner());
        if should_say(skew_secs, *last, now, SAY_EVERY) {
            *last = Some(now);
            tracing::warn!(
                skew_secs,
                source,
                "this machine's clock looks {} s {} WeChat Pay's (from {source}): callbacks \
                 outside WeChat's 5-minute window are refused, WeChat may refuse signatures, and \
                 due syncs wait; sync the clock (NTP)",
                skew_secs.abs(),
                if skew_secs > 0 { "behind" } else { "ahead of" }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn said_when_off_and_at_most_once_a_minute() {
        let t0 = monotonic();
        let s = Duration::from_secs;
        // (skew, last said, now, expected)
        let cases = [
            (0, None, t0, false),
            (4, None, t0, false),
            (-4, None, t0, false),
            (5, None, t0, true),
            (-600, None, t0, true),
            (600, Some(t0), t0 + s(59), false),
            (600, Some(t0), t0 + s(60), true),
            (3, Some(t0), t0 + s(600), false),
        ];
        for (skew, last, now, want) in cases {
            assert_eq!(
                should_say(skew, last, now, SAY_EVERY),
                want,
                "{skew} {last:?}"
            );
        }
    }
}
