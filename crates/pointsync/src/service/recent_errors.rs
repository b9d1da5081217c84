//! The newest errors of this process, kept in memory for the operator console.

use std::collections::VecDeque;
use std::sync::Mutex;

/// The newest errors the console shows (the service's own, kept in memory).
#[derive(Debug, Default)]
pub struct RecentErrors(Mutex<VecDeque<String>>);

impl RecentErrors {
    const KEEP: usize = 20;

    /// Remembers one error line.
    pub fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == Self::KEEP {
            q.pop_back();
        }
        q.push_front(line);
    }

    /// The remembered lines, newest first.
    pub fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
