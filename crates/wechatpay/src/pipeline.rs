//! The pipeline every request goes through, shared by the async and blocking clients: sign now,
//! then turn the answer into a verified [`Response`] or a typed error. Only the I/O differs
//! between the two clients.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use http::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use crate::clock::{Clock, NonceSource};
use crate::crypto::ApiV3Key;
use crate::endpoints::Endpoints;
use crate::error::{ApiError, ConfigError, Error};
use crate::explain::explain_sign_error;
use crate::request::{RawRequest, Response};
use crate::sign::RequestSigner;
use crate::trust::TrustStore;
use crate::verify::{REQUEST_ID, verify_signature};

/// The endpoints a request could not connect to, in order: the error to return once every
/// endpoint failed is the last one's, naming the others.
#[derive(Debug, Default)]
pub(crate) struct ConnectFailures(Vec<Error>);

impl ConnectFailures {
    pub fn push(&mut self, e: Error) {
        self.0.push(e);
    }

    pub fn into_error(mut self) -> Error {
        let Some(last) = self.0.pop() else {
            return Error::Request("no endpoint configured".into());
        };
        let earlier: Vec<String> = self
            .0
            .iter()
            .filter_map(|e| match e {
                Error::Transport { url, cause, .. } => Some(format!("{url} ({cause})")),
                _ => None,
            })
            .collect();
        match last {
            Error::Transport {
                url,
                cause,
                may_have_reached,
                source,
                ..
            } => Error::Transport {
                url,
                cause,
                also_tried: earlier,
                may_have_reached,
                source,
            },
            e => e,
        }
    }
}

/// WeChat's clock minus ours, in seconds, from an answer's `Date` header (positive: ours is
/// behind).
pub(crate) fn clock_skew(headers: &HeaderMap, ours: i64) -> Option<i64> {
    let date = headers.get(http::header::DATE)?.to_str().ok()?;
    let theirs = httpdate::parse_http_date(date).ok()?;
    let theirs = theirs.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(theirs - ours)
}

/// The real cause of a transport failure, in words: DNS, refused, TLS, timeout or reset.
pub(crate) fn transport_cause(e: &reqwest::Error) -> String {
    let mut chain = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return "connection refused".into(),
                ConnectionReset | ConnectionAborted => return "connection reset".into(),
                TimedOut => return "timed out".into(),
                _ => {}
            }
        }
        chain.push(c.to_string());
        cur = c.source();
    }
    let all = chain.join(": ").to_ascii_lowercase();
    if e.is_timeout() || all.contains("timed out") {
        "timed out".into()
    } else if all.contains("dns") || all.contains("lookup address") || all.contains("resolve") {
        "DNS lookup failed".into()
    } else if all.contains("certificate") || all.contains("tls") || all.contains("handshake") {
        format!("TLS failed ({})", chain.last().cloned().unwrap_or_default())
    } else {
        chain.last().cloned().unwrap_or_else(|| e.to_string())
    }
}

/// A request after signing: what goes on the wire.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub method: Method,
    pub target: String,
    /// The primary endpoint's URL, parsed once while signing.
    pub primary_url: Url,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub sign_string: Vec<u8>,
    /// The signature's timestamp (Unix seconds).
    pub signed_at: i64,
}

impl Prepared {
    /// Where to send it: the URL parsed while signing for the primary, the same target on `base` otherwise.
    pub fn url_for(&self, primary: bool, base: &Url) -> Result<Url, Error> {
        if primary {
            Ok(self.primary_url.clone())
        } else {
            base.join(&self.target)
                .map_err(|e| Error::Request(e.to_string()))
        }
    }
}

/// Configuration shared by a client and its clones.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub signer: RequestSigner,
    pub trust: crate::trust::SharedTrust,
    pub apiv3_key: Option<ApiV3Key>,
    pub endpoints: Endpoints,
    pub clock: Arc<dyn Clock>,
    pub nonces: Arc<dyn NonceSource>,
    pub user_agent: HeaderValue,
    pub retry_gets: u32,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl Pipeline {
    pub fn trust(&self) -> Arc<TrustStore> {
        self.trust.snapshot()
    }

    /// Signs `req` now.
    pub fn prepare(&self, req: &RawRequest) -> Result<Prepared, Error> {
        if !req.path_and_query.starts_with('/') {
            return Err(Error::Request(format!(
                "path must start with `/`: {}",
                req.path_and_query
            )));
        }
        // Sign exactly what the URL parser will put on the wire.
        let url = self
            .endpoints
            .primary
            .join(&req.path_and_query)
            .map_err(|e| Error::Request(format!("bad path `{}`: {e}", req.path_and_query)))?;
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let now = self.clock.now();
        let nonce = self.nonces.nonce();
        let signed = self
            .signer
            .sign(req.method.as_str(), &target, &req.body, now, &nonce);
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&signed.authorization)
                .map_err(|e| Error::Request(e.to_string()))?,
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, self.user_agent.clone());
        if !req.body.is_empty() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(id) = self.trust().public_key_id()
            && let Ok(v) = HeaderValue::from_str(id)
        {
            headers.insert("wechatpay-serial", v);
        }
        Ok(Prepared {
            method: req.method.clone(),
            target,
            primary_url: url,
            headers,
            body: req.body.clone(),
            sign_string: signed.sign_string,
            signed_at: now,
        })
    }

    /// Turns a received answer into a verified [`Response`] or a typed error.
    pub fn finish(
        &self,
        p: &Prepared,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, Error> {
        let request_id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let trust = self.trust();
        let now = self.clock.now();
        if status.is_success() {
            let clock_skew_secs = clock_skew(&headers, now);
            return match verify_signature(&trust, &headers, &body, now) {
                Ok(v) => Ok(Response {
                    clock_skew_secs,
                    status,
                    headers,
                    body,
                    request_id,
                    verified_by: v.serial,
                }),
                Err(source) => Err(Error::Verify {
                    method: p.method.to_string(),
                    path: p.target.clone(),
                    request_id,
                    source,
                }),
            };
        }
        let signed = verify_signature(&trust, &headers, &body, now).is_ok();
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let code = field("code");
        let message = field("message");
        let detail = parsed.as_ref().and_then(|v| v.get("detail")).cloned();
        let clock_skew_secs = clock_skew(&headers, p.signed_at);
        // a timestamp outside WeChat's 5-minute window is a clock problem, not a signing one
        let clock_problem = status == StatusCode::UNAUTHORIZED
            && (clock_skew_secs.is_some_and(|s| s.abs() >= 300)
                || message.contains("时间戳")
                || message.to_ascii_lowercase().contains("timestamp"));
        let sign_explanation = (status == StatusCode::UNAUTHORIZED
            && code == "SIGN_ERROR"
            && !clock_problem)
            .then(|| {
                explain_sign_error(
                    &p.sign_string,
                    detail.as_ref().and_then(|d| d.get("sign_information")),
                )
            });
        let hint = match (status.as_u16(), code.as_str()) {
            (401, _) if clock_problem => Some(match clock_skew_secs {
                Some(s) if s.abs() >= 1 => format!(
                    "clock problem: this machine's clock is {} s {} WeChat Pay's (its Date header), \
                     and WeChat accepts signatures only within 5 minutes: sync the clock (NTP)",
                    s.abs(),
                    if s > 0 { "behind" } else { "ahead of" }
                ),
                _ => "clock problem: WeChat Pay says the signature's timestamp is outside its \
                      5-minute window: sync this machine's clock (NTP)"
                    .to_string(),
            }),
            (404, "RESOURCE_NOT_EXISTS") if p.target.starts_with("/v3/certificates") => Some(
                "this merchant uses WeChat Pay public-key mode: download the public key and its PUB_KEY_ID_… from 商户平台 → 账户中心 → API安全 and trust it (--trust PUB_KEY_ID_…=PATH)"
                    .to_string(),
            ),
            (401, _) if sign_explanation.is_none() => Some(
                "check mchid, the merchant certificate serial and that the private key belongs to that certificate"
                    .to_string(),
            ),
            (429, _) => Some("rate limited: back off and retry with the same payload".to_string()),
            _ => None,
        };
        let mut body_text = String::from_utf8_lossy(&body).into_owned();
        if body_text.len() > 8192 {
            let mut cut = 8192;
            while !body_text.is_char_boundary(cut) {
                cut -= 1;
            }
            body_text.truncate(cut);
        }
        Err(Error::Api(Box::new(ApiError {
            clock_skew_secs,
            status: status.as_u16(),
            code,
            message,
            detail,
            request_id,
            body: body_text,
            signed,
            sign_explanation,
            hint,
        })))
    }

    /// Maps a transport error, deciding whether WeChat may have received the request.
    pub fn transport_error(url: &Url, e: reqwest::Error) -> Error {
        let may_have_reached = !(e.is_connect() || e.is_builder());
        Error::Transport {
            url: url.to_string(),
            cause: transport_cause(&e),
            also_tried: Vec::new(),
            may_have_reached,
            source: e,
        }
    }

    /// The one retry rule of both clients: a GET whose result is retryable is retried up to
    /// `retry_gets` times, after 100 ms, 200 ms, 400 ms, … (capped at 2 s). `None`: return `result`.
    pub fn get_retry_delay(
        &self,
        req: &RawRequest,
        attempt: &mut u32,
        result: &Result<Response, Error>,
    ) -> Option<Duration> {
        match result {
            Err(e)
                if req.method == Method::GET && *attempt < self.retry_gets && e.is_retryable() =>
            {
                *attempt += 1;
                Some(Duration::from_millis(
                    (100u64 << (*attempt).min(5).saturating_sub(1)).min(2000),
                ))
            }
            _ => None,
        }
    }

    /// A callback parser sharing the trust store, APIv3 key and clock.
    pub fn notify_parser(&self) -> Result<crate::notify::NotifyParser, ConfigError> {
        let key = self
            .apiv3_key
            .clone()
            .ok_or(ConfigError::Missing(crate::error::Setting::ApiV3Key))?;
        Ok(
            crate::notify::NotifyParser::with_shared_trust(self.trust.clone(), key)
                .with_clock(self.clock.clone()),
        )
    }
}
