//! The operator console, on the admin listener: overview (activity chart, backlog, oldest pending,
//! verification failures, last errors), parked syncs with a retry button, a member page with an
//! adjustment form, recent callbacks. Server-rendered HTML (`pages.rs`); POST actions carry a
//! per-process token and are refused from another site.

mod pages;

use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::receiver::Receiver;
use crate::store::{Adjusted, Adjustment, Store};

fn html(m: maud::Markup) -> Response {
    Html(m.into_string()).into_response()
}

fn refused(status: StatusCode, why: &str) -> Response {
    (status, html(pages::message("refused", why))).into_response()
}

/// Whether a POST comes from the console itself: the form's token, and not from another site.
fn same_site(r: &Receiver<impl Store>, headers: &HeaderMap, csrf: &str) -> bool {
    let cross = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site");
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok());
    let origin_ok = match (
        headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok()),
        host,
    ) {
        (Some(origin), Some(host)) => origin.ends_with(&format!("//{host}")),
        (Some(_), None) => false,
        (None, _) => true,
    };
    let token_ok =
        aws_lc_rs::constant_time::verify_slices_are_equal(csrf.as_bytes(), r.csrf.as_bytes())
            .is_ok();
    !cross && origin_ok && token_ok
}

fn cross_site() -> Response {
    refused(
        StatusCode::FORBIDDEN,
        "this form must be sent from the console itself",
    )
}

async fn overview<S: Store>(State(r): State<Arc<Receiver<S>>>) -> Response {
    let now = r.clock.now_ms();
    let status = match r.store.status().await {
        Ok(s) => s,
        Err(e) => return refused(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let chart = chart_markup(&r).await;
    let mut failures: Vec<(String, u64)> =
        prometheus::core::Collector::collect(&r.metrics.verification_failures)
            .iter()
            .flat_map(|f| f.get_metric().to_vec())
            .map(|m| {
                let cause = m
                    .get_label()
                    .first()
                    .map(|l| l.value().to_string())
                    .unwrap_or_default();
                (cause, m.get_counter().get_value() as u64)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
    failures.sort();
    let trusted: Vec<pages::TrustedRow> = r.parser.trust_store().expiries();
    html(pages::overview(
        &status,
        chart,
        &failures,
        &r.recent_errors.all(),
        &trusted,
        now,
    ))
}

async fn chart_markup<S: Store>(r: &Receiver<S>) -> maud::Markup {
    let now = r.clock.now_ms();
    let minutes = r.store.activity(now - 3_600_000).await.unwrap_or_default();
    pages::chart(&minutes, now.div_euclid(60_000))
}

async fn chart<S: Store>(State(r): State<Arc<Receiver<S>>>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "image/svg+xml")],
        chart_markup(&r).await.into_string(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Notice {
    notice: Option<String>,
}

async fn parked<S: Store>(State(r): State<Arc<Receiver<S>>>, Query(q): Query<Notice>) -> Response {
    match r.store.status().await {
        Ok(s) => html(pages::parked(&s.parked, &r.csrf, q.notice.as_deref())),
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn retry<S: Store>(
    State(r): State<Arc<Receiver<S>>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !same_site(&r, &headers, &f.csrf) {
        return cross_site();
    }
    let notice = match r.store.retry_parked(&[id], r.clock.now_ms()).await {
        Ok(1) => format!("sync #{id} re-queued"),
        Ok(_) => format!("sync #{id} is not parked; nothing re-queued"),
        Err(e) => format!("cannot re-queue #{id}: {e}"),
    };
    Redirect::to(&format!("/parked?notice={}", urlencode(&notice))).into_response()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Deserialize)]
struct Search {
    openid: Option<String>,
}

async fn search(Query(q): Query<Search>) -> Response {
    match q
        .openid
        .map(|o| o.trim().to_string())
        .filter(|o| !o.is_empty())
    {
        Some(openid) => Redirect::to(&format!("/members/{}", urlencode(&openid))).into_response(),
        None => Redirect::to("/").into_response(),
    }
}

async fn member<S: Store>(
    State(r): State<Arc<Receiver<S>>>,
    Path(openid): Path<String>,
    Query(q): Query<Notice>,
) -> Response {
    match r.store.member(&openid).await {
        Ok(Some(m)) => html(pages::member(&m, &r.csrf, q.notice.as_deref())),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            html(pages::message(
                "no such member",
                &format!("no member {openid}"),
            )),
        )
            .into_response(),
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct AdjustForm {
    csrf: String,
    points: i64,
    reference: String,
    #[serde(default)]
    reason: String,
}

async fn adjust<S: Store>(
    State(r): State<Arc<Receiver<S>>>,
    Path(openid): Path<String>,
    headers: HeaderMap,
    Form(f): Form<AdjustForm>,
) -> Response {
    if !same_site(&r, &headers, &f.csrf) {
        return cross_site();
    }
    let a = Adjustment {
        openid: openid.clone(),
        points: f.points,
        reference: f.reference.trim().to_string(),
        reason: f.reason,
    };
    if a.reference.is_empty() {
        return refused(StatusCode::BAD_REQUEST, "an adjustment needs a reference");
    }
    let notice = match r
        .store
        .adjust(&a, r.rules.allow_negative_balance, r.clock.now_ms())
        .await
    {
        Ok(Adjusted::Applied { balance }) => {
            format!(
                "{:+} applied ({}); balance {balance}",
                a.points, a.reference
            )
        }
        Ok(Adjusted::Duplicate { balance }) => {
            format!(
                "{} was applied before; nothing changed; balance {balance}",
                a.reference
            )
        }
        Ok(Adjusted::WouldGoNegative { balance }) => format!(
            "refused: balance {balance}; {:+} would make it negative; nothing changed",
            a.points
        ),
        Ok(Adjusted::Conflict { openid, points }) => format!(
            "refused: {} was applied before as {points:+} to {openid}; nothing changed",
            a.reference
        ),
        Ok(Adjusted::UnknownMember) => format!("no member {openid}; nothing changed"),
        Err(e) => format!("cannot adjust: {e}"),
    };
    Redirect::to(&format!(
        "/members/{}?notice={}",
        urlencode(&openid),
        urlencode(&notice)
    ))
    .into_response()
}

async fn callbacks<S: Store>(State(r): State<Arc<Receiver<S>>>) -> Response {
    match r.store.recent_callbacks(100).await {
        Ok(rows) => html(pages::callbacks(&rows)),
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// The console's routes.
pub fn routes<S: Store>() -> Router<Arc<Receiver<S>>> {
    Router::new()
        .route("/", get(overview::<S>))
        .route("/chart.svg", get(chart::<S>))
        .route("/parked", get(parked::<S>))
        .route("/parked/{id}/retry", post(retry::<S>))
        .route("/members", get(search))
        .route("/members/{openid}", get(member::<S>))
        .route("/members/{openid}/adjust", post(adjust::<S>))
        .route("/callbacks", get(callbacks::<S>))
}
