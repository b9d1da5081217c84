//! Parking relay: a car entering or leaving the mall, reported by the car park, relayed to WeChat
//! (`POST /v3/businesscircle/parkings`) through the outbox like a points sync.

use wechatpay::businesscircle::{ParkingRequest, ParkingState};

use super::OutboxRow;

/// A parking event to relay, with the defaults (appid, brandid, sub_mchid) already filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewParking {
    /// The caller's idempotency key (or one made of the event's fields when none was given).
    pub idempotency_key: String,
    /// Member.
    pub openid: String,
    /// Plate number.
    pub plate_number: String,
    /// `IN` or `OUT`.
    pub state: String,
    /// When, RFC 3339.
    pub time: String,
    /// Mini-program appid.
    pub appid: String,
    /// 品牌ID.
    pub brandid: i64,
    /// Partner mode: the mall merchant.
    pub sub_mchid: Option<String>,
}

impl NewParking {
    /// The key used when the caller sends no `Idempotency-Key`: the event itself.
    pub fn natural_key(openid: &str, plate_number: &str, state: &str, time: &str) -> String {
        format!("event:{openid}|{plate_number}|{state}|{time}")
    }

    /// Whether `other` is the same event (a repeat of the same key must carry the same fields).
    pub fn same_event(&self, other: &NewParking) -> bool {
        (
            &self.openid,
            &self.plate_number,
            &self.state,
            &self.time,
            &self.appid,
            self.brandid,
            &self.sub_mchid,
        ) == (
            &other.openid,
            &other.plate_number,
            &other.state,
            &other.time,
            &other.appid,
            other.brandid,
            &other.sub_mchid,
        )
    }
}

/// A parking event WeChat would refuse: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ParkingError {
    /// The field.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// The request relayed for a parking event, checked field by field as WeChat checks it. Its
/// outbox row is keyed `parking:{id}` once the parking row has its id.
pub fn parking_request(p: &NewParking, now_ms: i64) -> Result<OutboxRow, ParkingError> {
    if let Some((i, c)) = p
        .plate_number
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control())
    {
        return Err(ParkingError {
            field: "plate_number".into(),
            reason: format!(
                "character {} (U+{:04X}) is a control character",
                i + 1,
                c as u32
            ),
        });
    }
    let mut req = ParkingRequest::new(
        p.brandid,
        &p.appid,
        &p.openid,
        &p.plate_number,
        ParkingState::from(p.state.clone()),
        &p.time,
    );
    if let Some(s) = &p.sub_mchid {
        req = req.sub_mchid(s);
    }
    let raw = req.to_request().map_err(|e| match e {
        wechatpay::Error::Validation(v) => ParkingError {
            field: v.field.to_string(),
            reason: v.reason,
        },
        other => ParkingError {
            field: "request".into(),
            reason: other.to_string(),
        },
    })?;
    Ok(OutboxRow {
        transaction_id: String::new(),
        method: raw.method.to_string(),
        path: raw.path_and_query,
        body: String::from_utf8_lossy(&raw.body).into_owned(),
        invalid: None,
        created_at: now_ms,
    })
}

/// The outbox key of parking row `id`.
pub fn parking_sync_key(id: i64) -> String {
    format!("parking:{id}")
}
