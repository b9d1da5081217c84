//! A crash hook for the kill -9 tests: with `POINTSYNC_CRASH_AT=POINT[:N]` in the environment,
//! the N-th time (default 1st) the process reaches POINT it sends itself SIGKILL — a real
//! `kill -9`, no destructor or flush runs. Inert when the variable is unset.
//!
//! Points: `before_commit` (callback written, not committed), `after_commit` (committed, 2xx not
//! sent), `before_send` (sync claimed, not sent), `after_204` (WeChat answered 204, not marked done).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable.
pub const ENV: &str = "POINTSYNC_CRASH_AT";

fn spec() -> &'static Option<(String, u64)> {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (point, n) = match v.split_once(':') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((point, n))
    })
}

/// Dies here if the environment says so.
pub fn point(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((want, n)) = spec() else { return };
    if want != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *n {
        return;
    }
    eprintln!("pointsync: crash point {name} reached, kill -9 self");
    let _ = std::process::Command::new("kill")
        .args(["-9", &std::process::id().to_string()])
        .status();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
