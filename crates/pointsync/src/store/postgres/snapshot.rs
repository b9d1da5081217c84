//! What a callback's decision reads on PostgreSQL, in one statement for one callback or for
//! several: taken inside the transaction that holds their members' locks (`write.rs`, `group.rs`).

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::domain::{HeldRefund, MemberSnapshot, PaymentSnapshot, Reads, Snapshot};
use crate::rules::Authorization;

type R<T> = Result<T, sqlx::Error>;

/// Everything a callback's decision reads: whether it is stored already, its payment and the
/// refunds held for it, its member and (when a daily cap asks) what they were credited today.
/// Taken after the member's lock, so the statement's snapshot is current.
pub(super) async fn snapshot(c: &mut PgConnection, r: &Reads) -> R<Snapshot> {
    let mut one = snapshots(c, &[r]).await?;
    one.pop().ok_or(sqlx::Error::RowNotFound)
}

/// [`snapshot`] for several callbacks in one statement (one round trip), in their order. Each
/// row's reads see the transaction as it was before the statement: callbacks whose reads another
/// one's writes could change must not share it (`group.rs`). Every lookup is a lateral
/// subquery through its key, row by row (`OFFSET 0` keeps the planner from turning it into a join
/// or a hashed subplan over the whole table: the statement runs on a generic plan, which may have
/// been made while the tables were still empty).
pub(super) async fn snapshots(c: &mut PgConnection, reads: &[&Reads]) -> R<Vec<Snapshot>> {
    let texts = |f: fn(&Reads) -> Option<&str>| reads.iter().map(|r| f(r)).collect::<Vec<_>>();
    let days: Vec<Option<i64>> = reads.iter().map(|r| r.day).collect();
    let rows = sqlx::query(
        "SELECT s.seen IS NOT NULL, p.openid, p.amount, p.credited_points, p.refunded_amount, p.entitled_debit, p.not_credited,
                ARRAY(SELECT id FROM inbox WHERE transaction_id = v.transaction_id AND status = 'held' ORDER BY id),
                ARRAY(SELECT resource FROM inbox WHERE transaction_id = v.transaction_id AND status = 'held' ORDER BY id),
                m.openid IS NOT NULL, m.authorized, COALESCE(m.balance, 0),
                CASE WHEN v.day IS NULL THEN 0::BIGINT
                     ELSE (SELECT COALESCE(SUM(points), 0)::BIGINT FROM ledger
                           WHERE openid = w.openid AND day = v.day AND kind = 'credit') END
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[]) WITH ORDINALITY
              AS v (event_type, key_id, refund_id, transaction_id, openid, day, n)
         LEFT JOIN LATERAL (SELECT TRUE AS seen FROM inbox
                            WHERE event_type = v.event_type AND transaction_id = v.key_id AND refund_id = v.refund_id
                            OFFSET 0) s ON TRUE
         LEFT JOIN LATERAL (SELECT * FROM payments WHERE transaction_id = v.transaction_id OFFSET 0) p ON TRUE
         CROSS JOIN LATERAL (SELECT COALESCE(v.openid, p.openid) AS openid) AS w
         LEFT JOIN LATERAL (SELECT * FROM members WHERE openid = w.openid OFFSET 0) m ON TRUE
         ORDER BY v.n",
    )
    .bind(texts(|r| Some(&r.key.event_type)))
    .bind(texts(|r| Some(&r.key.transaction_id)))
    .bind(texts(|r| Some(&r.key.refund_id)))
    .bind(texts(|r| r.transaction_id.as_deref()))
    .bind(texts(|r| r.openid.as_deref()))
    .bind(&days)
    .fetch_all(&mut *c)
    .await?;
    if rows.len() != reads.len() {
        return Err(sqlx::Error::Protocol(format!(
            "{} snapshots read for {} callbacks",
            rows.len(),
            reads.len()
        )));
    }
    rows.iter().map(snapshot_row).collect()
}

fn snapshot_row(row: &PgRow) -> R<Snapshot> {
    if row.try_get::<bool, _>(0)? {
        return Ok(Snapshot {
            seen: true,
            ..Snapshot::default()
        });
    }
    let payment = match row.try_get::<Option<String>, _>(1)? {
        None => None,
        Some(openid) => Some(PaymentSnapshot {
            openid,
            amount: row.try_get(2)?,
            credited_points: row.try_get(3)?,
            refunded_amount: row.try_get(4)?,
            entitled_debit: row.try_get(5)?,
            not_credited: row.try_get::<i64, _>(6)? == 1,
        }),
    };
    let (ids, resources): (Vec<i64>, Vec<String>) = (row.try_get(7)?, row.try_get(8)?);
    let member = if row.try_get::<bool, _>(9)? {
        MemberSnapshot {
            authorization: match row.try_get::<Option<i64>, _>(10)? {
                Some(1) => Authorization::Authorized,
                Some(_) => Authorization::NotAuthorized,
                None => Authorization::Unknown,
            },
            balance: row.try_get(11)?,
        }
    } else {
        MemberSnapshot::default()
    };
    Ok(Snapshot {
        seen: false,
        payment,
        held_refunds: ids
            .into_iter()
            .zip(resources)
            .map(|(inbox_id, resource)| HeldRefund { inbox_id, resource })
            .collect(),
        member,
        credited_today: row.try_get(12)?,
    })
}
