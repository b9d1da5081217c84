//! Integration tests of the `wechatpay` crate: known answers, verification paths, and the async
//! and blocking clients against the simulator over real loopback HTTP.

mod callbacks;
mod client;
mod signing;
mod verification;

use std::path::PathBuf;

pub fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// Signature timestamp offsets from now, and whether each must be accepted (|Δ| < 300 s).
pub const WINDOW: [(i64, bool); 6] = [
    (299, true),
    (300, false),
    (301, false),
    (-299, true),
    (-300, false),
    (-301, false),
];
