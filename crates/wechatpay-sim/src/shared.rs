//! The state every part of the simulator shares — the server (`api.rs`), the pusher (`push.rs`)
//! and the control API (`control.rs`) — on the ground floor: those modules take a `&Shared`, it
//! imports none of them.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use rand::Rng;
use tokio::sync::Notify;
use wechatpay::PrivateKey;
use wechatpay::clock::Clock;
use wechatpay::testing::CallbackSigner;

use crate::faults::{FaultConfig, Faults};
use crate::options::{PushConfig, SimOptions};
use crate::sandbox::Sandbox;
use crate::state::State;

/// State shared by the server, the pusher and the control API.
#[derive(Debug)]
pub struct Shared {
    pub(crate) sandbox: Sandbox,
    pub(crate) state: Mutex<State>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) options: Mutex<SimOptions>,
    pub(crate) push: Mutex<PushConfig>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Mutex<rand::rngs::StdRng>,
    pub(crate) wrong_key: Arc<PrivateKey>,
    pub(crate) signer: CallbackSigner,
    pub(crate) http: reqwest::Client,
    pub(crate) pending: AtomicUsize,
    pub(crate) settled: Notify,
    /// Round-robin position over the notify URLs.
    pub(crate) next_url: AtomicUsize,
}

impl Shared {
    pub(crate) fn opts(&self) -> SimOptions {
        self.options
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// The current push settings.
    pub fn push_config(&self) -> PushConfig {
        self.push.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub(crate) fn roll(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random::<f64>()
    }
    pub(crate) fn reset(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // ids keep counting: WeChat never issues a transaction or refund id twice
        let seq = s.seq;
        *s = State {
            seq,
            ..State::default()
        };
        drop(s);
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(FaultConfig::default());
    }
}

/// Marks a response whose connection must be closed without answering.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResetConnection;
