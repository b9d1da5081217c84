//! The order of a group's decisions on PostgreSQL: which callbacks of a group are read together
//! and which wait for a snapshot of their own, inside the one transaction `ingests.rs` opens for
//! the group.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;

use super::batch::{Batched, apply_batch, batchable};
use super::snapshot::snapshots;
use super::write::{PgLease, apply, member_lock, store_locked};
use crate::domain::{self, Plan, Reads};
use crate::store::{Claimed, Incoming, IngestContext, Ingested};

type R<T> = Result<T, sqlx::Error>;

/// A callback of a group: what deciding it needs, its member's lock key and the lease its sync
/// may take on receipt.
pub(super) struct Grouped<'a> {
    pub n: &'a Incoming,
    pub ctx: IngestContext<'a>,
    pub key: Option<&'a str>,
    pub lease: Option<&'a PgLease<'a>>,
}

/// Decides and applies a group's callbacks inside one transaction that holds all their members'
/// locks. Those whose reads no other callback of the group can change are read together in one
/// statement, decided one by one and written together in one more (`batch.rs`; one by one when
/// a plan needs more than one statement of its own); the others (a second callback about the same
/// member or payment, a refund whose payment's member another callback is about) afterwards, each
/// with its own snapshot, in their order of arrival. Every decision so reads what the callbacks
/// applied before it wrote. A new sync is leased on receipt in the statement that writes it, as
/// by a callback written alone.
pub(super) async fn store_group(
    c: &mut PgConnection,
    group: &[Grouped<'_>],
) -> R<Vec<(Ingested, Option<Claimed>)>> {
    let reads: Vec<Reads> = group.iter().map(|g| domain::reads(g.n, &g.ctx)).collect();
    // what each callback's reads or writes name: its member and its payment. A name's first
    // callback owns it; a later one naming it waits for a snapshot of its own.
    let names: Vec<Vec<String>> = group
        .iter()
        .zip(&reads)
        .map(|(g, r)| {
            g.key
                .map(str::to_string)
                .into_iter()
                .chain(r.openid.as_deref().map(member_lock))
                .chain(r.transaction_id.iter().map(|t| format!("payment:{t}")))
                .chain([format!("payment:{}", r.key.transaction_id)])
                .collect()
        })
        .collect();
    let mut owner: HashMap<String, usize> = HashMap::new();
    let (mut together, mut after) = (Vec::new(), Vec::new());
    for (i, names) in names.iter().enumerate() {
        let mut free = true;
        for name in names {
            free &= *owner.entry(name.clone()).or_insert(i) == i;
        }
        if free {
            together.push(i)
        } else {
            after.push(i)
        }
    }
    let snaps = snapshots(c, &together.iter().map(|&i| &reads[i]).collect::<Vec<_>>()).await?;
    let mut out: Vec<Option<(Ingested, Option<Claimed>)>> = group.iter().map(|_| None).collect();
    // names of callbacks put off: a later callback naming one is put off too, to stay after it
    let mut postponed: HashSet<String> = HashSet::new();
    let mut decided: Vec<(usize, Plan)> = Vec::new();
    for (&i, snap) in together.iter().zip(snaps) {
        // a refund's member is its payment's: known only now
        let member = reads[i]
            .openid
            .as_deref()
            .or(snap.payment.as_ref().map(|p| p.openid.as_str()))
            .map(member_lock);
        let clear = names[i].iter().all(|n| !postponed.contains(n))
            && member.as_ref().is_none_or(|m| {
                !postponed.contains(m) && *owner.entry(m.clone()).or_insert(i) == i
            });
        if !clear {
            postponed.extend(names[i].iter().cloned().chain(member));
            after.push(i);
            continue;
        }
        let g = &group[i];
        decided.push((i, domain::ingest(g.n, &snap, &g.ctx)));
    }
    // their writes touch no row another one's do: in one statement when each could go in one
    if decided.len() > 1 && batchable(decided.iter().map(|(_, p)| p)) {
        let batch: Vec<Batched<'_>> = decided
            .iter()
            .map(|(i, plan)| Batched {
                plan,
                now_ms: group[*i].ctx.now_ms,
                lease: group[*i].lease,
            })
            .collect();
        for ((i, _), o) in decided.iter().zip(apply_batch(c, &batch).await?) {
            out[*i] = Some(o);
        }
    } else {
        for (i, plan) in &decided {
            let g = &group[*i];
            out[*i] = Some(apply(c, plan, g.ctx.now_ms, g.lease).await?);
        }
    }
    after.sort_unstable();
    for i in after {
        let g = &group[i];
        out[i] = Some(store_locked(c, g.n, &g.ctx, g.lease).await?);
    }
    out.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| sqlx::Error::Protocol("a grouped callback was left undecided".into()))
}
