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
