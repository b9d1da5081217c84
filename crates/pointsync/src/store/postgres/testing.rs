//! The store's unit tests' PostgreSQL: the server at `POINTSYNC_TEST_POSTGRES` (default the local
//! one, as the integration tests), skipped with a message when unreachable unless
//! `POINTSYNC_REQUIRE_POSTGRES=1`, and scratch databases dropped when the test ends.

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection, Executor};

use crate::store::Database;

fn admin_url() -> String {
    std::env::var("POINTSYNC_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A pool on the server's admin database, or `None` (the test skipped, said) without a server.
pub(super) async fn pool(test: &str) -> Option<PgPool> {
    let url = admin_url();
    match PgPool::connect(&url).await {
        Ok(p) => Some(p),
        Err(e) => {
            assert!(
                std::env::var("POINTSYNC_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "PostgreSQL is required but {url} is unreachable: {e}"
            );
            eprintln!("SKIPPED: {test}: {url} is unreachable ({e})");
            None
        }
    }
}

/// A new empty database on the server (`None` without one), dropped with the guard.
pub(super) async fn scratch(test: &str) -> Option<(Database, Scratch)> {
    let admin = pool(test).await?;
    let name = format!("pointsync_unit_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = admin_url();
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    let db = Database::parse(&format!("{base}/{name}")).unwrap();
    Some((db, Scratch(name)))
}

/// A scratch database with the store's schema and a pool of two connections on it (`None`
/// without a server).
pub(super) async fn migrated(test: &str) -> Option<(Database, PgPool, Scratch)> {
    let (db, scratch) = self::scratch(test).await?;
    let pool = super::connect(&db, std::time::Duration::from_secs(5), 2, &[])
        .await
        .unwrap();
    super::migrate_pool(&pool, "scratch").await.unwrap();
    Some((db, pool, scratch))
}

/// Drops its scratch database when the test ends, on a runtime of its own (the test's may be
/// shutting down).
pub(super) struct Scratch(String);

impl Drop for Scratch {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

/// `sql`'s generic plan (the plan a prepared statement keeps after its fifth run, made from the
/// statistics of the moment) on a connection of `pool`, as `EXPLAIN` prints it: `types` are its
/// parameters' types and `args` the values to explain it with, both as SQL lists.
pub(super) async fn generic_plan(pool: &PgPool, sql: &str, types: &str, args: &str) -> String {
    let mut c = pool.acquire().await.unwrap();
    c.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    c.execute(format!("PREPARE explained ({types}) AS {sql}").as_str())
        .await
        .unwrap();
    let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE explained({args})"))
        .fetch_all(&mut *c)
        .await
        .unwrap();
    c.execute("DEALLOCATE explained; RESET plan_cache_mode")
        .await
        .unwrap();
    lines.join("\n")
}
