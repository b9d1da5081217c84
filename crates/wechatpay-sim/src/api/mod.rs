//! The simulated WeChat Pay APIs: request checks as WeChat makes them, the four 智慧商圈 APIs and
//! `GET /v3/certificates`, and signed answers.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use wechatpay::businesscircle::{check_rfc3339, check_string};
use wechatpay::sign::{parse_authorization, request_sign_string};
use wechatpay::testing::{rfc3339, sign_response};

use crate::faults::{Endpoint, FaultKind, HANG};
use crate::sandbox::TrustMode;
use crate::shared::{ResetConnection, Shared};

mod reply;

use crate::state::SyncCall;
use reply::Reply;

/// The largest request body read.
const MAX_BODY: usize = 1 << 20;

fn classify(method: &Method, path: &str) -> Option<Endpoint> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["v3", "businesscircle", "points", "notify"]) => Some(Endpoint::PointsNotify),
        ("GET", ["v3", "businesscircle", "user-authorizations", _]) => {
            Some(Endpoint::UserAuthorizations)
        }
        (
            "GET",
            [
                "v3",
                "businesscircle",
                "users",
                _,
                "points",
                "commit_status",
            ],
        ) => Some(Endpoint::CommitStatus),
        ("POST", ["v3", "businesscircle", "parkings"]) => Some(Endpoint::Parkings),
        ("GET", ["v3", "certificates"]) => Some(Endpoint::Certificates),
        _ => None,
    }
}

/// The fallback handler serving every WeChat API path.
pub(crate) async fn wechat(State(sim): State<std::sync::Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = parts.uri.path().to_string();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let r = Reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PARAM_ERROR",
                "请求体过大",
                None,
            );
            return Api(&sim).respond(r, &parts.headers);
        }
    };
    let endpoint = classify(&parts.method, &path);
    let fault = {
        let mut s = sim.state.lock().unwrap_or_else(|p| p.into_inner());
        s.counters.requests += 1;
        let mut f = sim.faults.lock().unwrap_or_else(|p| p.into_inner());
        if f.rate_limited() {
            s.counters.rate_limited += 1;
            drop((s, f));
            let mut r = Reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                "FREQUENCY_LIMITED",
                "请求频率超过限制",
                None,
            );
            r.signed = false;
            return Api(&sim).respond(r, &parts.headers);
        }
        let roll: f64 = sim.roll();
        let fault = endpoint.and_then(|e| f.pick(e, roll));
        if fault.is_some() {
            s.counters.faults += 1;
        }
        fault
    };
    match fault {
        Some(FaultKind::TooManyRequests) => {
            return Api(&sim).respond(
                Reply::unsigned(
                    StatusCode::TOO_MANY_REQUESTS,
                    "FREQUENCY_LIMITED",
                    "请求频率超过限制",
                ),
                &parts.headers,
            );
        }
        Some(FaultKind::SystemError) => {
            return Api(&sim).respond(
                Reply::unsigned(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "SYSTEM_ERROR",
                    "系统错误",
                ),
                &parts.headers,
            );
        }
        Some(FaultKind::BadGateway) => {
            return Api(&sim).respond(Reply::gateway(StatusCode::BAD_GATEWAY), &parts.headers);
        }
        Some(FaultKind::ServiceUnavailable) => {
            return Api(&sim).respond(
                Reply::gateway(StatusCode::SERVICE_UNAVAILABLE),
                &parts.headers,
            );
        }
        Some(FaultKind::Latency { ms }) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await
        }
        Some(FaultKind::Hang) => {
            tokio::time::sleep(HANG).await;
            return Api(&sim).respond(Reply::gateway(StatusCode::GATEWAY_TIMEOUT), &parts.headers);
        }
        Some(FaultKind::Reset) => {
            let mut r = Response::new(Body::empty());
            r.extensions_mut().insert(ResetConnection);
            return r;
        }
        None => {}
    }
    let reply = Api(&sim).handle(
        endpoint,
        &parts.method,
        &target,
        &path,
        &parts.headers,
        &body,
    );
    Api(&sim).respond(reply, &parts.headers)
}

/// The WeChat endpoints' logic, over the shared state.
pub(crate) struct Api<'a>(pub(crate) &'a Shared);

impl Api<'_> {
    fn count(&self, status: StatusCode, code: &str) {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        match (status.as_u16(), code) {
            (401, _) => s.counters.sign_errors += 1,
            (400, "PARAM_ERROR" | "INVALID_REQUEST") => s.counters.param_errors += 1,
            _ => {}
        }
    }

    fn handle(
        &self,
        endpoint: Option<Endpoint>,
        method: &Method,
        target: &str,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Reply {
        if let Err(r) = self.check_request(method, target, headers, body) {
            return r;
        }
        let Some(endpoint) = endpoint else {
            return Reply::error(
                StatusCode::NOT_FOUND,
                "RESOURCE_NOT_EXISTS",
                "请求的资源不存在",
                None,
            );
        };
        let query: Vec<(String, String)> = target
            .split_once('?')
            .map(|(_, q)| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let segs: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        match endpoint {
            Endpoint::PointsNotify => self.points_notify(body),
            Endpoint::UserAuthorizations => {
                self.user_authorization(&segs[3], q("appid"), q("sub_mchid"))
            }
            Endpoint::CommitStatus => self.commit_status(&segs[3], q("appid"), q("brandid")),
            Endpoint::Parkings => self.parkings(body),
            Endpoint::Certificates => self.certificates(),
            Endpoint::Any => Reply::error(
                StatusCode::NOT_FOUND,
                "RESOURCE_NOT_EXISTS",
                "请求的资源不存在",
                None,
            ),
        }
    }

    /// Headers and signature, as WeChat checks them.
    fn check_request(
        &self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Reply> {
        let sign_error = |message: &str, detail: Option<Value>| {
            self.count(StatusCode::UNAUTHORIZED, "SIGN_ERROR");
            Reply::error(StatusCode::UNAUTHORIZED, "SIGN_ERROR", message, detail)
        };
        let Some(auth) = headers.get(header::AUTHORIZATION) else {
            return Err(sign_error("Http头缺少Authorization", None));
        };
        let p = parse_authorization(&String::from_utf8_lossy(auth.as_bytes()))
            .map_err(|e| sign_error(&format!("Http头Authorization值格式错误: {e}"), None))?;
        let info = &self.0.sandbox.info;
        if p.mchid != info.mchid {
            return Err(sign_error(&format!("商户号{}与证书不匹配", p.mchid), None));
        }
        if !p.serial_no.eq_ignore_ascii_case(&info.merchant_serial) {
            return Err(sign_error(
                &format!("商户证书序列号{}有误", p.serial_no),
                None,
            ));
        }
        let ts: i64 = p
            .timestamp
            .parse()
            .map_err(|_| sign_error("Authorization中的timestamp不是整数", None))?;
        if (self.0.clock.now() - ts).abs() > 300 {
            return Err(sign_error("签名时间戳与服务器时间相差超过5分钟", None));
        }
        let message = request_sign_string(method.as_str(), target, ts, &p.nonce_str, body);
        let sig = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            p.signature.as_bytes(),
        );
        let ok = sig
            .map(|s| self.0.sandbox.merchant_public.verify(&message, &s))
            .unwrap_or(false);
        if !ok {
            let full = String::from_utf8_lossy(&message).into_owned();
            let body_start = full.len() - body.len() - 1;
            let keep: String = full[body_start..]
                .chars()
                .take(self.0.opts().truncate_body_chars)
                .collect();
            let truncated = format!("{}{}\n", &full[..body_start], keep.trim_end_matches('\n'));
            return Err(sign_error(
                "错误的签名，验签失败",
                Some(json!({
                    "field": "signature", "issue": "sign not match", "location": "authorization",
                    "sign_information": {
                        "method": method.as_str(), "url": target,
                        "truncated_sign_message": truncated, "sign_message_length": message.len(),
                    }
                })),
            ));
        }
        for (h, name) in [
            (header::ACCEPT, "Accept"),
            (header::USER_AGENT, "User-Agent"),
        ] {
            if headers.get(&h).is_none_or(|v| v.is_empty()) {
                self.count(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    &format!("Http头缺少{name}"),
                    Some(json!({"field": name, "location": "header"})),
                ));
            }
        }
        Ok(())
    }

    fn param(&self, field: &str, issue: impl Into<String>) -> Reply {
        self.count(StatusCode::BAD_REQUEST, "PARAM_ERROR");
        Reply::param(field, issue)
    }

    fn business(&self, status: StatusCode, code: &str, message: &str) -> Reply {
        self.0
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counters
            .business_errors += 1;
        Reply::error(status, code, message, None)
    }

    fn parse_body(&self, body: &[u8]) -> Result<serde_json::Map<String, Value>, Reply> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(self.param("body", "请求体不是合法的JSON对象")),
        }
    }

    fn str_field(
        &self,
        m: &serde_json::Map<String, Value>,
        field: &'static str,
        max: usize,
        required: bool,
    ) -> Result<Option<String>, Reply> {
        match m.get(field) {
            None | Some(Value::Null) if required => Err(self.param(field, "缺少必填字段")),
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                check_string(field, s, 1, max).map_err(|e| self.param(field, e.reason))?;
                Ok(Some(s.clone()))
            }
            Some(_) => Err(self.param(field, "类型应为string")),
        }
    }

    fn int_field(
        &self,
        m: &serde_json::Map<String, Value>,
        field: &'static str,
        required: bool,
    ) -> Result<Option<i64>, Reply> {
        match m.get(field) {
            None | Some(Value::Null) if required => Err(self.param(field, "缺少必填字段")),
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.param(field, "类型应为integer")),
        }
    }

    fn points_notify(&self, body: &Bytes) -> Reply {
        let m = match self.parse_body(body) {
            Ok(m) => m,
            Err(r) => return r,
        };
        let checked = (|| {
            let sub_mchid = self.str_field(&m, "sub_mchid", 64, false)?;
            let transaction_id = self
                .str_field(&m, "transaction_id", 64, true)?
                .unwrap_or_default();
            let appid = self.str_field(&m, "appid", 128, true)?.unwrap_or_default();
            let openid = self.str_field(&m, "openid", 64, true)?.unwrap_or_default();
            match m.get("earn_points") {
                Some(Value::Bool(_)) => {}
                None | Some(Value::Null) => return Err(self.param("earn_points", "缺少必填字段")),
                Some(_) => return Err(self.param("earn_points", "类型应为boolean")),
            }
            self.int_field(&m, "increased_points", true)?;
            let t = self
                .str_field(&m, "points_update_time", 32, true)?
                .unwrap_or_default();
            check_rfc3339("points_update_time", &t)
                .map_err(|e| self.param("points_update_time", e.reason))?;
            self.str_field(&m, "no_points_remarks", 128, false)?;
            self.int_field(&m, "total_points", false)?;
            Ok::<_, Reply>((sub_mchid, transaction_id, appid, openid))
        })();
        let (sub_mchid, transaction_id, appid, openid) = match checked {
            Ok(v) => v,
            Err(r) => return r,
        };
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = s.transactions.get(&transaction_id).cloned() else {
            drop(s);
            let (status, code) = self.0.opts().unknown_transaction();
            return self.business(status, code, &format!("交易{transaction_id}不存在"));
        };
        if tx.openid != openid || tx.appid != appid || tx.sub_mchid != sub_mchid {
            drop(s);
            return self.business(
                StatusCode::BAD_REQUEST,
                "PARAM_ERROR",
                "openid、appid或sub_mchid与交易不匹配",
            );
        }
        let authorized = s
            .members
            .get(&openid)
            .is_some_and(|mb| mb.authorize_state == "AUTHORIZED");
        if self.0.opts().require_authorized && !authorized {
            drop(s);
            return self.business(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "用户未授权商圈积分服务",
            );
        }
        let text = String::from_utf8_lossy(body).into_owned();
        let conflicting = s
            .first_sync
            .get(&transaction_id)
            .is_some_and(|first| *first != text);
        let status = if conflicting && self.0.opts().reject_conflicting {
            400
        } else {
            204
        };
        let at = self.0.clock.now();
        s.syncs.push(SyncCall {
            at,
            transaction_id: transaction_id.clone(),
            body: text.clone(),
            status,
            conflicting,
        });
        if status == 204 {
            s.counters.points_accepted += 1;
            if conflicting {
                s.counters.conflicting_syncs += 1;
            }
            s.first_sync.entry(transaction_id).or_insert(text);
            Reply::no_content()
        } else {
            s.counters.business_errors += 1;
            Reply::error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "该交易已同步过不同的积分",
                None,
            )
        }
    }

    fn user_authorization(
        &self,
        openid: &str,
        appid: Option<String>,
        sub_mchid: Option<String>,
    ) -> Reply {
        let Some(appid) = appid else {
            return self.param("appid", "缺少必填参数");
        };
        if let Err(e) = check_string("appid", &appid, 1, 128) {
            return self.param("appid", e.reason);
        }
        if let Some(Err(e)) = sub_mchid
            .as_deref()
            .map(|s| check_string("sub_mchid", s, 1, 64))
        {
            return self.param("sub_mchid", e.reason);
        }
        let s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = json!({"openid": openid, "authorize_state": "UNAUTHORIZED"});
        if let Some(m) = s.members.get(openid).filter(|m| m.appid == appid) {
            v["authorize_state"] = json!(m.authorize_state);
            if let Some(t) = &m.authorize_time {
                v["authorize_time"] = json!(t);
            }
            if let Some(t) = &m.deauthorize_time {
                v["deauthorize_time"] = json!(t);
            }
        }
        Reply::json(v)
    }

    fn commit_status(&self, openid: &str, appid: Option<String>, brandid: Option<String>) -> Reply {
        if appid.is_none() {
            return self.param("appid", "缺少必填参数");
        }
        if brandid
            .as_deref()
            .and_then(|b| b.parse::<i64>().ok())
            .is_none()
        {
            return self.param("brandid", "缺少或不是整数");
        }
        let s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        let day = self.0.clock.now() - 86_400;
        // first_sync holds exactly the transactions with an accepted points sync
        let pending = s.transactions.values().any(|t| {
            t.openid == openid
                && t.created_at >= day
                && !s.first_sync.contains_key(&t.transaction_id)
        });
        if self.0.opts().commit_status_204 {
            return Reply::no_content();
        }
        Reply::json(json!({"points_commit_status": if pending { "PENDING" } else { "FINISHED" }}))
    }

    fn parkings(&self, body: &Bytes) -> Reply {
        let m = match self.parse_body(body) {
            Ok(m) => m,
            Err(r) => return r,
        };
        let checked = (|| {
            self.str_field(&m, "sub_mchid", 64, false)?;
            self.int_field(&m, "brandid", true)?;
            self.str_field(&m, "appid", 128, true)?;
            let openid = self.str_field(&m, "openid", 64, true)?;
            match self.str_field(&m, "state", 8, true)?.as_deref() {
                Some("IN" | "OUT") => {}
                _ => return Err(self.param("state", "取值应为IN或OUT")),
            }
            let plate = self
                .str_field(&m, "plate_number", 32, true)?
                .unwrap_or_default();
            if plate.chars().any(char::is_control) {
                return Err(self.param("plate_number", "含有控制字符"));
            }
            let t = self.str_field(&m, "time", 32, true)?.unwrap_or_default();
            check_rfc3339("time", &t).map_err(|e| self.param("time", e.reason))?;
            Ok(openid.unwrap_or_default())
        })();
        let openid = match checked {
            Ok(o) => o,
            Err(r) => return r,
        };
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        // [INFERRED] WeChat relates parking to the points service: an authorized member only
        let authorized = s
            .members
            .get(&openid)
            .is_some_and(|mb| mb.authorize_state == "AUTHORIZED");
        if !authorized {
            drop(s);
            return self.business(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "用户未授权商圈积分服务",
            );
        }
        s.parkings.push(Value::Object(m));
        Reply::no_content()
    }

    fn certificates(&self) -> Reply {
        if self.0.sandbox.info.mode == TrustMode::Pubkey {
            return Reply::error(
                StatusCode::NOT_FOUND,
                "RESOURCE_NOT_EXISTS",
                "无可用的平台证书，请在商户平台-API安全申请使用微信支付公钥",
                None,
            );
        }
        let nonce = wechatpay::crypto::random_token(12);
        let cipher = wechatpay::crypto::aead_encrypt(
            &self.0.sandbox.apiv3_key,
            &nonce,
            "certificate",
            self.0.sandbox.platform_cert_pem.as_bytes(),
        )
        .unwrap_or_default();
        let cert = wechatpay::trust::parse_certificate_pem(&self.0.sandbox.platform_cert_pem).ok();
        let (nb, na) = cert
            .map(|c| (c.not_before, c.not_after))
            .unwrap_or_default();
        Reply::json(json!({"data": [{
            "serial_no": self.0.sandbox.info.platform_serial,
            "effective_time": rfc3339(nb),
            "expire_time": rfc3339(na),
            "encrypt_certificate": {"algorithm": "AEAD_AES_256_GCM", "nonce": nonce, "associated_data": "certificate", "ciphertext": cipher}
        }]}))
    }

    /// Builds the HTTP answer, signing it as the trust mode says.
    pub(crate) fn respond(&self, reply: Reply, req_headers: &HeaderMap) -> Response {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&wechatpay::crypto::random_token(32)) {
            h.insert("request-id", v);
        }
        // WeChat's Date is WeChat's clock: the simulator's (which tests may set off)
        let now = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(self.0.clock.now().max(0) as u64);
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
            h.insert(header::DATE, v);
        }
        if !reply.body.is_empty() {
            let ct = if reply.signed || reply.status.as_u16() == 429 || reply.status.as_u16() == 500
            {
                "application/json"
            } else {
                "text/html"
            };
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        if reply.signed {
            let wants_pubkey = req_headers
                .get("wechatpay-serial")
                .is_some_and(|v| v.as_bytes().starts_with(b"PUB_KEY_ID_"));
            let use_pubkey = match self.0.sandbox.info.mode {
                TrustMode::Cert => false,
                TrustMode::Pubkey => true,
                TrustMode::Migrating => wants_pubkey,
            };
            let (key, serial) = if use_pubkey {
                (&self.0.sandbox.pubkey_key, &self.0.sandbox.info.pubkey_id)
            } else {
                (
                    &self.0.sandbox.platform_key,
                    &self.0.sandbox.info.platform_serial,
                )
            };
            let key = if self.0.opts().sign_with_wrong_key {
                &self.0.wrong_key
            } else {
                key
            };
            let nonce = wechatpay::crypto::random_token(32);
            h.extend(sign_response(
                key,
                serial,
                self.0.clock.now(),
                &nonce,
                &reply.body,
            ));
        }
        let mut res = Response::new(Body::from(reply.body));
        *res.status_mut() = reply.status;
        *res.headers_mut() = h;
        res
    }
}
