//! Prometheus metrics, one registry per service instance.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The service's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Callbacks by outcome (payment, refund, held, authorization, duplicate, rejected, ignored,
    /// verification_failed, db_error, timeout, abandoned: WeChat hung up before the answer).
    pub callbacks: IntCounterVec,
    /// Verification failures by cause (missing_header, timestamp_window, probe, bad_signature, …).
    pub verification_failures: IntCounterVec,
    /// Sync attempts by result (done, retry, parked, dead, fenced_out), rows whose lease
    /// expired (rescued), leases renewed in flight (renewed) and syncs leased by their own
    /// callback's transaction instead of a claim (leased_on_receipt).
    pub syncs: IntCounterVec,
    /// Outbox rows not done (pending, inflight, parked, dead), read from the store at each scrape.
    pub backlog: IntGaugeVec,
    /// Store failures by operation (ingest, claim, complete, renew, probe) and cause (locked,
    /// read_only, io, unavailable, …).
    pub store_errors: IntCounterVec,
    /// WeChat's clock minus this machine's, seconds (last sample; positive: ours is behind).
    pub clock_skew: prometheus::IntGauge,
    /// Platform-certificate refreshes by result (refreshed, failed).
    pub certificates: IntCounterVec,
    /// Seconds until the first trusted platform certificate expires.
    pub certificate_expiry: prometheus::IntGauge,
    /// The runtime's worker threads (one per core unless `TOKIO_WORKER_THREADS` says otherwise).
    pub workers: prometheus::IntGauge,
    /// Public connections closed by the service: header_timeout, body_timeout, at_limit.
    pub connections: IntCounterVec,
    /// Callback handling time (verify + durable commit), seconds.
    pub callback_seconds: Histogram,
    /// Points-notify call time, seconds.
    pub sync_seconds: Histogram,
    /// From enqueue (callback commit) to WeChat's 204, seconds.
    pub callback_to_sync_seconds: Histogram,
    /// WeChat queries by API (authorization, commit_status) and outcome (ok, failed).
    pub queries: IntCounterVec,
    /// Mall API requests by route and status.
    pub api_requests: IntCounterVec,
    /// Mall API calls refused by reason (missing_token, wrong_token, missing_scope) and token
    /// name (`-` when no token matched).
    pub api_refusals: IntCounterVec,
}

const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let labelled = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter = |name: &str, help: &str, label: &str| labelled(name, help, &[label]);
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = prometheus::IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let backlog = IntGaugeVec::new(
            Opts::new("pointsync_sync_backlog", "Outbox rows by state"),
            &["state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(backlog.clone()))
            .expect("unique metric");
        let store_errors = labelled(
            "pointsync_store_errors_total",
            "Store failures by operation and cause",
            &["op", "cause"],
        );
        let clock_skew = gauge(
            "pointsync_clock_skew_seconds",
            "WeChat's clock minus this machine's (callback timestamps, Date of answers)",
        );
        let certificate_expiry = gauge(
            "pointsync_platform_certificate_expires_in_seconds",
            "Seconds until the first trusted WeChat Pay platform certificate expires",
        );
        let workers = gauge(
            "pointsync_runtime_workers",
            "Worker threads serving HTTP and signing syncs",
        );
        Self {
            workers,
            queries: labelled(
                "pointsync_wechat_queries_total",
                "WeChat queries by API and outcome",
                &["api", "outcome"],
            ),
            api_requests: labelled(
                "pointsync_mall_api_requests_total",
                "Mall API requests by route and status",
                &["route", "status"],
            ),
            api_refusals: labelled(
                "pointsync_mall_api_refusals_total",
                "Mall API calls refused by reason and token name",
                &["reason", "token"],
            ),
            certificate_expiry,
            certificates: counter(
                "pointsync_certificate_refreshes_total",
                "Platform-certificate refreshes by result",
                "result",
            ),
            clock_skew,
            store_errors,
            callbacks: counter(
                "pointsync_callbacks_total",
                "Callbacks by outcome",
                "outcome",
            ),
            connections: counter(
                "pointsync_connections_closed_total",
                "Public connections closed by the service, by reason",
                "reason",
            ),
            verification_failures: counter(
                "pointsync_verification_failures_total",
                "Rejected callbacks by cause",
                "cause",
            ),
            syncs: counter(
                "pointsync_syncs_total",
                "Points-sync attempts by result",
                "result",
            ),
            backlog,
            callback_seconds: histogram(
                "pointsync_callback_seconds",
                "Callback verification and durable commit",
            ),
            sync_seconds: histogram("pointsync_sync_seconds", "Points-notify call duration"),
            callback_to_sync_seconds: histogram(
                "pointsync_callback_to_sync_seconds",
                "Callback commit to WeChat's 204",
            ),
            registry,
        }
    }

    /// Counts a callback refused before it was stored, by cause.
    pub fn rejected(&self, cause: &str) {
        self.callbacks
            .with_label_values(&["verification_failed"])
            .inc();
        self.verification_failures.with_label_values(&[cause]).inc();
    }

    /// Counts a store failure of `op`.
    pub fn store_error(&self, op: &str, e: &crate::store::StoreError) {
        self.store_errors.with_label_values(&[op, e.cause()]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
