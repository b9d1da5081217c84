//! The blocking client: the same names as the async one, for programs without an async runtime.
//! Do not call it from inside an async runtime (it runs its own, like `reqwest::blocking`).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::builder::ClientBuilder;
use crate::businesscircle::V3;
use crate::certificates::{self, PlatformCertificate};
use crate::chain::Chain;
use crate::error::Setting;
use crate::error::{ConfigError, Error};
use crate::notify::NotifyParser;
use crate::pipeline::{ConnectFailures, Pipeline, Prepared};
use crate::request::{ApiRequest, RawRequest, Response, Sender};
use crate::trust::TrustStore;

/// The blocking WeChat Pay APIv3 client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    core: Arc<Pipeline>,
    http: reqwest::blocking::Client,
}

impl Client {
    /// Starts configuring a client; finish with [`ClientBuilder::build_blocking`].
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    pub(crate) fn from_pipeline(core: Pipeline) -> Result<Self, ConfigError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(core.timeout)
            .connect_timeout(core.connect_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| ConfigError::Invalid {
                setting: Setting::HttpClient,
                reason: e.to_string(),
            })?;
        Ok(Self {
            core: Arc::new(core),
            http,
        })
    }

    /// The typed chain.
    pub fn v3(&self) -> V3<'_, Self> {
        V3::new(self)
    }

    /// The raw chain for any APIv3 path template.
    pub fn chain(&self, template: &str) -> Chain<'_, Self> {
        Chain::new(self, template)
    }

    /// The merchant id this client signs as.
    pub fn mchid(&self) -> &str {
        self.core.signer.mchid()
    }

    /// A snapshot of the trusted WeChat keys.
    pub fn trust_store(&self) -> Arc<TrustStore> {
        self.core.trust()
    }

    /// Whether requests currently go to the backup endpoint first.
    pub fn on_backup(&self) -> bool {
        self.core.endpoints.on_backup()
    }

    /// A callback parser sharing this client's trust store, APIv3 key and clock.
    pub fn notify_parser(&self) -> Result<NotifyParser, ConfigError> {
        self.core.notify_parser()
    }

    /// Sends a typed request: validated, signed, its answer verified and decoded.
    pub fn send<R: ApiRequest>(&self, call: &R) -> Result<R::Output, Error> {
        let response = self.execute(&call.to_request()?)?;
        call.decode(response)
    }

    /// Signs and sends `req`, verifies the answer.
    pub fn execute(&self, req: &RawRequest) -> Result<Response, Error> {
        let mut attempt = 0;
        loop {
            let result = self
                .exchange(req)
                .and_then(|(p, status, headers, body)| self.core.finish(&p, status, headers, body));
            match self.core.get_retry_delay(req, &mut attempt, &result) {
                Some(delay) => std::thread::sleep(delay),
                None => return result,
            }
        }
    }

    fn exchange(
        &self,
        req: &RawRequest,
    ) -> Result<(Prepared, StatusCode, HeaderMap, Bytes), Error> {
        let p = self.core.prepare(req)?;
        let mut failed = ConnectFailures::default();
        for (primary, base) in self.core.endpoints.order() {
            let url = p.url_for(primary, base)?;
            let sent = self
                .http
                .request(p.method.clone(), url.clone())
                .headers(p.headers.clone())
                .body(p.body.to_vec())
                .send();
            match sent {
                Ok(mut resp) => {
                    self.core.endpoints.report(primary, true);
                    let status = resp.status();
                    let headers = std::mem::take(resp.headers_mut());
                    let body = resp
                        .bytes()
                        .map_err(|e| Pipeline::transport_error(&url, e))?;
                    return Ok((p, status, headers, body));
                }
                Err(e) if e.is_connect() => {
                    self.core.endpoints.report(primary, false);
                    failed.push(Pipeline::transport_error(&url, e));
                }
                Err(e) => return Err(Pipeline::transport_error(&url, e)),
            }
        }
        Err(failed.into_error())
    }

    /// `GET /v3/certificates`: downloads, decrypts and verifies the platform certificates.
    pub fn certificates(&self) -> Result<Vec<PlatformCertificate>, Error> {
        let (p, status, headers, body) = self.exchange(&certificates::request())?;
        certificates::finish(&self.core, &p, status, headers, body)
    }
}

impl Sender for Client {
    type Sent<'a, T: 'a> = Result<T, Error>;
    fn send_call<'a, R>(&'a self, call: R) -> Self::Sent<'a, R::Output>
    where
        R: ApiRequest + Send + Sync + 'a,
    {
        self.send(&call)
    }
}

impl ClientBuilder {
    /// Validates everything and builds the blocking client. Do not call it inside an async
    /// runtime.
    pub fn build_blocking(self) -> Result<Client, ConfigError> {
        Client::from_pipeline(self.build_pipeline()?)
    }
}
