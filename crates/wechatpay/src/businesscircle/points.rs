//! `POST /v3/businesscircle/points/notify`.

use http::Method;
use serde::{Deserialize, Serialize};

use super::{check_opt, check_rfc3339, check_string};
use crate::error::{Error, ValidationError};
use crate::request::{ApiRequest, RawRequest, Response};

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

impl ApiRequest for PointsNotifyRequest {
    /// The verified 204 (with its `Request-ID`).
    type Output = Response;
    fn to_request(&self) -> Result<RawRequest, Error> {
        PointsNotifyRequest::to_request(self)
    }
    fn decode(&self, response: Response) -> Result<Response, Error> {
        Ok(response)
    }
}
