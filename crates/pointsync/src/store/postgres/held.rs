//! A connection a long-lived task keeps between its uses while they come close together.
//!
//! sqlx tests every connection given back to its pool with a ping, a round trip of its own (and a
//! task spawned to make it): a group's transaction or an outcome batch paid one more round trip
//! than its statements. A lane or the outcome recorder keeps its connection instead while it is
//! busy. A connection it has not used for [`KEEP`] goes back to the pool, whose own test before
//! use (`before_acquire`, mod.rs) then applies, as does one whose work failed: a server restarted
//! meanwhile costs the same as it does to any other user of the pool.

use std::time::{Duration, Instant};

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPool;
use wechatpay::clock::monotonic;

/// How long a kept connection may sit unused and still be used without a test (the pool's rule).
const KEEP: Duration = Duration::from_secs(1);

/// A pool connection kept between uses.
#[derive(Debug)]
pub(super) struct Held {
    pool: PgPool,
    kept: Option<(PoolConnection<Postgres>, Instant)>,
}

impl Held {
    pub(super) fn new(pool: PgPool) -> Self {
        Self { pool, kept: None }
    }

    /// The kept connection if it was used within [`KEEP`], else one from the pool. Give it back
    /// with [`Held::keep`] after a success; dropped, it goes back to the pool, which tests it.
    pub(super) async fn take(&mut self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        match self.kept.take() {
            Some((c, used)) if monotonic().duration_since(used) < KEEP => Ok(c),
            // given back (tested by the pool on release) and taken again (tested if idle)
            stale => {
                drop(stale);
                self.pool.acquire().await
            }
        }
    }

    /// Keeps `c` for the next use, from now.
    pub(super) fn keep(&mut self, c: PoolConnection<Postgres>) {
        self.kept = Some((c, monotonic()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn backend(c: &mut PoolConnection<Postgres>) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut **c)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_kept_while_used_within_a_second_then_given_back() {
        let Some(pool) = crate::store::postgres::testing::pool("the kept connection's test").await
        else {
            return;
        };
        // two idle connections in the pool, `first` at the head of its queue
        let (mut a, mut b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        let (first, second) = (backend(&mut a).await, backend(&mut b).await);
        drop(a);
        while pool.num_idle() < 1 {
            tokio::task::yield_now().await;
        }
        drop(b);
        while pool.num_idle() < 2 {
            tokio::task::yield_now().await;
        }
        let mut held = Held::new(pool.clone());
        let mut c = held.take().await.unwrap();
        assert_eq!(
            backend(&mut c).await,
            first,
            "the pool's first idle connection"
        );
        held.keep(c);
        // given back, it would queue behind `second`, and the pool would hand out `second`
        let mut c = held.take().await.unwrap();
        assert_eq!(
            backend(&mut c).await,
            first,
            "kept, never given back to the pool"
        );
        assert_eq!(
            pool.num_idle(),
            1,
            "the pool still holds only the other one"
        );
        held.keep(c);
        tokio::time::sleep(KEEP + Duration::from_millis(100)).await;
        // unused for longer than KEEP: back to the pool (behind `second`), the next from the pool
        let mut c = held.take().await.unwrap();
        assert_eq!(backend(&mut c).await, second, "taken from the pool again");
        drop(c);
        drop(held);
        pool.close().await;
    }
}
