//! `POST /v3/businesscircle/parkings`.

use http::Method;
use serde::{Deserialize, Serialize};

use super::{ParkingState, check_opt, check_rfc3339, check_string, invalid};
use crate::error::{Error, ValidationError};
use crate::request::{ApiRequest, RawRequest, Response};

/// The path of the parking API.
pub const PARKINGS_PATH: &str = "/v3/businesscircle/parkings";

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
    /// Checks the fields (lengths not published by WeChat; limits here are \[INFERRED\]).
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
    /// The signed-to-be request (validated).
    pub fn to_request(&self) -> Result<RawRequest, Error> {
        self.validate()?;
        let body = serde_json::to_vec(self).map_err(|e| Error::Request(e.to_string()))?;
        Ok(RawRequest::new(Method::POST, PARKINGS_PATH, body))
    }
}

impl ApiRequest for ParkingRequest {
    /// The verified 204.
    type Output = Response;
    fn to_request(&self) -> Result<RawRequest, Error> {
        ParkingRequest::to_request(self)
    }
    fn decode(&self, response: Response) -> Result<Response, Error> {
        Ok(response)
    }
}
