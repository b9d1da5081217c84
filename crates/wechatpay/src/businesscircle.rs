//! 智慧商圈 (business circle): typed models for the four APIs and the typed chain
//! `client.v3().businesscircle()…`, the same names on the async and the blocking client.

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chain::Chain;
use crate::core::{RawRequest, Response};
use crate::error::{Error, ValidationError};

// ---------------------------------------------------------------------------------------------
// Validation helpers (WeChat: strings are UTF-8 of 1–3-byte characters; times are RFC 3339).

fn invalid(field: &'static str, reason: impl Into<String>) -> ValidationError {
    ValidationError {
        field,
        reason: reason.into(),
    }
}

/// Checks a string field: length in characters within `[min, max]`, no 4-byte UTF-8 characters.
/// (WeChat gives lengths as `string[1,N]`; counting characters is [INFERRED].)
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

fn check_opt(
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
        /// Consumption waiting for points ([INFERRED] meaning).
        Pending = "PENDING",
        /// Nothing pending ([INFERRED] meaning).
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

// ---------------------------------------------------------------------------------------------
// Points notify.

/// The path of the points-notify API.
pub const POINTS_NOTIFY_PATH: &str = "/v3/businesscircle/points/notify";

/// `POST /v3/businesscircle/points/notify` — tells WeChat the points a transaction earned.
/// Success is `204` with an empty body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsNotifyRequest {
    /// 商圈商户ID, partner mode only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sub_mchid: Option<String>,
    /// WeChat order number from the payment notification.
    pub transaction_id: String,
    /// Mini-program appid the member authorized with.
    pub appid: String,
    /// Member openid under that appid.
    pub openid: String,
    /// Whether the transaction earned points (`false` is valid).
    pub earn_points: bool,
    /// Points added (`0` is valid).
    pub increased_points: i64,
    /// When points were credited, RFC 3339.
    pub points_update_time: String,
    /// Why no points, when none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub no_points_remarks: Option<String>,
    /// The member's total points.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_points: Option<i64>,
}

impl PointsNotifyRequest {
    /// The required fields.
    pub fn new(
        transaction_id: impl Into<String>,
        appid: impl Into<String>,
        openid: impl Into<String>,
        earn_points: bool,
        increased_points: i64,
        points_update_time: impl Into<String>,
    ) -> Self {
        Self {
            sub_mchid: None,
            transaction_id: transaction_id.into(),
            appid: appid.into(),
            openid: openid.into(),
            earn_points,
            increased_points,
            points_update_time: points_update_time.into(),
            no_points_remarks: None,
            total_points: None,
        }
    }
    /// Partner mode: the mall's sub-merchant id.
    pub fn sub_mchid(mut self, v: impl Into<String>) -> Self {
        self.sub_mchid = Some(v.into());
        self
    }
    /// Why no points were earned.
    pub fn no_points_remarks(mut self, v: impl Into<String>) -> Self {
        self.no_points_remarks = Some(v.into());
        self
    }
    /// The member's total points.
    pub fn total_points(mut self, v: i64) -> Self {
        self.total_points = Some(v);
        self
    }
    /// Checks the fields as WeChat would, before sending.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_opt("sub_mchid", &self.sub_mchid, 64)?;
        check_string("transaction_id", &self.transaction_id, 1, 64)?;
        check_string("appid", &self.appid, 1, 128)?;
        check_string("openid", &self.openid, 1, 64)?;
        check_rfc3339("points_update_time", &self.points_update_time)?;
        check_opt("no_points_remarks", &self.no_points_remarks, 128)?;
        Ok(())
    }
    /// The signed-to-be request (validated; the JSON bytes are what will be signed and sent).
    pub fn to_request(&self) -> Result<RawRequest, Error> {
        self.validate()?;
        let body = serde_json::to_vec(self).map_err(|e| Error::Request(e.to_string()))?;
        Ok(RawRequest::new(Method::POST, POINTS_NOTIFY_PATH, body))
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization query.

/// Query of `GET /v3/businesscircle/user-authorizations/{openid}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAuthorizationQuery {
    /// Mini-program appid.
    pub appid: String,
    /// Partner mode: the mall's sub-merchant id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sub_mchid: Option<String>,
}

impl UserAuthorizationQuery {
    /// For `appid`.
    pub fn new(appid: impl Into<String>) -> Self {
        Self {
            appid: appid.into(),
            sub_mchid: None,
        }
    }
    /// Partner mode.
    pub fn sub_mchid(mut self, v: impl Into<String>) -> Self {
        self.sub_mchid = Some(v.into());
        self
    }
    /// Checks the fields.
    pub fn validate(&self, openid: &str) -> Result<(), ValidationError> {
        check_string("openid", openid, 1, 64)?;
        check_string("appid", &self.appid, 1, 128)?;
        check_opt("sub_mchid", &self.sub_mchid, 64)
    }
    fn to_request(&self, openid: &str) -> Result<RawRequest, Error> {
        self.validate(openid)?;
        let mut q = Vec::new();
        if let Some(s) = &self.sub_mchid {
            q.push(("sub_mchid".to_string(), s.clone()));
        }
        q.push(("appid".to_string(), self.appid.clone()));
        let path = crate::chain::render_path(
            "/v3/businesscircle/user-authorizations/{openid}",
            &[("openid".to_string(), openid.to_string())],
            &q,
        )?;
        Ok(RawRequest::new(Method::GET, path, bytes::Bytes::new()))
    }
}

/// Answer of the authorization query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAuthorization {
    /// Echoed openid.
    #[serde(default)]
    pub openid: String,
    /// The state.
    pub authorize_state: AuthorizeState,
    /// When authorized (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub authorize_time: Option<String>,
    /// When revoked (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deauthorize_time: Option<String>,
    /// Fields this SDK does not know, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

// ---------------------------------------------------------------------------------------------
// Pending-points query.

/// Query of `GET /v3/businesscircle/users/{openid}/points/commit_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatusQuery {
    /// 品牌ID.
    pub brandid: i64,
    /// Mini-program appid.
    pub appid: String,
    /// Partner mode.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sub_mchid: Option<String>,
}

impl CommitStatusQuery {
    /// For a brand and appid.
    pub fn new(brandid: i64, appid: impl Into<String>) -> Self {
        Self {
            brandid,
            appid: appid.into(),
            sub_mchid: None,
        }
    }
    /// Partner mode.
    pub fn sub_mchid(mut self, v: impl Into<String>) -> Self {
        self.sub_mchid = Some(v.into());
        self
    }
    /// Checks the fields.
    pub fn validate(&self, openid: &str) -> Result<(), ValidationError> {
        check_string("openid", openid, 1, 64)?;
        check_string("appid", &self.appid, 1, 128)?;
        check_opt("sub_mchid", &self.sub_mchid, 64)
    }
    fn to_request(&self, openid: &str) -> Result<RawRequest, Error> {
        self.validate(openid)?;
        let mut q = Vec::new();
        if let Some(s) = &self.sub_mchid {
            q.push(("sub_mchid".to_string(), s.clone()));
        }
        q.push(("brandid".to_string(), self.brandid.to_string()));
        q.push(("appid".to_string(), self.appid.clone()));
        let path = crate::chain::render_path(
            "/v3/businesscircle/users/{openid}/points/commit_status",
            &[("openid".to_string(), openid.to_string())],
            &q,
        )?;
        Ok(RawRequest::new(Method::GET, path, bytes::Bytes::new()))
    }
}

/// Answer of the pending-points query: `200` with JSON, or — as some sources describe — an
/// empty `204`, in which case `points_commit_status` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommitStatus {
    /// `PENDING` or `FINISHED`.
    #[serde(default)]
    pub points_commit_status: Option<PointsCommitStatus>,
    /// Fields this SDK does not know, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn decode_commit_status(res: &Response) -> Result<CommitStatus, Error> {
    if res.body.iter().all(u8::is_ascii_whitespace) {
        Ok(CommitStatus::default())
    } else {
        res.json()
    }
}

// ---------------------------------------------------------------------------------------------
// Parking sync.

/// `POST /v3/businesscircle/parkings` — a member's car entering or leaving. Success is `204`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkingRequest {
    /// Partner mode.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sub_mchid: Option<String>,
    /// 品牌ID.
    pub brandid: i64,
    /// Mini-program appid.
    pub appid: String,
    /// Member openid.
    pub openid: String,
    /// Plate number, e.g. `粤B888888`.
    pub plate_number: String,
    /// `IN` or `OUT`.
    pub state: ParkingState,
    /// When, RFC 3339.
    pub time: String,
}

impl ParkingRequest {
    /// The required fields.
    pub fn new(
        brandid: i64,
        appid: impl Into<String>,
        openid: impl Into<String>,
        plate_number: impl Into<String>,
        state: ParkingState,
        time: impl Into<String>,
    ) -> Self {
        Self {
            sub_mchid: None,
            brandid,
            appid: appid.into(),
            openid: openid.into(),
            plate_number: plate_number.into(),
            state,
            time: time.into(),
        }
    }
    /// Partner mode.
    pub fn sub_mchid(mut self, v: impl Into<String>) -> Self {
        self.sub_mchid = Some(v.into());
        self
    }
    /// Checks the fields (lengths not published by WeChat; limits here are [INFERRED]).
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_opt("sub_mchid", &self.sub_mchid, 64)?;
        check_string("appid", &self.appid, 1, 128)?;
        check_string("openid", &self.openid, 1, 64)?;
        check_string("plate_number", &self.plate_number, 1, 32)?;
        if let ParkingState::Other(s) = &self.state {
            return Err(invalid("state", format!("`{s}` is not IN or OUT")));
        }
        check_rfc3339("time", &self.time)
    }
    fn to_request(&self) -> Result<RawRequest, Error> {
        self.validate()?;
        let body = serde_json::to_vec(self).map_err(|e| Error::Request(e.to_string()))?;
        Ok(RawRequest::new(
            Method::POST,
            "/v3/businesscircle/parkings",
            body,
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The typed chain. Segment structs are shared; the verbs are implemented for each client.

macro_rules! segment {
    ($(#[$m:meta])* $name:ident $({ $($field:ident : $ty:ty),* })?) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name<'a, C> {
            client: &'a C,
            $($($field: $ty,)*)?
        }
    };
}

segment!(
    /// `v3/`.
    V3
);
segment!(
    /// `v3/businesscircle/`.
    Businesscircle
);
segment!(
    /// `v3/businesscircle/points/`.
    Points
);
segment!(
    /// `POST v3/businesscircle/points/notify`.
    PointsNotify
);
segment!(
    /// `GET v3/businesscircle/user-authorizations/{openid}`.
    UserAuthorizations { openid: String }
);
segment!(
    /// `v3/businesscircle/users/{openid}/`.
    Users { openid: String }
);
segment!(
    /// `v3/businesscircle/users/{openid}/points/`.
    UserPoints { openid: String }
);
segment!(
    /// `GET v3/businesscircle/users/{openid}/points/commit_status`.
    CommitStatusEndpoint { openid: String }
);
segment!(
    /// `POST v3/businesscircle/parkings`.
    Parkings
);

impl<'a, C> V3<'a, C> {
    pub(crate) fn new(client: &'a C) -> Self {
        Self { client }
    }
    /// `businesscircle/`.
    pub fn businesscircle(&self) -> Businesscircle<'a, C> {
        Businesscircle {
            client: self.client,
        }
    }
}

impl<'a, C> Businesscircle<'a, C> {
    /// `points/`.
    pub fn points(&self) -> Points<'a, C> {
        Points {
            client: self.client,
        }
    }
    /// `user-authorizations/{openid}`.
    pub fn user_authorizations(&self, openid: impl Into<String>) -> UserAuthorizations<'a, C> {
        UserAuthorizations {
            client: self.client,
            openid: openid.into(),
        }
    }
    /// `users/{openid}/`.
    pub fn users(&self, openid: impl Into<String>) -> Users<'a, C> {
        Users {
            client: self.client,
            openid: openid.into(),
        }
    }
    /// `parkings`.
    pub fn parkings(&self) -> Parkings<'a, C> {
        Parkings {
            client: self.client,
        }
    }
    /// Any other path under `v3/businesscircle/` through the raw chain.
    pub fn chain(&self, rest: &str) -> Chain<'a, C> {
        Chain::new(
            self.client,
            &format!("v3/businesscircle/{}", rest.trim_start_matches('/')),
        )
    }
}

impl<'a, C> Points<'a, C> {
    /// `notify`.
    pub fn notify(&self) -> PointsNotify<'a, C> {
        PointsNotify {
            client: self.client,
        }
    }
}

impl<'a, C> Users<'a, C> {
    /// `points/`.
    pub fn points(&self) -> UserPoints<'a, C> {
        UserPoints {
            client: self.client,
            openid: self.openid.clone(),
        }
    }
}

impl<'a, C> UserPoints<'a, C> {
    /// `commit_status`.
    pub fn commit_status(&self) -> CommitStatusEndpoint<'a, C> {
        CommitStatusEndpoint {
            client: self.client,
            openid: self.openid.clone(),
        }
    }
}

impl PointsNotify<'_, crate::Client> {
    /// Sends the points sync; `Ok` means WeChat answered a verified 2xx (204).
    pub async fn post(&self, req: &PointsNotifyRequest) -> Result<Response, Error> {
        self.client.execute(&req.to_request()?).await
    }
}

impl UserAuthorizations<'_, crate::Client> {
    /// Queries the member's authorization state.
    pub async fn get(&self, query: &UserAuthorizationQuery) -> Result<UserAuthorization, Error> {
        self.client
            .execute(&query.to_request(&self.openid)?)
            .await?
            .json()
    }
}

impl CommitStatusEndpoint<'_, crate::Client> {
    /// Queries whether today's consumption waits for points.
    pub async fn get(&self, query: &CommitStatusQuery) -> Result<CommitStatus, Error> {
        decode_commit_status(
            &self
                .client
                .execute(&query.to_request(&self.openid)?)
                .await?,
        )
    }
}

impl Parkings<'_, crate::Client> {
    /// Syncs a parking event; `Ok` means a verified 2xx (204).
    pub async fn post(&self, req: &ParkingRequest) -> Result<Response, Error> {
        self.client.execute(&req.to_request()?).await
    }
}

#[cfg(feature = "blocking")]
mod blocking_verbs {
    use super::*;
    use crate::blocking::Client;

    impl PointsNotify<'_, Client> {
        /// Sends the points sync; `Ok` means WeChat answered a verified 2xx (204).
        pub fn post(&self, req: &PointsNotifyRequest) -> Result<Response, Error> {
            self.client.execute(&req.to_request()?)
        }
    }

    impl UserAuthorizations<'_, Client> {
        /// Queries the member's authorization state.
        pub fn get(&self, query: &UserAuthorizationQuery) -> Result<UserAuthorization, Error> {
            self.client
                .execute(&query.to_request(&self.openid)?)?
                .json()
        }
    }

    impl CommitStatusEndpoint<'_, Client> {
        /// Queries whether today's consumption waits for points.
        pub fn get(&self, query: &CommitStatusQuery) -> Result<CommitStatus, Error> {
            decode_commit_status(&self.client.execute(&query.to_request(&self.openid)?)?)
        }
    }

    impl Parkings<'_, Client> {
        /// Syncs a parking event; `Ok` means a verified 2xx (204).
        pub fn post(&self, req: &ParkingRequest) -> Result<Response, Error> {
            self.client.execute(&req.to_request()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_req() -> PointsNotifyRequest {
        PointsNotifyRequest::new(
            "4200001",
            "wx1234567890abcdef",
            "oWmn",
            true,
            100,
            "2020-05-20T13:29:35.120+08:00",
        )
    }

    #[test]
    fn false_and_zero_are_valid_and_serialised() {
        let r = PointsNotifyRequest::new(
            "4200001",
            "wx1",
            "o1",
            false,
            0,
            "2020-05-20T13:29:35+08:00",
        )
        .no_points_remarks("商品不参与积分活动");
        r.validate().unwrap();
        let body = String::from_utf8(r.to_request().unwrap().body.to_vec()).unwrap();
        assert!(body.contains("\"earn_points\":false"), "{body}");
        assert!(body.contains("\"increased_points\":0"), "{body}");
        assert!(!body.contains("sub_mchid"), "{body}");
    }

    #[test]
    fn field_rules() {
        let cases: Vec<(PointsNotifyRequest, &str, &str)> = vec![
            (
                PointsNotifyRequest {
                    transaction_id: String::new(),
                    ..ok_req()
                },
                "transaction_id",
                "empty",
            ),
            (
                PointsNotifyRequest {
                    openid: "o".repeat(65),
                    ..ok_req()
                },
                "openid",
                "at most 64",
            ),
            (
                PointsNotifyRequest {
                    appid: "a".repeat(129),
                    ..ok_req()
                },
                "appid",
                "at most 128",
            ),
            (
                PointsNotifyRequest {
                    points_update_time: "2020-05-20 13:29:35".into(),
                    ..ok_req()
                },
                "points_update_time",
                "RFC 3339",
            ),
            (
                ok_req().no_points_remarks("好😀"),
                "no_points_remarks",
                "4 bytes",
            ),
            (
                ok_req().no_points_remarks("x".repeat(129)),
                "no_points_remarks",
                "at most 128",
            ),
            (ok_req().sub_mchid(""), "sub_mchid", "empty"),
        ];
        for (req, field, words) in cases {
            let e = req.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(words), "{e}");
        }
        ok_req()
            .no_points_remarks("汉".repeat(128))
            .validate()
            .unwrap();
    }

    #[test]
    fn unknown_enum_values_and_fields_are_kept() {
        let a: UserAuthorization =
            serde_json::from_str(r#"{"openid":"o","authorize_state":"PAUSED","new_field":1}"#)
                .unwrap();
        assert_eq!(a.authorize_state, AuthorizeState::Other("PAUSED".into()));
        assert_eq!(a.extra.get("new_field"), Some(&Value::from(1)));
        let c: CommitStatus =
            serde_json::from_str(r#"{"points_commit_status":"PENDING"}"#).unwrap();
        assert_eq!(c.points_commit_status, Some(PointsCommitStatus::Pending));
        assert_eq!(
            serde_json::to_string(&AuthorizeState::Authorized).unwrap(),
            "\"AUTHORIZED\""
        );
    }

    #[test]
    fn parking_rules() {
        let p = ParkingRequest::new(
            1000,
            "wx1",
            "o1",
            "粤B888888",
            ParkingState::In,
            "2022-06-01T10:43:39+08:00",
        );
        p.validate().unwrap();
        let bad = ParkingRequest {
            state: ParkingState::Other("PARKED".into()),
            ..p.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "state");
        let body = String::from_utf8(p.to_request().unwrap().body.to_vec()).unwrap();
        assert!(body.contains("\"state\":\"IN\""), "{body}");
    }

    #[test]
    fn query_paths() {
        let r = UserAuthorizationQuery::new("wxAB")
            .sub_mchid("1900000109")
            .to_request("oAbC")
            .unwrap();
        assert_eq!(
            r.path_and_query,
            "/v3/businesscircle/user-authorizations/oAbC?sub_mchid=1900000109&appid=wxAB"
        );
        let r = CommitStatusQuery::new(1000, "wx9")
            .to_request("oUp/F")
            .unwrap();
        assert_eq!(
            r.path_and_query,
            "/v3/businesscircle/users/oUp%2FF/points/commit_status?brandid=1000&appid=wx9"
        );
    }
}
