//! Platform certificates renew themselves (certificate mode): `/v3/certificates` is downloaded on
//! a schedule and at once when WeChat signs with a serial not trusted yet; each certificate is
//! decrypted with the APIv3 key — which authenticates it — before it is trusted. The client and
//! the callback parser share one trust store, so both trust it from then on.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::clock::{Clock, monotonic};
use crate::metrics::Metrics;

/// Whether this client trusts platform certificates (certificate or migrating mode); merchants
/// on public-key mode have none to refresh.
pub fn uses_certificates(client: &wechatpay::Client) -> bool {
    client
        .trust_store()
        .expiries()
        .iter()
        .any(|(_, at)| at.is_some())
}

/// Seconds until the first trusted platform certificate expires, if any is trusted.
pub fn first_expiry_in(client: &wechatpay::Client, now_unix: i64) -> Option<i64> {
    client
        .trust_store()
        .expiries()
        .into_iter()
        .filter_map(|(_, at)| at)
        .min()
        .map(|at| at - now_unix)
}

/// Refreshes at start, on schedule (`every`) and when `unknown_serial` is notified (at most once
/// per `min_gap`: a burst of callbacks signed by a new certificate asks once), until `stop`.
pub async fn refresher(
    client: wechatpay::Client,
    every: Duration,
    min_gap: Duration,
    unknown_serial: Arc<Notify>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match client.refresh_certificates().await {
            Ok(certs) => {
                metrics.certificates.with_label_values(&["refreshed"]).inc();
                let serials: Vec<String> = certs
                    .iter()
                    .map(|c| format!("{} (expires {})", c.serial_no, c.expire_time))
                    .collect();
                tracing::info!("platform certificates trusted: {}", serials.join(", "));
            }
            Err(e) => {
                metrics.certificates.with_label_values(&["failed"]).inc();
                tracing::warn!("cannot refresh the platform certificates (retried later): {e}");
            }
        }
        if let Some(s) = first_expiry_in(&client, clock.now_ms() / 1000) {
            metrics.certificate_expiry.set(s);
        }
        let refreshed_at = monotonic();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = unknown_serial.notified() => {
                let wait = min_gap.saturating_sub(refreshed_at.elapsed());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
            _ = stop.changed() => return,
        }
    }
}
