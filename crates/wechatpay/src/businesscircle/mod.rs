//! 智慧商圈 (business circle): typed models for the four APIs and the typed chain
//! `client.v3().businesscircle()…`, written once for the async and the blocking client.
//!
//! Each API is an owned request implementing [`crate::ApiRequest`]: [`PointsNotifyRequest`],
//! [`UserAuthorizationRequest`], [`CommitStatusRequest`], [`ParkingRequest`]. Send one with
//! `client.send(&req)` or through the chain.

mod authorizations;
mod chain;
mod commit_status;
mod parkings;
mod points;
#[cfg(test)]
mod tests;

pub use authorizations::{UserAuthorization, UserAuthorizationQuery, UserAuthorizationRequest};
pub use chain::{
    Businesscircle, CommitStatusEndpoint, Parkings, Points, PointsNotify, UserAuthorizations,
    UserPoints, Users, V3,
};
pub use commit_status::{CommitStatus, CommitStatusQuery, CommitStatusRequest};
pub use parkings::{PARKINGS_PATH, ParkingRequest};
pub use points::{POINTS_NOTIFY_PATH, PointsNotifyRequest};

use http::Method;

use crate::error::{Error, ValidationError};
use crate::request::RawRequest;

/// The fields every per-member query checks: the openid in the path, appid and `sub_mchid`.
pub(crate) fn check_member_query(
    openid: &str,
    appid: &str,
    sub_mchid: &Option<String>,
) -> Result<(), ValidationError> {
    check_string("openid", openid, 1, 64)?;
    check_string("appid", appid, 1, 128)?;
    check_opt("sub_mchid", sub_mchid, 64)
}

/// A GET of `template` (with `{openid}`) for one member; `sub_mchid` first in the query when set,
/// then `query` in order.
pub(crate) fn member_get(
    template: &str,
    openid: &str,
    sub_mchid: &Option<String>,
    query: &[(&str, String)],
) -> Result<RawRequest, Error> {
    let q: Vec<(String, String)> = sub_mchid
        .iter()
        .map(|s| ("sub_mchid".to_string(), s.clone()))
        .chain(query.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .collect();
    let path =
        crate::chain::render_path(template, &[("openid".to_string(), openid.to_string())], &q)?;
    Ok(RawRequest::new(Method::GET, path, bytes::Bytes::new()))
}

// Validation helpers (WeChat: strings are UTF-8 of 1–3-byte characters; times are RFC 3339).

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> ValidationError {
    ValidationError {
        field,
        reason: reason.into(),
    }
}

/// Checks a string field: length in characters within `[min, max]`, no 4-byte UTF-8 characters.
/// (WeChat gives lengths as `string[1,N]`; counting characters is \[INFERRED\].)
pub fn check_string(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), ValidationError> {
    let n = value.chars().count();
    if n < min {
        return Err(invalid(
            field,
            if min == 1 {
                "must not be empty".to_string()
            } else {
                format!("must have at least {min} characters")
            },
        ));
    }
    if n > max {
        return Err(invalid(
            field,
            format!("has {n} characters, at most {max} allowed"),
        ));
    }
    if let Some((i, c)) = value.chars().enumerate().find(|(_, c)| c.len_utf8() > 3) {
        return Err(invalid(
            field,
            format!(
                "character {} (U+{:04X}) needs 4 bytes in UTF-8; WeChat Pay accepts only 1–3-byte characters",
                i + 1,
                c as u32
            ),
        ));
    }
    Ok(())
}

/// Checks an RFC 3339 date-time (e.g. `2020-05-20T13:29:35.120+08:00`).
pub fn check_rfc3339(field: &'static str, value: &str) -> Result<(), ValidationError> {
    check_string(field, value, 1, 32)?;
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|_| ())
        .map_err(|e| invalid(field, format!("`{value}` is not an RFC 3339 time ({e})")))
}

pub(crate) fn check_opt(
    field: &'static str,
    value: &Option<String>,
    max: usize,
) -> Result<(), ValidationError> {
    value
        .as_deref()
        .map_or(Ok(()), |v| check_string(field, v, 1, max))
}

/// An enum that keeps values it does not know, so new WeChat values never break decoding.
#[doc(hidden)]
#[macro_export]
macro_rules! businesscircle_open_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(from = "String", into = "String")]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vm])* $variant,)*
            /// A value this SDK does not know yet, kept as sent.
            Other(String),
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() { $($text => Self::$variant,)* _ => Self::Other(s) }
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String { v.as_str().to_string() }
        }
        impl $name {
            /// The wire value.
            pub fn as_str(&self) -> &str {
                match self { $(Self::$variant => $text,)* Self::Other(s) => s }
            }
        }
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

businesscircle_open_enum!(
    /// A member's authorization of the mall points service.
    AuthorizeState {
        /// 未授权.
        Unauthorized = "UNAUTHORIZED",
        /// 已授权.
        Authorized = "AUTHORIZED",
        /// 已取消授权.
        Deauthorized = "DEAUTHORIZED",
    }
);

businesscircle_open_enum!(
    /// Whether today's consumption still waits to be pointed.
    PointsCommitStatus {
        /// Consumption waiting for points (\[INFERRED\] meaning).
        Pending = "PENDING",
        /// Nothing pending (\[INFERRED\] meaning).
        Finished = "FINISHED",
    }
);

businesscircle_open_enum!(
    /// Car entering or leaving the mall.
    ParkingState {
        /// Entering.
        In = "IN",
        /// Leaving.
        Out = "OUT",
    }
);
