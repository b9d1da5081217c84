//! The async client. One reused HTTP connection pool; every request signed, every 2xx verified.

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

/// The async WeChat Pay APIv3 client. Cheap to clone; clones share the connection pool.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use wechatpay::businesscircle::PointsNotifyRequest;
/// let client = wechatpay::Client::builder()
///     .mchid("1900000001")
///     .serial("3775B6A45ACD588826D15E583A95F5DD5EE7FFFF")
///     .private_key_file("apiclient_key.pem")
///     .trust_file(Some("PUB_KEY_ID_0114232134912410000000000000TEST"), "pub_key.pem")
///     .build()?;
/// let req = PointsNotifyRequest::new(
///     "1217752501201407033233368018", "wx1234567890abcdef", "oWmnN4xxxxxxxxxxe92NHIGf1xd8",
///     true, 100, "2020-05-20T13:29:35.120+08:00",
/// );
/// client.v3().businesscircle().points().notify().post(&req).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    core: Arc<Pipeline>,
    http: reqwest::Client,
}

impl Client {
    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    pub(crate) fn from_pipeline(core: Pipeline) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
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

    /// The typed chain: `client.v3().businesscircle()…`.
    pub fn v3(&self) -> V3<'_, Self> {
        V3::new(self)
    }

    /// The raw chain for any APIv3 path template, e.g. `"v3/businesscircle/user-authorizations/{openid}"`.
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

    /// Adds keys to the trust store (e.g. freshly downloaded platform certificates).
    pub fn add_trusted(&self, extra: TrustStore) {
        self.core.trust.extend(extra);
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
    pub async fn send<R: ApiRequest>(&self, call: &R) -> Result<R::Output, Error> {
        let response = self.execute(&call.to_request()?).await?;
        call.decode(response)
    }

    /// Signs and sends `req`, verifies the answer. GETs are retried only if enabled
    /// with [`ClientBuilder::retry_gets`].
    pub async fn execute(&self, req: &RawRequest) -> Result<Response, Error> {
        let mut attempt = 0;
        loop {
            let result = self
                .exchange(req)
                .await
                .and_then(|(p, status, headers, body)| self.core.finish(&p, status, headers, body));
            match self.core.get_retry_delay(req, &mut attempt, &result) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return result,
            }
        }
    }

    /// Signs and sends once, failing over between endpoints on connection failures.
    pub(crate) async fn exchange(
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
                .body(p.body.clone())
                .send()
                .await;
            match sent {
                Ok(mut resp) => {
                    self.core.endpoints.report(primary, true);
                    let status = resp.status();
                    let headers = std::mem::take(resp.headers_mut());
                    let body = resp
                        .bytes()
                        .await
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

    /// `GET /v3/certificates`: downloads, decrypts (APIv3 key) and verifies the platform
    /// certificates. Does not change the trust store; see [`Client::refresh_certificates`].
    pub async fn certificates(&self) -> Result<Vec<PlatformCertificate>, Error> {
        let (p, status, headers, body) = self.exchange(&certificates::request()).await?;
        certificates::finish(&self.core, &p, status, headers, body)
    }

    /// Downloads the platform certificates and adds them to the trust store.
    pub async fn refresh_certificates(&self) -> Result<Vec<PlatformCertificate>, Error> {
        let certs = self.certificates().await?;
        self.add_trusted(certificates::to_trust_store(&certs)?);
        Ok(certs)
    }
}

impl Sender for Client {
    type Sent<'a, T: 'a> = crate::request::SendFuture<'a, T>;
    fn send_call<'a, R>(&'a self, call: R) -> Self::Sent<'a, R::Output>
    where
        R: ApiRequest + Send + Sync + 'a,
    {
        Box::pin(async move { self.send(&call).await })
    }
}

impl ClientBuilder {
    /// Validates everything and builds the async client.
    pub fn build(self) -> Result<Client, ConfigError> {
        Client::from_pipeline(self.build_pipeline()?)
    }
}
