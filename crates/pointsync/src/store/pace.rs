//! How fast callbacks arrive, for the stores' commit wait (`service.commit_wait_ms`): while they
//! come closer together than the wait, a callback's write waits for the next ones to share its
//! commit.

use std::time::{Duration, Instant};

/// The smoothed gap between two callbacks, and the last one.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    last: Option<Instant>,
    /// `None` until two have arrived.
    gap: Option<Duration>,
    /// Between the last two.
    last_gap: Option<Duration>,
}

impl Pace {
    /// Notes a callback arriving `now`.
    pub(crate) fn arrived(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let g = now.saturating_duration_since(last);
            // an eighth of each new gap: the pace of the last few callbacks
            self.gap = Some(self.gap.map_or(g, |avg| (avg * 7 + g) / 8));
            self.last_gap = Some(g);
        }
        self.last = Some(now);
    }

    /// Whether callbacks come closer together than `wait`, so another is likely within it: on
    /// average, and the last one too (after a pause the first callbacks never wait).
    pub(crate) fn brisk(&self, wait: Duration) -> bool {
        self.gap.is_some_and(|g| g < wait) && self.last_gap.is_some_and(|g| g < wait)
    }

    /// Whether they come, on average, at least `gap` apart (a moderate rate).
    pub(crate) fn apart(&self, gap: Duration) -> bool {
        self.gap.is_some_and(|g| g >= gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` callbacks `gap` apart, from `start`; returns the last arrival.
    fn arrive(p: &mut Pace, start: Instant, n: u32, gap: Duration) -> Instant {
        let mut at = start;
        for i in 0..n {
            at = start + gap * i;
            p.arrived(at);
        }
        at
    }

    #[test]
    fn brisk_while_they_come_within_the_wait_and_apart_only_at_a_moderate_rate() {
        let (wait, moderate) = (Duration::from_millis(20), Duration::from_micros(2500));
        let t0 = wechatpay::clock::monotonic();
        let mut p = Pace::default();
        assert!(!p.brisk(wait) && !p.apart(moderate), "nothing known yet");
        // 200/s: brisk, and far enough apart for one lane
        let last = arrive(&mut p, t0, 20, Duration::from_millis(5));
        assert!(p.brisk(wait) && p.apart(moderate));
        // a burst 0.1 ms apart: still brisk, no longer a moderate rate once it has lasted
        let last = arrive(&mut p, last, 40, Duration::from_micros(100));
        assert!(p.brisk(wait) && !p.apart(moderate));
        // one callback after a 100 ms pause waits for no one, though the average is still brisk
        p.arrived(last + Duration::from_millis(100));
        assert!(p.gap.is_some_and(|g| g < wait), "{p:?}");
        assert!(!p.brisk(wait));
        // 10/s: never brisk
        let mut slow = Pace::default();
        arrive(&mut slow, t0, 20, Duration::from_millis(100));
        assert!(!slow.brisk(wait) && slow.apart(moderate));
        // a zero wait never waits
        assert!(!p.brisk(Duration::ZERO));
    }
}
