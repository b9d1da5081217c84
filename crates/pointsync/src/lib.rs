//! # pointsync — the mall's WeChat Pay 智慧商圈 points service
//!
//! Callbacks in (verified, decrypted, stored durably with the points decision, the ledger entry
//! and the outbox row in one transaction), points sync out (leased, fenced, rate-limited, retried
//! with back-off, parked on errors that retrying cannot fix).

pub mod clock;
pub mod config;
pub mod crash;
#[cfg(feature = "demo")]
pub mod demo;
pub mod doctor;
pub mod domain;
pub mod metrics;
pub mod retry;
pub mod rules;
pub mod service;
pub mod store;
