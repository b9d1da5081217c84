//! WeChat's query APIs, used while a callback or a mall API call waits: a member's authorization
//! (`GET /v3/businesscircle/user-authorizations/{openid}`) and her pending points
//! (`GET /v3/businesscircle/users/{openid}/points/commit_status`). Both share one rate limit
//! (`wechatpay.query_qps`, at most WeChat's 150) and one deadline (`wechatpay.query_timeout_ms`).
//! An authorization query waits for a token (a payment's decision depends on it); a pending-points
//! query never does (it is `unknown` when the budget is spent) and its answer is cached per member
//! (`mall_api.pending_cache_ms`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use wechatpay::businesscircle::{
    CommitStatusQuery, CommitStatusRequest, UserAuthorizationQuery, UserAuthorizationRequest,
};

use super::TokenBucket;
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::LearnedAuthorization;

/// WeChat's pending-points answer for a member, as the mall API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PendingPoints {
    /// `PENDING` (consumption today waits for points: steer her to the points plugin),
    /// `FINISHED`, or `unknown` (WeChat could not be asked or did not say).
    pub status: String,
    /// When WeChat answered (Unix ms); absent when unknown.
    pub checked_at: Option<i64>,
    /// Why it is unknown.
    pub error: Option<String>,
}

impl PendingPoints {
    fn unknown(error: impl Into<String>) -> Self {
        Self {
            status: "unknown".into(),
            checked_at: None,
            error: Some(error.into()),
        }
    }
}

/// The query client.
#[derive(Debug)]
pub struct Queries {
    client: wechatpay::Client,
    bucket: TokenBucket,
    timeout: Duration,
    appids: Vec<String>,
    brandid: Option<i64>,
    pending_ttl_ms: i64,
    pending: Mutex<HashMap<String, (i64, PendingPoints)>>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
}

const CACHE_MAX: usize = 100_000;

impl Queries {
    /// From the config.
    pub fn new(
        config: &Config,
        client: wechatpay::Client,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let w = &config.wechatpay;
        Self {
            client,
            bucket: TokenBucket::new(w.query_qps),
            timeout: Duration::from_millis(w.query_timeout_ms),
            appids: w.appids.clone(),
            brandid: w.brandid,
            pending_ttl_ms: config
                .mall_api
                .as_ref()
                .map_or(30_000, |m| m.pending_cache_ms as i64),
            pending: Mutex::new(HashMap::new()),
            metrics,
            clock,
        }
    }

    /// The appid to query with: the configured first appid, else `fallback` (the member's).
    pub fn appid(&self, fallback: Option<&str>) -> Option<String> {
        self.appids
            .first()
            .map(String::as_str)
            .or(fallback)
            .map(str::to_string)
    }

    /// Sends `req` within the deadline; `wait` for a rate-limit token, or give up at once when
    /// none is left (a member read never queues behind the rate limit).
    async fn send<R: wechatpay::ApiRequest>(
        &self,
        what: &'static str,
        req: &R,
        wait: bool,
    ) -> Result<R::Output, String> {
        if !wait && self.bucket.take_up_to(1) == 0 {
            self.metrics
                .queries
                .with_label_values(&[what, "rate_limited"])
                .inc();
            return Err("wechatpay.query_qps reached; asked again on a later call".into());
        }
        let r = tokio::time::timeout(self.timeout, async {
            if wait {
                self.bucket.acquire().await;
            }
            self.client.send(req).await.map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within wechatpay.query_timeout_ms ({} ms, rate-limit wait included)",
                self.timeout.as_millis()
            ))
        });
        let outcome = if r.is_ok() { "ok" } else { "failed" };
        self.metrics
            .queries
            .with_label_values(&[what, outcome])
            .inc();
        r
    }

    /// Asks WeChat whether `openid` authorized the points service.
    pub async fn authorization(
        &self,
        openid: &str,
        appid: &str,
        sub_mchid: Option<&str>,
    ) -> Result<LearnedAuthorization, String> {
        let mut query = UserAuthorizationQuery::new(appid);
        if let Some(s) = sub_mchid {
            query = query.sub_mchid(s);
        }
        let req = UserAuthorizationRequest {
            openid: openid.to_string(),
            query,
        };
        let a = self.send("authorization", &req, true).await?;
        Ok(LearnedAuthorization::from_wechat(
            openid,
            &a.authorize_state,
        ))
    }

    /// WeChat's pending-points status of `openid`, cached; a failure is `unknown`, never an error.
    pub async fn pending(&self, openid: &str, appid: Option<&str>) -> PendingPoints {
        let now = self.clock.now_ms();
        if let Some((at, p)) = self.cache().get(openid)
            && now - at < self.pending_ttl_ms
        {
            return p.clone();
        }
        let Some(brandid) = self.brandid else {
            return PendingPoints::unknown("wechatpay.brandid is not configured");
        };
        let Some(appid) = self.appid(appid) else {
            return PendingPoints::unknown("no appid: set wechatpay.appids");
        };
        let req = CommitStatusRequest {
            openid: openid.to_string(),
            query: CommitStatusQuery::new(brandid, appid),
        };
        let p = match self.send("commit_status", &req, false).await {
            Ok(s) => match s.points_commit_status {
                Some(st) => PendingPoints {
                    status: st.as_str().to_string(),
                    checked_at: Some(self.clock.now_ms()),
                    error: None,
                },
                None => PendingPoints::unknown("WeChat answered without points_commit_status"),
            },
            Err(e) => return PendingPoints::unknown(e),
        };
        let mut cache = self.cache();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(openid.to_string(), (now, p.clone()));
        p
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, PendingPoints)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}
