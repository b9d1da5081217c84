//! `pointsync members reconcile`: asks WeChat again about every member whose authorization is
//! unknown or older than `--stale-after`, within `wechatpay.query_qps`, and stores the answers.
//! Revocations (`DEAUTHORIZED`: WeChat sends no callback for them) are learned only this way; a
//! member learned as not authorized earns nothing from her next payment on.

use std::sync::Arc;

use serde::Serialize;
use tokio::task::JoinSet;

use super::Queries;
use crate::store::{StaleMember, Store, StoreError};

/// Progress and result of a reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reconciled {
    /// Members asked about.
    pub asked: u64,
    /// Answered authorized.
    pub authorized: u64,
    /// Answered not authorized (never, or revoked).
    pub not_authorized: u64,
    /// Answered with a state this version does not know (left unknown).
    pub other: u64,
    /// Not answered (WeChat's error, the deadline, no appid): asked again next time.
    pub failed: u64,
    /// The last reason a member was not answered.
    pub last_error: Option<String>,
}

const PAGE: i64 = 200;
const IN_FLIGHT: usize = 16;

/// Reconciles members whose authorization was learned before `stale_before_ms` (or never);
/// `progress` is called after each page.
pub async fn reconcile<S: Store>(
    store: &S,
    queries: Arc<Queries>,
    stale_before_ms: i64,
    now_ms: impl Fn() -> i64,
    mut progress: impl FnMut(&Reconciled),
) -> Result<Reconciled, StoreError> {
    let mut done = Reconciled::default();
    let mut after = String::new();
    loop {
        let page = store.stale_members(stale_before_ms, &after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(done);
        };
        after = last.openid.clone();
        let mut tasks = JoinSet::new();
        let mut answers = Vec::new();
        for m in page {
            if tasks.len() >= IN_FLIGHT
                && let Some(r) = tasks.join_next().await
            {
                answers.push(r);
            }
            tasks.spawn(ask(queries.clone(), m));
        }
        while let Some(r) = tasks.join_next().await {
            answers.push(r);
        }
        for r in answers {
            done.asked += 1;
            match r {
                Ok(Ok(a)) => {
                    store.record_authorization(&a, now_ms()).await?;
                    match a.authorized {
                        Some(true) => done.authorized += 1,
                        Some(false) => done.not_authorized += 1,
                        None => done.other += 1,
                    }
                }
                Ok(Err(e)) => {
                    done.failed += 1;
                    done.last_error = Some(e);
                }
                Err(e) => {
                    done.failed += 1;
                    done.last_error = Some(e.to_string());
                }
            }
        }
        progress(&done);
    }
}

async fn ask(
    queries: Arc<Queries>,
    m: StaleMember,
) -> Result<crate::store::LearnedAuthorization, String> {
    let Some(appid) = queries.appid(m.appid.as_deref()) else {
        return Err(format!(
            "{}: no appid to ask with (she has no payment): set wechatpay.appids",
            m.openid
        ));
    };
    queries
        .authorization(&m.openid, &appid, None)
        .await
        .map_err(|e| format!("{}: {e}", m.openid))
}
