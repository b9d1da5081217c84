//! Test helpers (feature `test-util`): committed test-only keys, signed responses and correctly
//! signed and encrypted callbacks — for this crate's tests, the simulator, and anyone testing a
//! callback receiver. **Never use these keys for a real merchant.**

use http::{HeaderMap, HeaderValue};

use crate::crypto::{ApiV3Key, PrivateKey, aead_encrypt, random_token};
use crate::notify::Event;
use crate::sign::response_sign_string;

/// Test-only key material (also in `crates/wechatpay/testdata/`).
pub mod keys {
    /// A test merchant id.
    pub const MCHID: &str = "1900000001";
    /// Merchant private key, PKCS#8.
    pub const MERCHANT_KEY_PEM: &str = include_str!("../testdata/merchant_key.pem");
    /// The same key, PKCS#1.
    pub const MERCHANT_KEY_PKCS1_PEM: &str = include_str!("../testdata/merchant_key_pkcs1.pem");
    /// Merchant API certificate.
    pub const MERCHANT_CERT_PEM: &str = include_str!("../testdata/merchant_cert.pem");
    /// Its serial.
    pub const MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD5EE7FFFF";
    /// Platform private key (WeChat's side).
    pub const PLATFORM_KEY_PEM: &str = include_str!("../testdata/platform_key.pem");
    /// Platform certificate.
    pub const PLATFORM_CERT_PEM: &str = include_str!("../testdata/platform_cert.pem");
    /// Its serial.
    pub const PLATFORM_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232FE1AFF";
    /// WeChat Pay public-key-mode private key (WeChat's side).
    pub const PUBKEY_KEY_PEM: &str = include_str!("../testdata/pubkey_key.pem");
    /// WeChat Pay public key.
    pub const PUBKEY_PEM: &str = include_str!("../testdata/pubkey.pem");
    /// Its id.
    pub const PUBKEY_ID: &str = "PUB_KEY_ID_0114232134912410000000000000TEST";
    /// An unrelated key.
    pub const OTHER_KEY_PEM: &str = include_str!("../testdata/other_key.pem");
    /// A 1024-bit key (rejected).
    pub const WEAK_KEY_PEM: &str = include_str!("../testdata/weak_key.pem");
    /// The APIv3 key.
    pub const APIV3_KEY: &str = "TESTONLYapiv3key0123456789abcdef";
}

/// The `MALL_TRANSACTION.SUCCESS` resource of WeChat's documentation example.
pub fn example_transaction() -> crate::notify::MallTransaction {
    crate::notify::MallTransaction {
        mchid: "1230000109".into(),
        merchant_name: "腾讯广场".into(),
        shop_name: "微信支付".into(),
        shop_number: "123456".into(),
        appid: "wxd678efh567hg6787".into(),
        openid: "oUpF8uMuAJ2pxb1Q9zNjWUHsd".into(),
        time_end: "2020-05-20T13:29:35+08:00".into(),
        amount: 200,
        transaction_id: "1234567890".into(),
        commit_tag: None,
        extra: Default::default(),
    }
}

/// The `Wechatpay-*` headers of a response or callback signed by `key` under id `serial`.
pub fn sign_response(
    key: &PrivateKey,
    serial: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> HeaderMap {
    let signature = key.sign_base64(&response_sign_string(&timestamp.to_string(), nonce, body));
    signature_headers(serial, timestamp, nonce, &signature)
}

/// The `Wechatpay-*` headers with a given signature (e.g. a `WECHATPAY/SIGNTEST/` probe).
pub fn signature_headers(serial: &str, timestamp: i64, nonce: &str, signature: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put("wechatpay-timestamp", &timestamp.to_string());
    put("wechatpay-nonce", nonce);
    put("wechatpay-signature", signature);
    put("wechatpay-serial", serial);
    put("wechatpay-signature-type", crate::notify::SIGNATURE_TYPE);
    h
}

/// How to build one callback; every field has a sensible default.
#[derive(Debug, Clone)]
pub struct CallbackSpec {
    /// Notification id.
    pub id: String,
    /// Envelope `create_time`.
    pub create_time: String,
    /// Envelope `summary`.
    pub summary: String,
    /// `Wechatpay-Timestamp`.
    pub timestamp: i64,
    /// `Wechatpay-Nonce`.
    pub nonce: String,
    /// `resource.nonce` (12 characters).
    pub resource_nonce: String,
    /// `resource.associated_data`.
    pub associated_data: String,
    /// Replace the signature with a `WECHATPAY/SIGNTEST/` probe.
    pub probe: bool,
}

impl CallbackSpec {
    /// Defaults at Unix time `now`.
    pub fn at(now: i64) -> Self {
        Self {
            id: format!("EV-{}", random_token(20)),
            create_time: rfc3339(now),
            summary: String::new(),
            timestamp: now,
            nonce: random_token(32),
            resource_nonce: random_token(12),
            associated_data: String::new(),
            probe: false,
        }
    }
}

pub use crate::clock::rfc3339_china as rfc3339;

/// A signed, encrypted callback: headers and the exact body bytes.
#[derive(Debug, Clone)]
pub struct SignedCallback {
    /// Headers (`Wechatpay-*`, `Content-Type`, `Request-ID`).
    pub headers: HeaderMap,
    /// The body bytes that were signed.
    pub body: Vec<u8>,
}

/// Builds callbacks as WeChat does: encrypt the resource with the APIv3 key, sign the envelope.
#[derive(Debug)]
pub struct CallbackSigner {
    key: std::sync::Arc<PrivateKey>,
    serial: String,
    apiv3: ApiV3Key,
}

impl CallbackSigner {
    /// Signs with `key` under `serial` (certificate serial or `PUB_KEY_ID_…`), encrypts with `apiv3`.
    pub fn new(
        key: impl Into<std::sync::Arc<PrivateKey>>,
        serial: impl Into<String>,
        apiv3: ApiV3Key,
    ) -> Self {
        Self {
            key: key.into(),
            serial: serial.into(),
            apiv3,
        }
    }

    /// The test-only platform certificate signer with the test APIv3 key.
    pub fn test_platform() -> Self {
        Self::new(
            PrivateKey::from_pem(keys::PLATFORM_KEY_PEM).expect("test key"),
            keys::PLATFORM_SERIAL,
            ApiV3Key::new(keys::APIV3_KEY).expect("test key"),
        )
    }

    /// The test-only public-key-mode signer with the test APIv3 key.
    pub fn test_pubkey() -> Self {
        Self::new(
            PrivateKey::from_pem(keys::PUBKEY_KEY_PEM).expect("test key"),
            keys::PUBKEY_ID,
            ApiV3Key::new(keys::APIV3_KEY).expect("test key"),
        )
    }

    /// Builds a callback carrying `event`.
    pub fn build(&self, event: &Event, spec: &CallbackSpec) -> SignedCallback {
        self.build_raw(
            event.event_type(),
            event.original_type(),
            &event.to_resource_json(),
            spec,
        )
    }

    /// Builds a callback with an arbitrary event type and plaintext resource.
    pub fn build_raw(
        &self,
        event_type: &str,
        original_type: &str,
        plaintext: &[u8],
        spec: &CallbackSpec,
    ) -> SignedCallback {
        let ciphertext = aead_encrypt(
            &self.apiv3,
            &spec.resource_nonce,
            &spec.associated_data,
            plaintext,
        )
        .expect("12-character resource nonce");
        let summary = if spec.summary.is_empty() {
            match event_type {
                crate::notify::MALL_TRANSACTION_SUCCESS => "支付成功",
                crate::notify::MALL_REFUND_SUCCESS => "退款成功",
                _ => "通知",
            }
        } else {
            &spec.summary
        };
        let body = serde_json::json!({
            "id": spec.id,
            "create_time": spec.create_time,
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": {
                "original_type": original_type,
                "algorithm": crate::notify::AEAD_AES_256_GCM,
                "ciphertext": ciphertext,
                "associated_data": spec.associated_data,
                "nonce": spec.resource_nonce,
            }
        })
        .to_string()
        .into_bytes();
        let mut headers = if spec.probe {
            signature_headers(
                &self.serial,
                spec.timestamp,
                &spec.nonce,
                &format!("WECHATPAY/SIGNTEST/{}", random_token(40)),
            )
        } else {
            sign_response(&self.key, &self.serial, spec.timestamp, &spec.nonce, &body)
        };
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(&random_token(24)) {
            headers.insert("request-id", v);
        }
        SignedCallback { headers, body }
    }
}
