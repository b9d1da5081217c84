//! Where the data lives (`service.database`) and how a store is opened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the data lives: `service.database` in the config. A file path means SQLite; a
/// `postgres://` (or `postgresql://`) URL means PostgreSQL.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (its password is never shown: see `Display`).
    Postgres(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            Self::Postgres(_) => f.debug_tuple("Postgres").field(&self.to_string()).finish(),
        }
    }
}

impl Database {
    /// Reads `service.database`: a `postgres://` URL or an SQLite file path.
    pub fn parse(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            let u = url::Url::parse(s).map_err(|e| {
                format!(
                    "is not a valid PostgreSQL URL ({e}); expected postgres://user@host:port/db"
                )
            })?;
            if u.host_str().is_none_or(str::is_empty) {
                return Err("the PostgreSQL URL names no host".into());
            }
            return Ok(Self::Postgres(s.to_string()));
        }
        if s.trim().is_empty() {
            return Err("must name an SQLite file or a postgres:// URL".into());
        }
        Ok(Self::Sqlite(PathBuf::from(s)))
    }

    /// The SQLite file, for SQLite.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(p) => Some(p),
            Self::Postgres(_) => None,
        }
    }

    /// A relative file path made relative to `base` (the config file's folder).
    pub fn resolve(&mut self, base: &Path) {
        if let Self::Sqlite(p) = self
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "{}", p.display()),
            Self::Postgres(u) => match url::Url::parse(u) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    write!(f, "{url}")
                }
                Err(_) => f.write_str("postgres://(unparsable URL)"),
            },
        }
    }
}

impl Serialize for Database {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Database {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The default of `service.commit_wait_ms` ([`OpenOptions::commit_wait`]).
pub const DEFAULT_COMMIT_WAIT: Duration = Duration::from_millis(20);

/// How a store is opened for serving.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// How long a write waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// Refuse new callbacks when less than this many bytes are free (0: no reserve).
    pub min_free_bytes: u64,
    /// The outgoing rate (`dispatcher.qps`) a shared store enforces across all instances
    /// (PostgreSQL); 0: none (SQLite serves one process, whose own bucket limits it).
    pub rate_qps: f64,
    /// How long a callback's write may wait for the next callbacks to share its commit, while
    /// they arrive closer together than this (`service.commit_wait_ms`; zero: never).
    pub commit_wait: Duration,
    /// PostgreSQL: how many groups of callbacks one instance writes at once (`None`: one lane
    /// per two of the runtime's worker threads, at least one; see `store/postgres/ingests.rs`).
    pub lanes: Option<usize>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            min_free_bytes: 0,
            rate_qps: 0.0,
            commit_wait: DEFAULT_COMMIT_WAIT,
            lanes: None,
        }
    }
}
