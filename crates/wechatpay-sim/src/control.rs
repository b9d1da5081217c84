//! The control API: create members, payments and refunds; read what was synced; counters, faults,
//! options, reset. The same operations are functions here over the shared state, and methods of
//! [`crate::Simulator`].
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /sim/members` | `{"openid"?, "appid"?, "authorized"?: true, "push"?: true}` | the member |
//! | `PUT /sim/members/{openid}/authorization` | `{"authorized": bool, "push"?: true}` | the member (`DEAUTHORIZED` when false) |
//! | `POST /sim/payments` | `{"openid", "amount", "shop_number"?, "sub_mchid"?}` | the transaction |
//! | `POST /sim/payments/{transaction_id}/manual` | — | `{"id"}` (new notification id, with `commit_tag`) |
//! | `POST /sim/refunds` | `{"transaction_id", "refund_amount"}` | `{"refund_id", "id"}` |
//! | `POST /sim/generate` | `{"count", "seed", "members"?, "rate_per_sec"?, …}` | `{"members", "payments"}` (runs in the background) |
//! | `GET /sim/transactions/{id}/syncs` | — | every points-notify call for it |
//! | `GET /sim/syncs` | — | every points-notify call |
//! | `GET /sim/parkings` | — | every accepted parking call's fields |
//! | `GET /sim/members/{openid}` | — | `{"member", "synced_points"}` |
//! | `GET /sim/deliveries` | — | callbacks and their attempts |
//! | `GET /sim/counters` | — | counters |
//! | `GET /sim/ack-latency` | — | `{"count", "p50_ms", "p99_ms", "max_ms"}`: receiver acknowledgement time |
//! | `GET`/`PUT /sim/faults` | `{"rules": [...], "qps_limit"?}` | the fault config |
//! | `GET`/`PUT /sim/options` | options | the options |
//! | `POST /sim/reset` | — | clears state, faults and counters |

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wechatpay::notify::{AuthType, Event, MallAuth, MallRefund, MallTransaction};
use wechatpay::testing::rfc3339;

use crate::faults::FaultConfig;
use crate::options::SimOptions;
use crate::push;
use crate::shared::Shared;
use crate::state::{Member, Transaction};

/// A control-API failure (unknown member, bad amount…).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(pub String);

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({"error": self.0}))).into_response()
    }
}

/// A new member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewMember {
    /// Openid (generated if absent).
    #[serde(default)]
    pub openid: Option<String>,
    /// Appid (the sandbox's first if absent).
    #[serde(default)]
    pub appid: Option<String>,
    /// Authorized for points (default true).
    #[serde(default = "yes")]
    pub authorized: bool,
    /// Push a `MALL_AUTH.ACTIVATE_CARD` callback (default true).
    #[serde(default = "yes")]
    pub push: bool,
}

fn yes() -> bool {
    true
}

impl Default for NewMember {
    /// A generated openid on the first appid, authorized, with its callback pushed.
    fn default() -> Self {
        Self {
            openid: None,
            appid: None,
            authorized: true,
            push: true,
        }
    }
}

/// A new payment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewPayment {
    /// The paying member.
    pub openid: String,
    /// Amount in fen.
    pub amount: i64,
    /// Store number (a default store if absent).
    #[serde(default)]
    pub shop_number: Option<String>,
    /// Partner mode: the mall's sub-merchant.
    #[serde(default)]
    pub sub_mchid: Option<String>,
}

/// A generated stream of payments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateSpec {
    /// Payments to generate.
    pub count: usize,
    /// RNG seed.
    #[serde(default)]
    pub seed: u64,
    /// Members to create first.
    #[serde(default = "default_members")]
    pub members: usize,
    /// Payments per second (`None`: as fast as possible).
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
    /// Share of payments later refunded (partly or fully).
    #[serde(default)]
    pub refund_share: f64,
    /// Share of payments followed by a manual points application (new notification id).
    #[serde(default)]
    pub manual_share: f64,
}

fn default_members() -> usize {
    20
}

/// Stores: (number, name).
pub const STORES: [(&str, &str); 6] = [
    ("S001", "星巴克（沙盒店）"),
    ("S002", "优衣库"),
    ("S003", "海底捞火锅"),
    ("S004", "苹果授权店"),
    ("S005", "屈臣氏"),
    ("S006", "万达影城"),
];

/// Creates a member (and pushes the authorization callback).
pub fn add_member(sim: &Arc<Shared>, m: NewMember) -> Result<Member, ControlError> {
    let now = sim.clock.now();
    let appid = m
        .appid
        .unwrap_or_else(|| sim.sandbox.info.appids[0].clone());
    let member = {
        let mut s = sim.state.lock().unwrap_or_else(|p| p.into_inner());
        let openid = m
            .openid
            .unwrap_or_else(|| format!("o{}", wechatpay::crypto::random_token(27)));
        let member = Member {
            code: s.next_id("")[8..].to_string(),
            openid: openid.clone(),
            appid,
            authorize_state: if m.authorized {
                "AUTHORIZED"
            } else {
                "UNAUTHORIZED"
            }
            .into(),
            authorize_time: m.authorized.then(|| rfc3339(now)),
            deauthorize_time: None,
        };
        s.members.insert(openid, member.clone());
        member
    };
    if m.push {
        push_auth(sim, &member, m.authorized);
    }
    Ok(member)
}

fn push_auth(sim: &Arc<Shared>, member: &Member, authorized: bool) {
    let event = Event::MallAuth(MallAuth {
        openid: member.openid.clone(),
        code: member.code.clone(),
        mchid: sim.sandbox.info.mchid.clone(),
        auth_type: if authorized {
            AuthType::RegisteredAndAuthorizationMode
        } else {
            AuthType::RegisteredMode
        },
        extra: Default::default(),
    });
    push::push(sim, event, member.openid.clone());
}

/// Authorizes a member for points (pushing `MALL_AUTH.ACTIVATE_CARD` when `push`), or revokes
/// the authorization (`DEAUTHORIZED`; WeChat sends no callback for that).
pub fn set_authorization(
    sim: &Arc<Shared>,
    openid: &str,
    authorized: bool,
    push: bool,
) -> Result<Member, ControlError> {
    let now = sim.clock.now();
    let member = {
        let mut s = sim.state.lock().unwrap_or_else(|p| p.into_inner());
        let m = s
            .members
            .get_mut(openid)
            .ok_or_else(|| ControlError(format!("no member {openid}")))?;
        if authorized {
            m.authorize_state = "AUTHORIZED".into();
            m.authorize_time = Some(rfc3339(now));
            m.deauthorize_time = None;
        } else {
            m.authorize_state = "DEAUTHORIZED".into();
            m.deauthorize_time = Some(rfc3339(now));
        }
        m.clone()
    };
    if authorized && push {
        push_auth(sim, &member, true);
    }
    Ok(member)
}

/// Creates a payment by a member and pushes `MALL_TRANSACTION.SUCCESS`.
pub fn pay(sim: &Arc<Shared>, p: NewPayment) -> Result<Transaction, ControlError> {
    if p.amount <= 0 {
        return Err(ControlError(format!(
            "amount must be positive fen, got {}",
            p.amount
        )));
    }
    let now = sim.clock.now();
    let tx = {
        let mut s = sim.state.lock().unwrap_or_else(|e| e.into_inner());
        let member = s
            .members
            .get(&p.openid)
            .cloned()
            .ok_or_else(|| ControlError(format!("no member {}", p.openid)))?;
        let shop_number = p.shop_number.unwrap_or_else(|| STORES[0].0.to_string());
        let shop_name = STORES
            .iter()
            .find(|(n, _)| *n == shop_number)
            .map(|(_, name)| name.to_string())
            .unwrap_or_else(|| format!("门店{shop_number}"));
        let tx = Transaction {
            transaction_id: s.next_id(""),
            openid: member.openid,
            appid: member.appid,
            sub_mchid: p.sub_mchid,
            shop_number,
            shop_name,
            amount: p.amount,
            time_end: rfc3339(now),
            refunded: 0,
            created_at: now,
        };
        s.transactions.insert(tx.transaction_id.clone(), tx.clone());
        tx
    };
    push::push(
        sim,
        transaction_event(sim, &tx, None),
        tx.transaction_id.clone(),
    );
    Ok(tx)
}

fn transaction_event(sim: &Shared, tx: &Transaction, commit_tag: Option<String>) -> Event {
    Event::MallTransaction(MallTransaction {
        mchid: sim.sandbox.info.mchid.clone(),
        merchant_name: sim.sandbox.info.merchant_name.clone(),
        shop_name: tx.shop_name.clone(),
        shop_number: tx.shop_number.clone(),
        appid: tx.appid.clone(),
        openid: tx.openid.clone(),
        time_end: tx.time_end.clone(),
        amount: tx.amount,
        transaction_id: tx.transaction_id.clone(),
        commit_tag,
        extra: Default::default(),
    })
}

/// Re-pushes a transaction as after a manual points application: same transaction, new
/// notification id, with `commit_tag`.
pub fn manual_apply(sim: &Arc<Shared>, transaction_id: &str) -> Result<String, ControlError> {
    let tx = sim
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .transactions
        .get(transaction_id)
        .cloned()
        .ok_or_else(|| ControlError(format!("no transaction {transaction_id}")))?;
    let tag = format!("MANUAL{}", wechatpay::crypto::random_token(10));
    Ok(push::push(
        sim,
        transaction_event(sim, &tx, Some(tag)),
        tx.transaction_id.clone(),
    ))
}

/// Refunds part or all of a payment and pushes `MALL_REFUND.SUCCESS`. Returns (refund_id, notification id).
pub fn refund(
    sim: &Arc<Shared>,
    transaction_id: &str,
    refund_amount: i64,
) -> Result<(String, String), ControlError> {
    let now = sim.clock.now();
    let (tx, refund_id) = {
        let mut s = sim.state.lock().unwrap_or_else(|p| p.into_inner());
        let refund_id = s.next_id("50");
        let tx = s
            .transactions
            .get_mut(transaction_id)
            .ok_or_else(|| ControlError(format!("no transaction {transaction_id}")))?;
        if refund_amount <= 0 || tx.refunded + refund_amount > tx.amount {
            return Err(ControlError(format!(
                "refund of {refund_amount} fen is not within the {} fen still refundable",
                tx.amount - tx.refunded
            )));
        }
        tx.refunded += refund_amount;
        (tx.clone(), refund_id)
    };
    let event = Event::MallRefund(MallRefund {
        mchid: sim.sandbox.info.mchid.clone(),
        merchant_name: sim.sandbox.info.merchant_name.clone(),
        shop_name: tx.shop_name.clone(),
        shop_number: tx.shop_number.clone(),
        appid: tx.appid.clone(),
        openid: tx.openid.clone(),
        refund_time: rfc3339(now),
        pay_amount: tx.amount,
        refund_amount,
        transaction_id: tx.transaction_id.clone(),
        refund_id: refund_id.clone(),
        extra: Default::default(),
    });
    let id = push::push(sim, event, refund_id.clone());
    Ok((refund_id, id))
}

/// Generates members and a stream of payments (and some refunds and manual applications).
pub async fn generate(
    sim: &Arc<Shared>,
    spec: GenerateSpec,
) -> Result<Vec<Transaction>, ControlError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let mut members = Vec::new();
    // members authorize at the same pace as payments, not in one burst
    let gap = spec
        .rate_per_sec
        .filter(|r| *r > 0.0)
        .map(|r| std::time::Duration::from_secs_f64(1.0 / r));
    let paced = tokio::time::Instant::from_std(wechatpay::clock::monotonic());
    for i in 0..spec.members.max(1) {
        if let Some(gap) = gap {
            tokio::time::sleep_until(paced + gap * i as u32).await;
        }
        let m = add_member(
            sim,
            NewMember {
                openid: Some(format!("oSIM{:08}{:016x}", i, spec.seed)),
                appid: None,
                authorized: true,
                push: true,
            },
        )?;
        members.push(m.openid);
    }
    let mut out = Vec::with_capacity(spec.count);

    let start = tokio::time::Instant::from_std(wechatpay::clock::monotonic());
    for i in 0..spec.count {
        if let Some(gap) = gap {
            tokio::time::sleep_until(start + gap * i as u32).await;
        }
        let openid = members[rng.random_range(0..members.len())].clone();
        let amount = rng.random_range(100..50_000);
        let store = STORES[rng.random_range(0..STORES.len())].0.to_string();
        let tx = pay(
            sim,
            NewPayment {
                openid,
                amount,
                shop_number: Some(store),
                sub_mchid: None,
            },
        )?;
        if rng.random_bool(spec.manual_share.clamp(0.0, 1.0)) {
            manual_apply(sim, &tx.transaction_id)?;
        }
        if rng.random_bool(spec.refund_share.clamp(0.0, 1.0)) {
            let part = if rng.random_bool(0.5) {
                tx.amount
            } else {
                tx.amount / 3 + 1
            };
            refund(sim, &tx.transaction_id, part)?;
        }
        out.push(tx);
    }
    Ok(out)
}

async fn members(
    State(sim): State<Arc<Shared>>,
    Json(m): Json<NewMember>,
) -> Result<Json<Member>, ControlError> {
    add_member(&sim, m).map(Json)
}

#[derive(Deserialize)]
struct Authorization {
    authorized: bool,
    #[serde(default = "yes")]
    push: bool,
}

async fn authorization(
    State(sim): State<Arc<Shared>>,
    Path(openid): Path<String>,
    Json(a): Json<Authorization>,
) -> Result<Json<Member>, ControlError> {
    set_authorization(&sim, &openid, a.authorized, a.push).map(Json)
}

async fn payments(
    State(sim): State<Arc<Shared>>,
    Json(p): Json<NewPayment>,
) -> Result<Json<Transaction>, ControlError> {
    pay(&sim, p).map(Json)
}

async fn manual(
    State(sim): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ControlError> {
    manual_apply(&sim, &id).map(|id| Json(json!({ "id": id })))
}

#[derive(Deserialize)]
struct NewRefund {
    transaction_id: String,
    refund_amount: i64,
}

async fn refunds(
    State(sim): State<Arc<Shared>>,
    Json(r): Json<NewRefund>,
) -> Result<Json<Value>, ControlError> {
    refund(&sim, &r.transaction_id, r.refund_amount)
        .map(|(refund_id, id)| Json(json!({"refund_id": refund_id, "id": id})))
}

async fn generate_route(
    State(sim): State<Arc<Shared>>,
    Json(spec): Json<GenerateSpec>,
) -> Json<Value> {
    let (members, payments) = (spec.members, spec.count);
    tokio::spawn(async move {
        if let Err(e) = generate(&sim, spec).await {
            tracing::warn!("generate stopped: {e}");
        }
    });
    Json(json!({"members": members, "payments": payments}))
}

async fn tx_syncs(State(sim): State<Arc<Shared>>, Path(id): Path<String>) -> Json<Value> {
    let s = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    Json(json!(
        s.syncs
            .iter()
            .filter(|c| c.transaction_id == id)
            .collect::<Vec<_>>()
    ))
}

async fn all_syncs(State(sim): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(
        sim.state.lock().unwrap_or_else(|p| p.into_inner()).syncs
    ))
}

async fn all_parkings(State(sim): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(
        sim.state.lock().unwrap_or_else(|p| p.into_inner()).parkings
    ))
}

async fn member(
    State(sim): State<Arc<Shared>>,
    Path(openid): Path<String>,
) -> Result<Json<Value>, ControlError> {
    let s = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    let m = s
        .members
        .get(&openid)
        .ok_or_else(|| ControlError(format!("no member {openid}")))?;
    let synced = s.synced_points();
    let points: i64 = s
        .transactions
        .values()
        .filter(|t| t.openid == openid)
        .filter_map(|t| synced.get(&t.transaction_id))
        .sum();
    Ok(Json(json!({"member": m, "synced_points": points})))
}

async fn deliveries(State(sim): State<Arc<Shared>>) -> Json<Value> {
    let s = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    Json(json!(s.deliveries.values().collect::<Vec<_>>()))
}

async fn counters(State(sim): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(
        sim.state.lock().unwrap_or_else(|p| p.into_inner()).counters
    ))
}

async fn latency(State(sim): State<Arc<Shared>>) -> Json<crate::state::AckLatency> {
    Json(
        sim.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ack_latency(),
    )
}

async fn get_faults(State(sim): State<Arc<Shared>>) -> Json<FaultConfig> {
    Json(
        sim.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config
            .clone(),
    )
}

async fn put_faults(
    State(sim): State<Arc<Shared>>,
    Json(f): Json<FaultConfig>,
) -> Json<FaultConfig> {
    sim.faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .set(f.clone());
    Json(f)
}

async fn get_options(State(sim): State<Arc<Shared>>) -> Json<SimOptions> {
    Json(sim.opts())
}

async fn put_options(
    State(sim): State<Arc<Shared>>,
    Json(o): Json<SimOptions>,
) -> Json<SimOptions> {
    *sim.options.lock().unwrap_or_else(|p| p.into_inner()) = o.clone();
    Json(o)
}

async fn reset(State(sim): State<Arc<Shared>>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}

/// The `/sim` routes.
pub(crate) fn routes() -> axum::Router<Arc<Shared>> {
    axum::Router::new()
        .route("/sim/members", post(members))
        .route("/sim/members/{openid}", get(member))
        .route(
            "/sim/members/{openid}/authorization",
            axum::routing::put(authorization),
        )
        .route("/sim/payments", post(payments))
        .route("/sim/payments/{id}/manual", post(manual))
        .route("/sim/refunds", post(refunds))
        .route("/sim/generate", post(generate_route))
        .route("/sim/transactions/{id}/syncs", get(tx_syncs))
        .route("/sim/syncs", get(all_syncs))
        .route("/sim/parkings", get(all_parkings))
        .route("/sim/deliveries", get(deliveries))
        .route("/sim/counters", get(counters))
        .route("/sim/ack-latency", get(latency))
        .route("/sim/faults", get(get_faults).put(put_faults))
        .route("/sim/options", get(get_options).put(put_options))
        .route("/sim/reset", post(reset))
}
