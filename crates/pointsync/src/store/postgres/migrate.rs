//! The PostgreSQL schema's versions: the migrations in PostgreSQL's dialect, applied in order
//! under an advisory lock so two migrators never race, and the version a database is at.

use sqlx::Executor;
use sqlx::postgres::PgPool;

use super::classify;
use crate::store::StoreError;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "rate limit",
        include_str!("../../../migrations/postgres/0002_rate_limit.sql"),
    ),
    (
        3,
        "outbox vacuum",
        include_str!("../../../migrations/postgres/0003_outbox_vacuum.sql"),
    ),
];

/// The session advisory lock migrators hold ("pointsyn").
const MIGRATION_LOCK: i64 = 0x706f_696e_7473_796e;

pub(super) fn schema() -> String {
    crate::store::schema_of(MIGRATIONS)
}

fn latest() -> i64 {
    crate::store::latest_of(MIGRATIONS)
}

async fn stored_version(pool: &PgPool, name: &str) -> Result<Option<i64>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('pointsync_schema') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(|e| classify(name, "reading the schema version", e))?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT MAX(version) FROM pointsync_schema")
        .fetch_one(pool)
        .await
        .map_err(|e| classify(name, "reading the schema version", e))
}

pub(super) async fn at_latest(pool: &PgPool, name: &str) -> Result<(), StoreError> {
    match stored_version(pool, name).await? {
        Some(v) if v == latest() => Ok(()),
        Some(found) => Err(StoreError::SchemaMismatch {
            database: name.to_string(),
            found,
            expected: latest(),
        }),
        None => Err(StoreError::NotFound {
            database: name.to_string(),
        }),
    }
}

pub(super) async fn migrate_pool(pool: &PgPool, name: &str) -> Result<Vec<String>, StoreError> {
    let named = |e| classify(name, "migrating", e);
    let mut c = pool.acquire().await.map_err(named)?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *c)
        .await
        .map_err(named)?;
    let result = async {
        c.execute(
            "CREATE TABLE IF NOT EXISTS pointsync_schema (
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM pointsync_schema")
            .fetch_one(&mut *c)
            .await?;
        let mut applied = Vec::new();
        for (version, label, sql) in MIGRATIONS {
            if *version > current.unwrap_or(0) {
                let mut tx = sqlx::Connection::begin(&mut *c).await?;
                tx.execute(*sql).await?;
                sqlx::query("INSERT INTO pointsync_schema (version, name) VALUES ($1, $2)")
                    .bind(version)
                    .bind(label)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                applied.push(format!("{version} {label}"));
            }
        }
        Ok::<_, sqlx::Error>(applied)
    }
    .await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *c)
        .await;
    let applied = result.map_err(named)?;
    unlocked.map_err(named)?;
    Ok(applied)
}
