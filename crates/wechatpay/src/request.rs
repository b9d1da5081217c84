//! What is sent and what comes back: the owned [`RawRequest`], the verified [`Response`], and
//! the two traits that let each typed API be written once for both clients — [`ApiRequest`] (how
//! a typed request becomes a raw one and how its answer is read) and [`Sender`] (a client that
//! sends one: the async client returns a future, the blocking one the result).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::Error;

/// An APIv3 request ready to sign: method, path with query exactly as it will be sent, body.
/// Owned data: it can be stored and re-sent byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query, starting with `/` (e.g. `/v3/businesscircle/points/notify`).
    pub path_and_query: String,
    /// Body bytes (empty for GET).
    pub body: Bytes,
}

impl RawRequest {
    /// A request with a JSON body given as bytes (sent exactly as given).
    pub fn new(method: Method, path_and_query: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            method,
            path_and_query: path_and_query.into(),
            body: body.into(),
        }
    }
}

/// A verified 2xx response.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status (2xx).
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The raw body bytes, exactly as signed.
    pub body: Bytes,
    /// `Request-ID`.
    pub request_id: Option<String>,
    /// The trust-store id (certificate serial or `PUB_KEY_ID_…`) that verified the signature.
    pub verified_by: String,
    /// WeChat's clock minus ours, in seconds, from the `Date` header (positive: ours is behind).
    pub clock_skew_secs: Option<i64>,
}

impl Response {
    /// Decodes the body as JSON; a failure names the JSON path.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_json(&self.body)
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| Error::Decode {
        path: e.path().to_string(),
        reason: e.inner().to_string(),
    })
}

/// A typed APIv3 call, in the shape of async-stripe's requests: owned data that says what to
/// send ([`ApiRequest::to_request`], validated) and how to read a verified answer
/// ([`ApiRequest::decode`]). Sent by [`crate::Client::send`] or `blocking::Client::send`.
pub trait ApiRequest {
    /// What a successful call returns.
    type Output: Send;
    /// The signed-to-be request (fields validated first).
    fn to_request(&self) -> Result<RawRequest, Error>;
    /// Reads a verified 2xx answer.
    fn decode(&self, response: Response) -> Result<Self::Output, Error>;
}

/// A raw request is its own call; its answer is the verified response.
impl ApiRequest for RawRequest {
    type Output = Response;
    fn to_request(&self) -> Result<RawRequest, Error> {
        Ok(self.clone())
    }
    fn decode(&self, response: Response) -> Result<Response, Error> {
        Ok(response)
    }
}

/// A future returned by the async client's typed chain.
pub type SendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// A client that can send an [`ApiRequest`]: the typed and raw chains are written once over it.
/// [`crate::Client`] answers with a [`SendFuture`] to `.await`; `blocking::Client` with the
/// result itself.
pub trait Sender {
    /// What sending returns.
    type Sent<'a, T: 'a>
    where
        Self: 'a;
    /// Sends `call`.
    fn send_call<'a, R>(&'a self, call: R) -> Self::Sent<'a, R::Output>
    where
        R: ApiRequest + Send + Sync + 'a;
}

/// A request that could not be built: sending it returns its error, with no I/O, the same way a
/// send's error would come back.
#[derive(Debug)]
pub(crate) struct Unbuilt<T> {
    error: std::sync::Mutex<Option<Error>>,
    output: std::marker::PhantomData<fn() -> T>,
}

impl<T> Unbuilt<T> {
    pub(crate) fn new(error: Error) -> Self {
        Self {
            error: std::sync::Mutex::new(Some(error)),
            output: std::marker::PhantomData,
        }
    }
}

impl<T: Send> ApiRequest for Unbuilt<T> {
    type Output = T;
    fn to_request(&self) -> Result<RawRequest, Error> {
        let taken = self.error.lock().map(|mut e| e.take()).ok().flatten();
        Err(taken.unwrap_or_else(|| Error::Request("request could not be built".into())))
    }
    fn decode(&self, _: Response) -> Result<T, Error> {
        Err(Error::Request("request could not be built".into()))
    }
}
