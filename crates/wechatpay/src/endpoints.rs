//! Primary and backup endpoints: fail over on connection failures, fail back once the primary
//! answers again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use url::Url;

/// Primary/backup endpoint selection: fail over on connection failures, fail back once the primary
/// answers again (probed after `failback_after`).
#[derive(Debug)]
pub(crate) struct Endpoints {
    pub primary: Url,
    pub backup: Option<Url>,
    failback_after: Duration,
    on_backup_since: Mutex<Option<Instant>>,
}

impl Endpoints {
    pub fn new(primary: Url, backup: Option<Url>, failback_after: Duration) -> Self {
        Self {
            primary,
            backup,
            failback_after,
            on_backup_since: Mutex::new(None),
        }
    }

    /// The order in which to try the endpoints for the next request.
    pub fn order(&self) -> Vec<(bool, &Url)> {
        let since = *self
            .on_backup_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (&self.backup, since) {
            (Some(b), Some(t)) if t.elapsed() < self.failback_after => {
                vec![(false, b), (true, &self.primary)]
            }
            (Some(b), _) => vec![(true, &self.primary), (false, b)],
            (None, _) => vec![(true, &self.primary)],
        }
    }

    /// Records that an endpoint answered (any HTTP status) or failed to connect.
    pub fn report(&self, primary: bool, connected: bool) {
        if !primary {
            return;
        }
        let mut s = self
            .on_backup_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if connected {
            if s.take().is_some() {
                tracing::info!("wechatpay: primary endpoint answers again; failing back");
            }
        } else if self.backup.is_some() {
            tracing::warn!("wechatpay: cannot connect to primary endpoint; failing over to backup");
            *s = Some(crate::clock::monotonic());
        }
    }

    /// Whether requests currently go to the backup first.
    pub fn on_backup(&self) -> bool {
        self.order().first().map(|(p, _)| !p).unwrap_or(false)
    }
}
