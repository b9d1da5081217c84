//! The public listener's connection handling: a cap on concurrent connections, and a deadline
//! for a request's headers, so a client that stalls (half the headers, or none) cannot hold a
//! connection open. The body deadline is the receiver's (`receiver.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::clock::monotonic;
use crate::metrics::Metrics;

/// How the public listener protects itself.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this (idle connections are closed after it too).
    pub header_timeout: Duration,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stop`, then lets open connections finish their request.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    let mut said_full: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        while conns.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // out of file descriptors and the like: say so, breathe, go on
                tracing::warn!("public listener cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connections.with_label_values(&["at_limit"]).inc();
            if said_full.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(
                    max = limits.max_connections,
                    "public listener at its connection cap (service.max_connections): closing \
                     new connections until some finish; WeChat retries refused callbacks"
                );
                said_full = Some(monotonic());
            }
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let metrics = metrics.clone();
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    metrics
                        .connections
                        .with_label_values(&["header_timeout"])
                        .inc();
                } else {
                    tracing::debug!("public connection ended: {e}");
                }
            }
        });
    }
    while conns.join_next().await.is_some() {}
}
