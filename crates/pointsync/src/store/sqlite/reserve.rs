//! The free-space reserve (`service.min_free_bytes`): new callbacks are refused before the disk is
//! full, so an operator can still act.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::store::StoreError;

/// The free-space reserve of the database's file system, checked before new callbacks.
#[derive(Debug)]
pub(super) struct Reserve {
    min_free: u64,
    path: PathBuf,
    /// The last reading: when, and the bytes free then.
    last: Mutex<Option<(std::time::Instant, u64)>>,
}

impl Reserve {
    /// Reads at most every this often (a `statvfs` per callback would be wasted work).
    const EVERY: Duration = Duration::from_millis(200);

    pub(super) fn new(path: &Path, min_free: u64) -> Self {
        Self {
            min_free,
            path: path.to_path_buf(),
            last: Mutex::new(None),
        }
    }

    pub(super) fn check(&self) -> Result<(), StoreError> {
        if self.min_free == 0 {
            return Ok(());
        }
        let now = crate::clock::monotonic();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let available = match *last {
            Some((at, available)) if now.duration_since(at) < Self::EVERY => available,
            _ => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                // a file system that cannot say is not refused
                let available = fs4::available_space(dir).unwrap_or(u64::MAX);
                *last = Some((now, available));
                available
            }
        };
        if available < self.min_free {
            return Err(StoreError::DiskFull {
                database: self.path.display().to_string(),
                available,
                reserve: self.min_free,
            });
        }
        Ok(())
    }
}
