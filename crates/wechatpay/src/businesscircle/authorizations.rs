//! `GET /v3/businesscircle/user-authorizations/{openid}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{AuthorizeState, check_member_query, member_get};
use crate::error::{Error, ValidationError};
use crate::request::{ApiRequest, RawRequest, Response};

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
        check_member_query(openid, &self.appid, &self.sub_mchid)
    }
    pub(super) fn to_request(&self, openid: &str) -> Result<RawRequest, Error> {
        self.validate(openid)?;
        member_get(
            "/v3/businesscircle/user-authorizations/{openid}",
            openid,
            &self.sub_mchid,
            &[("appid", self.appid.clone())],
        )
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

/// The authorization query of one member: an owned request to send or store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAuthorizationRequest {
    /// The member.
    pub openid: String,
    /// The query.
    pub query: UserAuthorizationQuery,
}

impl ApiRequest for UserAuthorizationRequest {
    type Output = UserAuthorization;
    fn to_request(&self) -> Result<RawRequest, Error> {
        self.query.to_request(&self.openid)
    }
    fn decode(&self, response: Response) -> Result<UserAuthorization, Error> {
        response.json()
    }
}
