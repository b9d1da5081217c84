//! Fault injection: per endpoint, by rate or by script (the next N requests), plus a global rate
//! limit above which every request gets 429 `FREQUENCY_LIMITED`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Which API a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// Every API.
    #[default]
    Any,
    /// `POST /v3/businesscircle/points/notify`.
    PointsNotify,
    /// `GET /v3/businesscircle/user-authorizations/{openid}`.
    UserAuthorizations,
    /// `GET /v3/businesscircle/users/{openid}/points/commit_status`.
    CommitStatus,
    /// `POST /v3/businesscircle/parkings`.
    Parkings,
    /// `GET /v3/certificates`.
    Certificates,
}

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultKind {
    /// 429 `FREQUENCY_LIMITED`.
    TooManyRequests,
    /// 500 `SYSTEM_ERROR`.
    SystemError,
    /// 502 from a gateway (unsigned, not JSON).
    BadGateway,
    /// 503 from a gateway (unsigned, not JSON).
    ServiceUnavailable,
    /// Answer normally, after a delay.
    Latency {
        /// Added delay.
        ms: u64,
    },
    /// Never answer (until the client gives up).
    Hang,
    /// Read the request, then close the connection without answering.
    Reset,
}

/// One rule. With `count`, it fires on the next `count` matching requests; otherwise with
/// probability `rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// Which API.
    #[serde(default)]
    pub endpoint: Endpoint,
    /// What happens.
    pub fault: FaultKind,
    /// Probability per request (0–1).
    #[serde(default)]
    pub rate: f64,
    /// Fire on this many next requests, then stop.
    #[serde(default)]
    pub count: Option<u32>,
}

impl FaultRule {
    /// A rule firing on the next `count` requests to `endpoint`.
    pub fn next(endpoint: Endpoint, fault: FaultKind, count: u32) -> Self {
        Self {
            endpoint,
            fault,
            rate: 0.0,
            count: Some(count),
        }
    }
    /// A rule firing with probability `rate`.
    pub fn rate(endpoint: Endpoint, fault: FaultKind, rate: f64) -> Self {
        Self {
            endpoint,
            fault,
            rate,
            count: None,
        }
    }
}

/// The fault settings: rules and an optional global QPS limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultConfig {
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// Requests per second above which WeChat answers 429.
    #[serde(default)]
    pub qps_limit: Option<u32>,
}

/// Live fault state.
#[derive(Debug)]
pub(crate) struct Faults {
    pub config: FaultConfig,
    bucket: Option<(f64, Instant)>,
}

impl Faults {
    pub fn new(config: FaultConfig) -> Self {
        Self {
            config,
            bucket: None,
        }
    }

    pub fn set(&mut self, config: FaultConfig) {
        self.config = config;
        self.bucket = None;
    }

    /// Whether the global rate limit rejects a request now (token bucket, burst = 1 s of tokens).
    pub fn rate_limited(&mut self) -> bool {
        let Some(qps) = self.config.qps_limit else {
            return false;
        };
        let qps = f64::from(qps.max(1));
        let now = wechatpay::clock::monotonic();
        let (tokens, last) = self.bucket.get_or_insert((qps, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * qps).min(qps);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            false
        } else {
            true
        }
    }

    /// The fault to inject for a request to `endpoint`, if any. `roll` is uniform in [0, 1).
    pub fn pick(&mut self, endpoint: Endpoint, roll: f64) -> Option<FaultKind> {
        for rule in &mut self.config.rules {
            if rule.endpoint != Endpoint::Any && rule.endpoint != endpoint {
                continue;
            }
            match &mut rule.count {
                Some(0) => continue,
                Some(n) => {
                    *n -= 1;
                    return Some(rule.fault);
                }
                None if roll < rule.rate => return Some(rule.fault),
                None => {}
            }
        }
        None
    }
}

/// How long a hung request stays open at most (the client times out long before).
pub(crate) const HANG: Duration = Duration::from_secs(3600);
