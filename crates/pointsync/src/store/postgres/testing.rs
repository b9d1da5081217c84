//! The store's unit tests' PostgreSQL: the server at `POINTSYNC_TEST_POSTGRES` (default the local
//! one, as the integration tests), skipped with a message when unreachable unless
//! `POINTSYNC_REQUIRE_POSTGRES=1`, and scratch databases dropped when the test ends.

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool};

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
