//! Connections: opening (WAL, `synchronous=FULL`, a busy timeout), migrating, the schema check of
//! an existing file, the read connections, and SQLite's failures in the contract's terms.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{MIGRATIONS, latest};
use crate::store::StoreError;

/// Names an SQLite failure in the contract's terms, keeping it as the source.
pub(crate) fn classify(e: rusqlite::Error, path: &Path, what: &str) -> StoreError {
    use rusqlite::ErrorCode;
    let database = path.display().to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Locked { database }
        }
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { database },
        Some(ErrorCode::SystemIoFailure | ErrorCode::DiskFull) => StoreError::Io {
            database,
            source: Arc::new(e),
        },
        Some(ErrorCode::CannotOpen | ErrorCode::NotADatabase | ErrorCode::PermissionDenied) => {
            // SQLite's own message repeats the path: keep its code, the path is said once
            let source: crate::store::Source = match e {
                rusqlite::Error::SqliteFailure(code, _) => Arc::new(code),
                e => Arc::new(e),
            };
            StoreError::Unavailable { database, source }
        }
        _ => StoreError::Backend {
            database,
            what: what.to_string(),
            source: Arc::new(e),
        },
    }
}

/// Read connections (WAL readers never block each other or the writer): a read takes a free one,
/// so the mall API's reads do not queue the callback path's.
pub(super) const READERS: usize = 4;

#[derive(Debug)]
pub(super) struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Readers {
    pub(super) fn new(conns: Vec<Connection>) -> Self {
        Self {
            conns: conns.into_iter().map(Mutex::new).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A free connection if there is one, else the next in turn (waiting for it).
    pub(super) fn pick(&self) -> std::sync::MutexGuard<'_, Connection> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self.conns.len();
        for i in 0..n {
            if let Ok(c) = self.conns[(start + i) % n].try_lock() {
                return c;
            }
        }
        self.conns[start % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn open_connection(
    path: &Path,
    busy_timeout: Duration,
    read_only: bool,
) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let named = |e| classify(e, path, "opening");
    let c = Connection::open_with_flags(path, flags).map_err(named)?;
    c.busy_timeout(busy_timeout).map_err(named)?;
    if !read_only {
        // SQLite quietly opens a file it cannot write read-only; say so now, not at the first
        // callback
        if c.is_readonly(rusqlite::DatabaseName::Main).map_err(named)? {
            return Err(StoreError::ReadOnly {
                database: path.display().to_string(),
            });
        }
        c.pragma_update(None, "journal_mode", "WAL")
            .map_err(named)?;
    }
    c.pragma_update(None, "synchronous", "FULL")
        .map_err(named)?;
    c.pragma_update(None, "foreign_keys", true).map_err(named)?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

/// The page cache of each serving connection (reader or writer), in KiB (SQLite's negative
/// `cache_size`): the index pages the hot paths touch stay in it.
const PAGE_CACHE_KIB: i64 = 16_000;

/// A read connection for serving: memory-mapped (reads copy no pages through the kernel) with a
/// larger page cache.
pub(super) fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let c = open_connection(path, busy_timeout, true)?;
    let named = |e| classify(e, path, "opening");
    c.pragma_update(None, "mmap_size", 1i64 << 30)
        .map_err(named)?;
    c.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
        .map_err(named)?;
    Ok(c)
}

/// The writer's connection. Each job of a group runs in its own savepoint, whose statement
/// journal SQLite keeps in a temporary file by default: in memory it costs no write calls. With
/// the larger page cache the index pages every callback touches are not read back through the
/// kernel on every group.
pub(super) fn open_writer(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let c = open_connection(path, busy_timeout, false)?;
    let named = |e| classify(e, path, "opening");
    c.pragma_update(None, "temp_store", "MEMORY")
        .map_err(named)?;
    c.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
        .map_err(named)?;
    Ok(c)
}

pub(super) fn migrate_connection(
    c: &mut Connection,
    path: &Path,
) -> Result<Vec<String>, StoreError> {
    let named = |e| classify(e, path, "migrating");
    let current: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(named)?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if *version > current {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(named)?;
            tx.execute_batch(sql).map_err(named)?;
            tx.pragma_update(None, "user_version", version)
                .map_err(named)?;
            tx.commit().map_err(named)?;
            applied.push(format!("{version} {name}"));
        }
    }
    Ok(applied)
}

/// Opens a database that must exist already and be at this binary's schema (nothing is created
/// or migrated).
pub(super) fn open_existing(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let database = path.display().to_string();
    if !path.exists() {
        return Err(StoreError::NotFound { database });
    }
    let c = open_connection(path, Duration::from_secs(5), read_only)?;
    let found: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| classify(e, path, "reading the schema version"))?;
    if found != latest() {
        return Err(StoreError::SchemaMismatch {
            database,
            found,
            expected: latest(),
        });
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{PAGE_CACHE_KIB, open_writer};

    #[test]
    fn the_writer_journals_savepoints_in_memory_with_the_serving_cache() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_writer(&dir.path().join("w.db"), Duration::from_secs(1)).unwrap();
        let temp_store: i64 = c
            .pragma_query_value(None, "temp_store", |r| r.get(0))
            .unwrap();
        let cache: i64 = c
            .pragma_query_value(None, "cache_size", |r| r.get(0))
            .unwrap();
        // temp_store 2 is MEMORY (0 would be the compile-time default: a temporary file)
        assert_eq!((temp_store, cache), (2, -PAGE_CACHE_KIB));
    }
}
