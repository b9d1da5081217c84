//! The endpoints, each documented for the OpenAPI document by its `#[utoipa::path]`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::auth::Caller;
use super::body::{self, json};
use super::{ApiError, MallApi};
use crate::domain::{NewParking, parking_request};
use crate::service::PendingPoints;
use crate::store::{
    Adjusted, Adjustment, AuthorizationView, LedgerItem, ParkingEnqueued, ParkingView, Store,
};

/// The OpenAPI document of the mall API.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "pointsync mall API",
        description = "Members, points redemption and parking relay for the mall's own systems. \
                       Every call needs `Authorization: Bearer <token>`; errors are \
                       `{\"code\", \"message\", \"field\"?}` with stable codes."
    ),
    paths(member, ledger, adjust, post_parking, get_parking, openapi_doc),
    components(schemas(
        MemberResponse,
        AuthorizationView,
        PendingPoints,
        LedgerPage,
        LedgerItem,
        AdjustmentRequest,
        AdjustmentResponse,
        ParkingBody,
        ParkingAccepted,
        ParkingView,
        ApiError
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", responses(
    (status = 200, description = "The OpenAPI 3.1 document"),
    (status = 401, body = ApiError),
))]
#[allow(dead_code)]
fn openapi_doc() {}

/// A member as the mini-program shows her.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberResponse {
    /// Openid.
    pub openid: String,
    /// Points balance.
    pub balance: i64,
    /// Her authorization of the points service, as last learned from WeChat.
    pub authorization: AuthorizationView,
    /// Points credited today (China time).
    pub credited_today: i64,
    /// Payments kept not credited because she was not authorized: credited when she applies in
    /// WeChat's points plugin.
    pub not_credited_payments: i64,
    /// WeChat's pending-points status: `PENDING` means purchases today wait for points (steer her
    /// to the points plugin).
    pub pending_points: PendingPoints,
}

fn member_not_found(openid: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "member_not_found",
        format!("no member {openid}: she has not paid or authorized in the mall yet"),
    )
}

/// A member: balance, authorization, today's credits and pending points.
#[utoipa::path(get, path = "/v1/members/{openid}",
    params(("openid" = String, Path, description = "The member's openid")),
    responses(
        (status = 200, body = MemberResponse),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
    ))]
pub async fn member<S: Store>(
    State(api): State<Arc<MallApi<S>>>,
    Path(openid): Path<String>,
) -> Result<Json<MemberResponse>, ApiError> {
    member_view(&api, &openid).await.map(Json)
}

/// A member as the API (and `pointsync member`) shows her.
pub async fn member_view<S: Store>(
    api: &MallApi<S>,
    openid: &str,
) -> Result<MemberResponse, ApiError> {
    body::openid("openid", openid)?;
    let m = api
        .store
        .member_summary(openid, api.clock.now_ms())
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(|| member_not_found(openid))?;
    let pending_points = api.queries.pending(openid, m.appid.as_deref()).await;
    Ok(MemberResponse {
        openid: m.openid,
        balance: m.balance,
        authorization: m.authorization,
        credited_today: m.credited_today,
        not_credited_payments: m.not_credited_payments,
        pending_points,
    })
}

/// A page of ledger entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerPage {
    /// Entries, newest first.
    pub entries: Vec<LedgerItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Ledger paging.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LedgerQuery {
    /// Entries per page, 1–100 (default 20).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A member's ledger, newest first, with each entry's rule explanation.
#[utoipa::path(get, path = "/v1/members/{openid}/ledger",
    params(("openid" = String, Path, description = "The member's openid"), LedgerQuery),
    responses(
        (status = 200, body = LedgerPage),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
    ))]
pub async fn ledger<S: Store>(
    State(api): State<Arc<MallApi<S>>>,
    Path(openid): Path<String>,
    Query(q): Query<LedgerQuery>,
) -> Result<Json<LedgerPage>, ApiError> {
    body::openid("openid", &openid)?;
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::field("invalid_field", "limit", "`limit` must be 1 to 100"))?,
    };
    let before = match q.cursor.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::field(
                "invalid_field",
                "cursor",
                "`cursor` must be a `next_cursor` this API returned",
            )
        })?),
    };
    let now = api.clock.now_ms();
    if before.is_none()
        && api
            .store
            .member_summary(&openid, now)
            .await
            .map_err(|e| ApiError::store(&e))?
            .is_none()
    {
        return Err(member_not_found(&openid));
    }
    let mut entries = api
        .store
        .ledger_page(&openid, before, limit + 1)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let more = entries.len() as i64 > limit;
    entries.truncate(limit as usize);
    let next_cursor = more
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(LedgerPage {
        entries,
        next_cursor,
    }))
}

/// An adjustment: points redeemed (negative) or granted (positive) by the mall's own systems.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentRequest {
    /// Points added (positive) or taken (negative); not zero.
    pub points: i64,
    /// The caller's unique reference (redemption order, ticket): the same reference applies once.
    pub reference: String,
    /// Why, kept in the ledger.
    pub reason: String,
}

/// What an adjustment did.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdjustmentResponse {
    /// `applied` (201) or `duplicate` (200: this reference was applied before, nothing changed).
    pub result: String,
    /// The balance now.
    pub balance: i64,
}

/// Adjusts a member's balance, idempotent on `reference`.
#[utoipa::path(post, path = "/v1/members/{openid}/adjustments",
    params(("openid" = String, Path, description = "The member's openid")),
    request_body = AdjustmentRequest,
    responses(
        (status = 201, body = AdjustmentResponse, description = "Applied"),
        (status = 200, body = AdjustmentResponse, description = "Applied before with this reference"),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "`adjustment_conflict` (the reference was used for another member or amount) or `insufficient_points`"),
        (status = 413, body = ApiError),
    ))]
pub async fn adjust<S: Store>(
    State(api): State<Arc<MallApi<S>>>,
    Extension(caller): Extension<Caller>,
    Path(openid): Path<String>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    body::openid("openid", &openid)?;
    let req: AdjustmentRequest = json(&headers, raw, api.body_limit).await?;
    if req.points == 0 || req.points.abs() > 1_000_000_000 {
        return Err(ApiError::field(
            "invalid_field",
            "points",
            "`points` must be non-zero and at most 1000000000 either way",
        ));
    }
    body::text("reference", &req.reference, 1, 64)?;
    body::text("reason", &req.reason, 0, 256)?;
    let a = Adjustment {
        openid: openid.clone(),
        points: req.points,
        reference: req.reference.clone(),
        reason: format!("{} (mall API, {})", req.reason, caller.0),
    };
    let done = api
        .store
        .adjust(&a, api.allow_negative_balance, api.clock.now_ms())
        .await
        .map_err(|e| ApiError::store(&e))?;
    let answer = |status: StatusCode, result: &str, balance: i64| {
        let body = AdjustmentResponse {
            result: result.into(),
            balance,
        };
        (status, Json(body)).into_response()
    };
    match done {
        Adjusted::Applied { balance } => {
            tracing::info!(
                openid,
                points = req.points,
                reference = req.reference,
                caller = caller.0,
                "adjusted"
            );
            Ok(answer(StatusCode::CREATED, "applied", balance))
        }
        Adjusted::Duplicate { balance } => Ok(answer(StatusCode::OK, "duplicate", balance)),
        Adjusted::UnknownMember => Err(member_not_found(&openid)),
        Adjusted::WouldGoNegative { balance } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "insufficient_points",
            format!(
                "the balance is {balance}; {} points would take it below zero; nothing changed",
                req.points
            ),
        )),
        Adjusted::Conflict {
            openid: first,
            points,
        } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "adjustment_conflict",
            format!(
                "reference {} was applied before to member {first} with {points} points; \
                 nothing changed",
                req.reference
            ),
        )),
    }
}

/// A car entering or leaving the mall.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParkingBody {
    /// The member.
    pub openid: String,
    /// Plate number, e.g. `粤B888888`.
    pub plate_number: String,
    /// `IN` or `OUT`.
    pub state: String,
    /// When, RFC 3339 (`2026-12-01T10:43:39+08:00`).
    pub time: String,
    /// Mini-program appid (default: `wechatpay.appids[0]`, else her latest payment's).
    pub appid: Option<String>,
    /// 品牌ID (default: `wechatpay.brandid`).
    pub brandid: Option<i64>,
}

/// A parking event accepted for relay.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParkingAccepted {
    /// Its id (`GET /v1/parkings/{id}`).
    pub id: i64,
    /// True when this key was accepted before (this is that event).
    pub duplicate: bool,
}

/// Stores a parking event and relays it to WeChat (`POST /v3/businesscircle/parkings`) through
/// the outbox: answered before anything is sent, idempotent on `Idempotency-Key` (or on openid,
/// plate, state and time).
#[utoipa::path(post, path = "/v1/parkings",
    request_body = ParkingBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "The caller's key for this event (1–128 characters)")),
    responses(
        (status = 202, body = ParkingAccepted, description = "Stored; relayed to WeChat in the background"),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError),
        (status = 409, body = ApiError, description = "`idempotency_conflict`: the key was used for another event"),
        (status = 413, body = ApiError),
    ))]
pub async fn post_parking<S: Store>(
    State(api): State<Arc<MallApi<S>>>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let p: ParkingBody = json(&headers, raw, api.body_limit).await?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::field(
                "invalid_field",
                "Idempotency-Key",
                "`Idempotency-Key` must be visible ASCII",
            )
        })?),
        None => None,
    };
    let accepted = accept_parking(&api, p, key).await?;
    let id = accepted.id;
    let mut res = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    if let Ok(v) = http::HeaderValue::from_str(&format!("/v1/parkings/{id}")) {
        res.headers_mut().insert(http::header::LOCATION, v);
    }
    Ok(res)
}

/// Checks a parking event, fills its defaults, stores it and enqueues its relay (the API and
/// `pointsync parking`).
pub async fn accept_parking<S: Store>(
    api: &MallApi<S>,
    p: ParkingBody,
    idempotency_key: Option<&str>,
) -> Result<ParkingAccepted, ApiError> {
    body::openid("openid", &p.openid)?;
    body::text("plate_number", &p.plate_number, 1, 32)?;
    if !matches!(p.state.as_str(), "IN" | "OUT") {
        return Err(ApiError::field(
            "invalid_field",
            "state",
            format!("`state` must be IN or OUT, not `{}`", p.state),
        ));
    }
    let key = match idempotency_key {
        Some(k) => {
            body::text("Idempotency-Key", k, 1, 128)?;
            format!("key:{k}")
        }
        None => NewParking::natural_key(&p.openid, &p.plate_number, &p.state, &p.time),
    };
    let now = api.clock.now_ms();
    let appid = match p.appid.or_else(|| api.appid.clone()) {
        Some(a) => a,
        None => api
            .store
            .member_summary(&p.openid, now)
            .await
            .map_err(|e| ApiError::store(&e))?
            .and_then(|m| m.appid)
            .ok_or_else(|| {
                ApiError::field(
                    "missing_field",
                    "appid",
                    "no `appid` given, none configured (wechatpay.appids) and the member has no \
                     payment to take it from",
                )
            })?,
    };
    let brandid = p.brandid.or(api.brandid).ok_or_else(|| {
        ApiError::field(
            "missing_field",
            "brandid",
            "no `brandid` given and none configured (wechatpay.brandid)",
        )
    })?;
    let parking = NewParking {
        idempotency_key: key,
        openid: p.openid,
        plate_number: p.plate_number,
        state: p.state,
        time: p.time,
        appid,
        brandid,
        sub_mchid: None,
    };
    let request = parking_request(&parking, now)
        .map_err(|e| ApiError::field("invalid_field", &e.field, e.to_string()))?;
    let stored = api
        .store
        .enqueue_parking(&parking, &request)
        .await
        .map_err(|e| ApiError::store(&e))?;
    match stored {
        ParkingEnqueued::Created(id) => {
            api.wake.notify_one();
            Ok(ParkingAccepted {
                id,
                duplicate: false,
            })
        }
        ParkingEnqueued::Existing(id) => Ok(ParkingAccepted {
            id,
            duplicate: true,
        }),
        ParkingEnqueued::Conflict(id) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            format!(
                "this idempotency key was used for parking {id}, a different event; nothing \
                 stored"
            ),
        )),
    }
}

/// A parking event and its relay to WeChat.
#[utoipa::path(get, path = "/v1/parkings/{id}",
    params(("id" = i64, Path, description = "The id `POST /v1/parkings` answered")),
    responses(
        (status = 200, body = ParkingView),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
    ))]
pub async fn get_parking<S: Store>(
    State(api): State<Arc<MallApi<S>>>,
    Path(id): Path<String>,
) -> Result<Json<ParkingView>, ApiError> {
    let id =
        id.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::field("invalid_field", "id", "`id` must be a positive integer")
        })?;
    api.store
        .parking(id)
        .await
        .map_err(|e| ApiError::store(&e))?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "parking_not_found",
                format!("no parking event {id}"),
            )
        })
}
