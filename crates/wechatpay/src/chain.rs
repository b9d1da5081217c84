//! The raw chain: any APIv3 endpoint by path template, like wechatpay-php's `chain()`.
//!
//! ```no_run
//! # async fn f(client: wechatpay::Client) -> Result<(), wechatpay::Error> {
//! let res = client
//!     .chain("v3/businesscircle/users/{openid}/points/commit_status")
//!     .var("openid", "oWmnN4xxxxxxxxxxe92NHIGf1xd8")
//!     .query("brandid", "1000")
//!     .query("appid", "wx1234567890abcdef")
//!     .get()
//!     .await?;
//! println!("{} {}", res.status, res.text());
//! # Ok(()) }
//! ```

use bytes::Bytes;
use http::Method;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use crate::error::Error;
use crate::request::{RawRequest, Sender, Unbuilt};

/// Characters percent-encoded in path parameters and query parts: all but RFC 3986 unreserved.
pub const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment or query component (never changes letter case).
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Expands `{name}` placeholders in `template` with percent-encoded values and appends the query.
/// The result starts with `/`. Every placeholder needs a value and every value a placeholder.
pub fn render_path(
    template: &str,
    vars: &[(String, String)],
    query: &[(String, String)],
) -> Result<String, Error> {
    let mut out = String::with_capacity(template.len() + 32);
    if !template.starts_with('/') {
        out.push('/');
    }
    let mut used = vec![false; vars.len()];
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| {
            Error::Request(format!("unclosed `{{` in path template `{template}`"))
        })?;
        let name = &after[..close];
        let idx = vars.iter().position(|(k, _)| k == name).ok_or_else(|| {
            Error::Request(format!(
                "path template `{template}` needs a value for {{{name}}}"
            ))
        })?;
        if vars[idx].1.is_empty() {
            return Err(Error::Request(format!(
                "path parameter {{{name}}} is empty"
            )));
        }
        used[idx] = true;
        out.push_str(&encode_component(&vars[idx].1));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(Error::Request(format!(
            "value given for {{{}}} but path template `{template}` has no such placeholder",
            vars[i].0
        )));
    }
    for (i, (k, v)) in query.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(&encode_component(k));
        out.push('=');
        out.push_str(&encode_component(v));
    }
    Ok(out)
}

/// A request under construction against any APIv3 path. Finish it with a verb
/// (`get`, `post`, `put`, `patch`, `delete`) on the async or the blocking client.
#[derive(Debug)]
#[must_use = "a chain does nothing until a verb such as .get() or .post() is called"]
pub struct Chain<'a, C> {
    pub(crate) client: &'a C,
    template: String,
    vars: Vec<(String, String)>,
    query: Vec<(String, String)>,
    body: Result<Bytes, String>,
}

impl<'a, C> Chain<'a, C> {
    pub(crate) fn new(client: &'a C, template: &str) -> Self {
        Self {
            client,
            template: template.to_string(),
            vars: Vec::new(),
            query: Vec::new(),
            body: Ok(Bytes::new()),
        }
    }

    /// A value for the `{name}` placeholder (percent-encoded, case kept).
    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.push((name.into(), value.into()));
        self
    }

    /// A query parameter, in order.
    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }

    /// A JSON body, serialised once (compact); those exact bytes are signed and sent.
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Self {
        self.body = serde_json::to_vec(body)
            .map(Bytes::from)
            .map_err(|e| e.to_string());
        self
    }

    /// A body given as bytes, sent exactly as given.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Ok(body.into());
        self
    }

    /// The signed-to-be request this chain describes.
    pub fn build(&self, method: Method) -> Result<RawRequest, Error> {
        let path = render_path(&self.template, &self.vars, &self.query)?;
        let body = self
            .body
            .clone()
            .map_err(|e| Error::Request(format!("cannot serialise JSON body: {e}")))?;
        Ok(RawRequest::new(method, path, body))
    }
}

impl<'a, C: Sender> Chain<'a, C> {
    /// Sends with any method: a future on the async client, the result on the blocking one.
    pub fn send(self, method: Method) -> C::Sent<'a, crate::request::Response> {
        match self.build(method) {
            Ok(req) => self.client.send_call(req),
            // the error travels the same way a send's would
            Err(e) => self
                .client
                .send_call(Unbuilt::<crate::request::Response>::new(e)),
        }
    }
    /// `GET`.
    pub fn get(self) -> C::Sent<'a, crate::request::Response> {
        self.send(Method::GET)
    }
    /// `POST`.
    pub fn post(self) -> C::Sent<'a, crate::request::Response> {
        self.send(Method::POST)
    }
    /// `PUT`.
    pub fn put(self) -> C::Sent<'a, crate::request::Response> {
        self.send(Method::PUT)
    }
    /// `PATCH`.
    pub fn patch(self) -> C::Sent<'a, crate::request::Response> {
        self.send(Method::PATCH)
    }
    /// `DELETE`.
    pub fn delete(self) -> C::Sent<'a, crate::request::Response> {
        self.send(Method::DELETE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn placeholders_are_encoded_and_case_is_kept() {
        let p = render_path(
            "v3/businesscircle/users/{openid}/points/commit_status",
            &v(&[("openid", "oWmnN4/Ab+C d")]),
            &v(&[("brandid", "1000"), ("appid", "wxAB")]),
        )
        .unwrap();
        assert_eq!(
            p,
            "/v3/businesscircle/users/oWmnN4%2FAb%2BC%20d/points/commit_status?brandid=1000&appid=wxAB"
        );
    }

    #[test]
    fn missing_and_unused_values_are_errors() {
        let e = render_path("v3/a/{openid}", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("{openid}"), "{e}");
        let e = render_path("v3/a", &v(&[("x", "1")]), &[]).unwrap_err();
        assert!(e.to_string().contains("no such placeholder"), "{e}");
        let e = render_path("v3/a/{x", &v(&[("x", "1")]), &[]).unwrap_err();
        assert!(e.to_string().contains("unclosed"), "{e}");
        let e = render_path("v3/a/{x}", &v(&[("x", "")]), &[]).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn chinese_query_values_are_utf8_percent_encoded() {
        let p = render_path("/v3/x", &[], &v(&[("plate", "粤B888888")])).unwrap();
        assert_eq!(p, "/v3/x?plate=%E7%B2%A4B888888");
    }
}
