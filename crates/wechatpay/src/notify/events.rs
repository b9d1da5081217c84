//! The typed 智慧商圈 events carried by callbacks.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `MALL_TRANSACTION.SUCCESS`.
pub const MALL_TRANSACTION_SUCCESS: &str = "MALL_TRANSACTION.SUCCESS";
/// `MALL_REFUND.SUCCESS`.
pub const MALL_REFUND_SUCCESS: &str = "MALL_REFUND.SUCCESS";
/// `MALL_AUTH.ACTIVATE_CARD`.
pub const MALL_AUTH_ACTIVATE_CARD: &str = "MALL_AUTH.ACTIVATE_CARD";

/// `MALL_TRANSACTION.SUCCESS`: a member paid in a mall store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MallTransaction {
    /// Merchant no.
    pub mchid: String,
    /// Mall merchant name.
    #[serde(default)]
    pub merchant_name: String,
    /// Store name.
    #[serde(default)]
    pub shop_name: String,
    /// Store number (align with the mall's own store ids).
    #[serde(default)]
    pub shop_number: String,
    /// Mini-program appid.
    pub appid: String,
    /// Member openid.
    pub openid: String,
    /// Payment completion time, RFC 3339.
    #[serde(default)]
    pub time_end: String,
    /// Amount paid, in fen (分).
    pub amount: i64,
    /// WeChat order no. — the key of the points sync.
    pub transaction_id: String,
    /// Present when the push results from the member's manual points application.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub commit_tag: Option<String>,
    /// Fields this SDK does not know, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `MALL_REFUND.SUCCESS`: a synced payment was (partly) refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MallRefund {
    /// Merchant no.
    pub mchid: String,
    /// Mall merchant name.
    #[serde(default)]
    pub merchant_name: String,
    /// Store name.
    #[serde(default)]
    pub shop_name: String,
    /// Store number.
    #[serde(default)]
    pub shop_number: String,
    /// Mini-program appid.
    pub appid: String,
    /// Member openid.
    pub openid: String,
    /// Refund completion time, RFC 3339.
    #[serde(default)]
    pub refund_time: String,
    /// Original amount paid, fen.
    pub pay_amount: i64,
    /// Amount refunded, fen.
    pub refund_amount: i64,
    /// WeChat order no.
    pub transaction_id: String,
    /// WeChat refund no. — the key of a refund.
    pub refund_id: String,
    /// Fields this SDK does not know, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

crate::businesscircle_open_enum!(
    /// How the member opened the card.
    AuthType {
        /// Card opened, points service **not** authorized.
        RegisteredMode = "REGISTERED_MODE",
        /// Card opened and points service authorized.
        RegisteredAndAuthorizationMode = "REGISTERED_AND_AUTHORIZATION_MODE",
    }
);

/// `MALL_AUTH.ACTIVATE_CARD`: a member opened the mall card / authorized points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MallAuth {
    /// Member openid.
    pub openid: String,
    /// The member's card code.
    #[serde(default)]
    pub code: String,
    /// Mall merchant no.
    pub mchid: String,
    /// Registration mode.
    pub auth_type: AuthType,
    /// Fields this SDK does not know, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A decrypted callback resource, typed by `event_type`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// `MALL_TRANSACTION.SUCCESS`.
    MallTransaction(MallTransaction),
    /// `MALL_REFUND.SUCCESS`.
    MallRefund(MallRefund),
    /// `MALL_AUTH.ACTIVATE_CARD`.
    MallAuth(MallAuth),
    /// Any other event type, with its decrypted JSON, so new WeChat events never break a receiver.
    Other {
        /// The event type.
        event_type: String,
        /// The decrypted resource.
        resource: Value,
    },
}

impl Event {
    /// The `event_type` of this event.
    pub fn event_type(&self) -> &str {
        match self {
            Self::MallTransaction(_) => MALL_TRANSACTION_SUCCESS,
            Self::MallRefund(_) => MALL_REFUND_SUCCESS,
            Self::MallAuth(_) => MALL_AUTH_ACTIVATE_CARD,
            Self::Other { event_type, .. } => event_type,
        }
    }

    /// The resource as JSON (what WeChat encrypts).
    pub fn to_resource_json(&self) -> Vec<u8> {
        match self {
            Self::MallTransaction(t) => serde_json::to_vec(t),
            Self::MallRefund(r) => serde_json::to_vec(r),
            Self::MallAuth(a) => serde_json::to_vec(a),
            Self::Other { resource, .. } => serde_json::to_vec(resource),
        }
        .unwrap_or_default()
    }

    /// The `resource.original_type` WeChat uses for this event.
    pub fn original_type(&self) -> &'static str {
        match self {
            Self::MallTransaction(_) => "mall_transaction",
            Self::MallRefund(_) => "mall_refund",
            Self::MallAuth(_) => "mall_auth",
            Self::Other { .. } => "",
        }
    }

    /// Decodes a decrypted resource by event type; a failure names the JSON path.
    pub fn decode(event_type: &str, plaintext: &[u8]) -> Result<Self, String> {
        fn typed<T: serde::de::DeserializeOwned>(p: &[u8]) -> Result<T, String> {
            let de = &mut serde_json::Deserializer::from_slice(p);
            serde_path_to_error::deserialize(de)
                .map_err(|e| format!("at `{}`: {}", e.path(), e.inner()))
        }
        Ok(match event_type {
            MALL_TRANSACTION_SUCCESS => Self::MallTransaction(typed(plaintext)?),
            MALL_REFUND_SUCCESS => Self::MallRefund(typed(plaintext)?),
            MALL_AUTH_ACTIVATE_CARD => Self::MallAuth(typed(plaintext)?),
            other => Self::Other {
                event_type: other.to_string(),
                resource: typed(plaintext)?,
            },
        })
    }
}
