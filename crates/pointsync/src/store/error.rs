//! The storage errors, in terms any backend can report.

use std::sync::Arc;

/// A backend's own error, kept as the source of a [`StoreError`].
pub type Source = Arc<dyn std::error::Error + Send + Sync>;

/// A storage failure, in terms any backend can report. The backend's own error is kept as the
/// `source`. Clone, so one failed group commit can answer every caller in it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database cannot be opened or reached.
    #[error("database {database} cannot be opened or reached: {source}")]
    Unavailable {
        /// The database (a file path; never a password).
        database: String,
        /// The backend's error.
        source: Source,
    },
    /// The database does not exist (read-only opening never creates one).
    #[error("database {database} does not exist")]
    NotFound {
        /// The database.
        database: String,
    },
    /// Another connection held the write lock for longer than the busy timeout.
    #[error(
        "database {database} is locked: another connection held its write lock longer than the \
         busy timeout (service.busy_timeout_ms); nothing was written"
    )]
    Locked {
        /// The database.
        database: String,
    },
    /// The database cannot be written.
    #[error(
        "database {database} is read-only (file permissions, the immutable attribute or a \
         read-only mount); pointsync must be able to write it; nothing was written"
    )]
    ReadOnly {
        /// The database.
        database: String,
    },
    /// The storage refused a read or write (I/O error, disk full).
    #[error("database {database}: {source}; nothing was written")]
    Io {
        /// The database.
        database: String,
        /// The backend's error.
        source: Source,
    },
    /// Free space on the database's file system is below the reserve (`service.min_free_bytes`):
    /// new callbacks are refused so an operator can still act before the disk is full.
    #[error(
        "database {database}: only {available} bytes free on its file system, below the reserve \
         of {reserve} (service.min_free_bytes); new callbacks are refused until space is freed; \
         nothing was written"
    )]
    DiskFull {
        /// The database.
        database: String,
        /// Bytes free now.
        available: u64,
        /// The reserve.
        reserve: u64,
    },
    /// The stored schema is not the one this binary knows.
    #[error(
        "database {database} has schema version {found}, this pointsync knows {expected}: run \
         `pointsync migrate`"
    )]
    SchemaMismatch {
        /// The database.
        database: String,
        /// The stored version.
        found: i64,
        /// This binary's version.
        expected: i64,
    },
    /// A write conflicted with another one and was not applied.
    #[error("database {database}: {what}; nothing was written")]
    Conflict {
        /// The database.
        database: String,
        /// What conflicted.
        what: String,
    },
    /// This handle cannot write (opened read-only, or its writer stopped).
    #[error("database {database} is open for reading only here (or its writer has stopped)")]
    Closed {
        /// The database.
        database: String,
    },
    /// Any other failure of the backend.
    #[error("database {database}: {what}: {source}")]
    Backend {
        /// The database.
        database: String,
        /// What was being done.
        what: String,
        /// The backend's error.
        source: Source,
    },
}

impl StoreError {
    /// A task doing `what` on `database` did not finish: it panicked, its channel closed, or the
    /// runtime is shutting down.
    pub fn unfinished(
        database: impl Into<String>,
        what: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            database: database.into(),
            what: format!("{what} did not finish"),
            source: Arc::new(e),
        }
    }

    /// A short stable name of the cause, for metrics labels and logs.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::NotFound { .. } => "not_found",
            Self::Locked { .. } => "locked",
            Self::ReadOnly { .. } => "read_only",
            Self::Io { .. } => "io",
            Self::DiskFull { .. } => "disk_full",
            Self::SchemaMismatch { .. } => "schema_mismatch",
            Self::Conflict { .. } => "conflict",
            Self::Closed { .. } => "closed",
            Self::Backend { .. } => "backend",
        }
    }
}
