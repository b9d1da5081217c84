//! # wechatpay — WeChat Pay APIv3 for Rust, with the 智慧商圈 (business circle) family
//!
//! Every request is signed (`WECHATPAY2-SHA256-RSA2048`), every 2xx response is verified on its raw
//! bytes before the caller sees it, and callbacks are verified, decrypted and typed.
//!
//! Two layers, both public:
//! - the typed chain: `client.v3().businesscircle().points().notify().post(&req)`;
//! - the raw chain for any APIv3 endpoint: `client.chain("v3/…/{openid}").var("openid", …).get()`.
//!
//! Async by default ([`Client`]); blocking with the `blocking` feature ([`blocking::Client`], same
//! names). Crypto runs on aws-lc-rs (constant-time RSA).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use wechatpay::businesscircle::UserAuthorizationQuery;
//! let client = wechatpay::Client::builder()
//!     .mchid("1900000001")
//!     .serial("3775B6A45ACD588826D15E583A95F5DD5EE7FFFF")
//!     .private_key_file("apiclient_key.pem")
//!     .trust_file(None, "wechatpay_platform_cert.pem")
//!     .build()?;
//! let auth = client
//!     .v3()
//!     .businesscircle()
//!     .user_authorizations("oWmnN4xxxxxxxxxxe92NHIGf1xd8")
//!     .get(&UserAuthorizationQuery::new("wx1234567890abcdef"))
//!     .await?;
//! println!("{}", auth.authorize_state);
//! # Ok(()) }
//! ```

#[cfg(feature = "blocking")]
pub mod blocking;
mod builder;
pub mod businesscircle;
pub mod certificates;
pub mod chain;
mod client;
pub mod clock;
pub mod crypto;
mod endpoints;
pub mod error;
pub mod explain;
pub mod notify;
mod pipeline;
mod request;
pub mod sign;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod trust;
pub mod verify;

pub use crate::builder::{ClientBuilder, DEFAULT_BACKUP_URL, DEFAULT_BASE_URL, user_agent};
pub use crate::client::Client;
pub use crate::crypto::{ApiV3Key, PrivateKey, PublicKey};
pub use crate::error::{
    ApiError, ConfigError, Error, KeyError, Setting, ValidationError, VerifyError,
};
pub use crate::request::{ApiRequest, RawRequest, Response, SendFuture, Sender};
pub use crate::trust::TrustStore;
