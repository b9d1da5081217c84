//! The SQLite store: WAL with `synchronous=FULL`, one writer connection (`BEGIN IMMEDIATE`), a
//! busy timeout, migrations embedded.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use wechatpay::businesscircle::PointsNotifyRequest;
use wechatpay::notify::{AuthType, Event, MallRefund, MallTransaction};

use crate::rules::{Authorization, Payment, refund_deduction};
use crate::store::{
    Audit, Claimed, Incoming, IngestContext, Ingested, LedgerEntry, MemberView, ParkedSync, Status,
    Store, StoreError, SyncOutcome,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The China-time day number of a Unix-ms instant (daily caps count in China time).
pub fn china_day(now_ms: i64) -> i64 {
    (now_ms / 1000 + 8 * 3600).div_euclid(86_400)
}

/// RFC 3339 in China time, as WeChat writes times.
pub fn china_time(now_ms: i64) -> String {
    wechatpay::clock::rfc3339_china(now_ms / 1000)
}

/// SQLite storage.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

type Tx = Transaction<'static, Sqlite>;

impl SqliteStore {
    /// Opens (creating if missing) the database file and runs the embedded migrations.
    pub async fn open(path: &Path, busy_timeout: Duration) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(busy_timeout + Duration::from_secs(5))
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Self { writer, reader })
    }

    /// Runs the migrations only (the `migrate` command).
    pub async fn migrate(path: &Path) -> Result<Vec<String>, StoreError> {
        Self::open(path, Duration::from_secs(5)).await?;
        Ok(MIGRATOR
            .iter()
            .map(|m| format!("{} {}", m.version, m.description))
            .collect())
    }

    async fn insert_inbox(
        tx: &mut Tx,
        key: (&str, &str, &str),
        n: &Incoming,
        openid: &str,
        status: &str,
        note: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (event_type, transaction_id, refund_id) = key;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO inbox (event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (event_type, transaction_id, refund_id) DO NOTHING RETURNING id",
        )
        .bind(event_type)
        .bind(transaction_id)
        .bind(refund_id)
        .bind(&n.notification_id)
        .bind(openid)
        .bind(&n.plaintext)
        .bind(status)
        .bind(note)
        .bind(now_ms)
        .fetch_optional(&mut **tx)
        .await?;
        if id.is_none() {
            sqlx::query("UPDATE inbox SET deliveries = deliveries + 1 WHERE event_type = ? AND transaction_id = ? AND refund_id = ?")
                .bind(event_type)
                .bind(transaction_id)
                .bind(refund_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(id)
    }

    async fn member_state(tx: &mut Tx, openid: &str) -> Result<(Authorization, i64), StoreError> {
        let row = sqlx::query("SELECT authorized, balance FROM members WHERE openid = ?")
            .bind(openid)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(match row {
            None => (Authorization::Unknown, 0),
            Some(r) => {
                let a: Option<i64> = r.get(0);
                let auth = match a {
                    Some(1) => Authorization::Authorized,
                    Some(_) => Authorization::NotAuthorized,
                    None => Authorization::Unknown,
                };
                (auth, r.get(1))
            }
        })
    }

    async fn set_balance(
        tx: &mut Tx,
        openid: &str,
        balance: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at) VALUES (?, NULL, '', '', ?, ?)
             ON CONFLICT (openid) DO UPDATE SET balance = excluded.balance, updated_at = excluded.updated_at",
        )
        .bind(openid)
        .bind(balance)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_ledger(
        tx: &mut Tx,
        openid: &str,
        kind: &str,
        transaction_id: &str,
        refund_id: &str,
        points: i64,
        balance_after: i64,
        rule: &Value,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ledger (openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(openid)
        .bind(kind)
        .bind(transaction_id)
        .bind(refund_id)
        .bind(points)
        .bind(balance_after)
        .bind(china_day(now_ms))
        .bind(rule.to_string())
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn ingest_payment(
        tx: &mut Tx,
        n: &Incoming,
        t: &MallTransaction,
        ctx: &IngestContext<'_>,
    ) -> Result<Ingested, StoreError> {
        let key = (n.event_type.as_str(), t.transaction_id.as_str(), "");
        let problem = if t.amount <= 0 {
            Some(format!("amount {} is not positive", t.amount))
        } else if t.transaction_id.is_empty() || t.openid.is_empty() || t.appid.is_empty() {
            Some("transaction_id, openid or appid is empty".to_string())
        } else {
            None
        };
        if let Some(p) = problem {
            return Ok(
                match Self::insert_inbox(tx, key, n, &t.openid, "rejected", &p, ctx.now_ms).await? {
                    Some(_) => Ingested::Rejected(p),
                    None => Ingested::Duplicate,
                },
            );
        }
        if Self::insert_inbox(tx, key, n, &t.openid, "applied", "", ctx.now_ms)
            .await?
            .is_none()
        {
            return Ok(Ingested::Duplicate);
        }
        let (authorization, balance) = Self::member_state(tx, &t.openid).await?;
        let credited_today: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(points), 0) FROM ledger WHERE openid = ? AND day = ? AND kind = 'credit'",
        )
        .bind(&t.openid)
        .bind(china_day(ctx.now_ms))
        .fetch_one(&mut **tx)
        .await?;
        let d = ctx.rules.decide(&Payment {
            amount_fen: t.amount,
            shop_number: &t.shop_number,
            authorization,
            credited_today,
        });
        let balance_after = balance + d.points;
        Self::set_balance(tx, &t.openid, balance_after, ctx.now_ms).await?;
        Self::insert_ledger(
            tx,
            &t.openid,
            "credit",
            &t.transaction_id,
            "",
            d.points,
            balance_after,
            &d.explanation,
            ctx.now_ms,
        )
        .await?;
        sqlx::query(
            "INSERT INTO payments (transaction_id, openid, appid, mchid, shop_number, amount, credited_points, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.transaction_id)
        .bind(&t.openid)
        .bind(&t.appid)
        .bind(&t.mchid)
        .bind(&t.shop_number)
        .bind(t.amount)
        .bind(d.points)
        .bind(ctx.now_ms)
        .execute(&mut **tx)
        .await?;
        let mut req = PointsNotifyRequest::new(
            &t.transaction_id,
            &t.appid,
            &t.openid,
            d.points > 0,
            d.points,
            china_time(ctx.now_ms),
        )
        .total_points(balance_after);
        if let Some(r) = &d.no_points_remarks {
            req = req.no_points_remarks(r);
        }
        if ctx.partner_mode {
            req = req.sub_mchid(&t.mchid);
        }
        let payload = serde_json::to_string(&req).unwrap_or_default();
        sqlx::query("INSERT INTO outbox (transaction_id, payload, state, due_at, created_at) VALUES (?, ?, 'pending', ?, ?)")
            .bind(&t.transaction_id)
            .bind(&payload)
            .bind(ctx.now_ms)
            .bind(ctx.now_ms)
            .execute(&mut **tx)
            .await?;
        // refunds that arrived before this payment
        let held: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, resource FROM inbox WHERE transaction_id = ? AND status = 'held' ORDER BY id")
                .bind(&t.transaction_id)
                .fetch_all(&mut **tx)
                .await?;
        for (id, resource) in held {
            if let Ok(Event::MallRefund(r)) =
                Event::decode(wechatpay::notify::MALL_REFUND_SUCCESS, resource.as_bytes())
            {
                Self::apply_refund(tx, &r, ctx).await?;
                sqlx::query("UPDATE inbox SET status = 'applied', note = 'applied when its payment arrived' WHERE id = ?")
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(Ingested::Payment { points: d.points })
    }

    async fn apply_refund(
        tx: &mut Tx,
        r: &MallRefund,
        ctx: &IngestContext<'_>,
    ) -> Result<i64, StoreError> {
        let (openid, amount, credited, refunded, entitled_before): (String, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT openid, amount, credited_points, refunded_amount, entitled_debit FROM payments WHERE transaction_id = ?",
        )
        .bind(&r.transaction_id)
        .fetch_one(&mut **tx)
        .await?;
        let entitled =
            refund_deduction(credited, amount, refunded, r.refund_amount, entitled_before);
        let (_, balance) = Self::member_state(tx, &openid).await?;
        let debit = if ctx.rules.allow_negative_balance {
            entitled
        } else {
            entitled.min(balance.max(0))
        };
        let balance_after = balance - debit;
        let mut rule = json!({
            "rules": ctx.rules.version(),
            "reason": "refund",
            "credit": credited,
            "pay_amount": amount,
            "refunded_before": refunded,
            "refund_amount": r.refund_amount,
            "entitled": entitled,
            "debited": debit,
        });
        if debit < entitled {
            rule["shortfall"] = json!(entitled - debit);
        }
        if r.pay_amount != amount {
            rule["pay_amount_in_callback"] = json!(r.pay_amount);
        }
        Self::set_balance(tx, &openid, balance_after, ctx.now_ms).await?;
        Self::insert_ledger(
            tx,
            &openid,
            "debit",
            &r.transaction_id,
            &r.refund_id,
            -debit,
            balance_after,
            &rule,
            ctx.now_ms,
        )
        .await?;
        sqlx::query(
            "UPDATE payments SET refunded_amount = MIN(amount, refunded_amount + ?), entitled_debit = entitled_debit + ? WHERE transaction_id = ?",
        )
        .bind(r.refund_amount)
        .bind(entitled)
        .bind(&r.transaction_id)
        .execute(&mut **tx)
        .await?;
        Ok(debit)
    }

    async fn ingest_refund(
        tx: &mut Tx,
        n: &Incoming,
        r: &MallRefund,
        ctx: &IngestContext<'_>,
    ) -> Result<Ingested, StoreError> {
        let key = (
            n.event_type.as_str(),
            r.transaction_id.as_str(),
            r.refund_id.as_str(),
        );
        if r.refund_amount <= 0 || r.refund_id.is_empty() || r.transaction_id.is_empty() {
            let p = format!(
                "refund_amount {} or empty refund_id/transaction_id",
                r.refund_amount
            );
            return Ok(
                match Self::insert_inbox(tx, key, n, &r.openid, "rejected", &p, ctx.now_ms).await? {
                    Some(_) => Ingested::Rejected(p),
                    None => Ingested::Duplicate,
                },
            );
        }
        let known: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM payments WHERE transaction_id = ?")
                .bind(&r.transaction_id)
                .fetch_optional(&mut **tx)
                .await?;
        let status = if known.is_some() { "applied" } else { "held" };
        if Self::insert_inbox(tx, key, n, &r.openid, status, "", ctx.now_ms)
            .await?
            .is_none()
        {
            return Ok(Ingested::Duplicate);
        }
        if known.is_none() {
            return Ok(Ingested::Held);
        }
        let points = Self::apply_refund(tx, r, ctx).await?;
        Ok(Ingested::Refund { points })
    }

    async fn retry_parked_inner(&self, ids: &[i64], now_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut n = 0;
        if ids.is_empty() {
            n += sqlx::query(
                "UPDATE outbox SET state = 'pending', due_at = ? WHERE state = 'parked'",
            )
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        for id in ids {
            n += sqlx::query(
                "UPDATE outbox SET state = 'pending', due_at = ? WHERE state = 'parked' AND id = ?",
            )
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn ingest_inner(
        &self,
        n: &Incoming,
        ctx: &IngestContext<'_>,
    ) -> Result<Ingested, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let out = match &n.event {
            Event::MallTransaction(t) => Self::ingest_payment(&mut tx, n, t, ctx).await?,
            Event::MallRefund(r) => Self::ingest_refund(&mut tx, n, r, ctx).await?,
            Event::MallAuth(a) => {
                let detail = format!("{}:{}", a.code, a.auth_type);
                let key = (n.event_type.as_str(), a.openid.as_str(), detail.as_str());
                match Self::insert_inbox(&mut tx, key, n, &a.openid, "applied", "", ctx.now_ms)
                    .await?
                {
                    None => Ingested::Duplicate,
                    Some(_) => {
                        let authorized =
                            i64::from(a.auth_type == AuthType::RegisteredAndAuthorizationMode);
                        sqlx::query(
                            "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at) VALUES (?, ?, ?, ?, 0, ?)
                             ON CONFLICT (openid) DO UPDATE SET authorized = excluded.authorized, auth_type = excluded.auth_type,
                                 code = excluded.code, updated_at = excluded.updated_at",
                        )
                        .bind(&a.openid)
                        .bind(authorized)
                        .bind(a.auth_type.as_str())
                        .bind(&a.code)
                        .bind(ctx.now_ms)
                        .execute(&mut *tx)
                        .await?;
                        Ingested::Authorization
                    }
                }
            }
            _ => {
                let key = (n.event_type.as_str(), n.notification_id.as_str(), "");
                match Self::insert_inbox(
                    &mut tx,
                    key,
                    n,
                    "",
                    "ignored",
                    "event type not handled",
                    ctx.now_ms,
                )
                .await?
                {
                    None => Ingested::Duplicate,
                    Some(_) => Ingested::Ignored,
                }
            }
        };
        crate::crash::point("before_commit");
        tx.commit().await?;
        Ok(out)
    }
}

impl Store for SqliteStore {
    /// The transaction runs in its own task: if the caller is cancelled (WeChat hung up, the
    /// handler timed out), it still commits or rolls back, and never leaves the single writer
    /// connection inside an open transaction.
    async fn ingest(&self, n: &Incoming, ctx: &IngestContext<'_>) -> Result<Ingested, StoreError> {
        let (me, n, rules) = (self.clone(), n.clone(), ctx.rules.clone());
        let (partner_mode, now_ms) = (ctx.partner_mode, ctx.now_ms);
        tokio::spawn(async move {
            let ctx = IngestContext {
                rules: &rules,
                partner_mode,
                now_ms,
            };
            me.ingest_inner(&n, &ctx).await
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let rows: Vec<(i64, String, String, i64, i64)> = sqlx::query_as(
            "UPDATE outbox SET state = 'inflight', lease_owner = ?, lease_until = ?, attempts = attempts + 1
             WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' AND due_at <= ? ORDER BY due_at, id LIMIT ?)
             RETURNING id, transaction_id, payload, attempts, created_at",
        )
        .bind(owner)
        .bind(now_ms + lease_ms)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.writer)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, transaction_id, payload, attempt, created_at)| Claimed {
                    id,
                    transaction_id,
                    payload,
                    attempt,
                    created_at,
                },
            )
            .collect())
    }

    async fn complete(
        &self,
        c: &Claimed,
        owner: &str,
        outcome: &SyncOutcome,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (state, due_at, error) = match outcome {
            SyncOutcome::Done => ("done", None, None),
            SyncOutcome::Retry { due_at, error } => {
                ("pending", Some(*due_at), Some(error.as_str()))
            }
            SyncOutcome::Parked { error } => ("parked", None, Some(error.as_str())),
            SyncOutcome::Dead { error } => ("dead", None, Some(error.as_str())),
        };
        let r = sqlx::query(
            "UPDATE outbox SET state = ?, due_at = COALESCE(?, due_at), last_error = COALESCE(?, last_error),
                 done_at = CASE WHEN ? = 'done' THEN ? ELSE done_at END, lease_owner = NULL, lease_until = NULL
             WHERE id = ? AND state = 'inflight' AND lease_owner = ? AND attempts = ?",
        )
        .bind(state)
        .bind(due_at)
        .bind(error)
        .bind(state)
        .bind(now_ms)
        .bind(c.id)
        .bind(owner)
        .bind(c.attempt)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn release(&self, owner: &str) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL WHERE state = 'inflight' AND lease_owner = ?",
        )
        .bind(owner)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }

    async fn rescue(&self, now_ms: i64) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL WHERE state = 'inflight' AND lease_until < ?",
        )
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }

    async fn retry_parked(&self, ids: &[i64], now_ms: i64) -> Result<u64, StoreError> {
        let (me, ids) = (self.clone(), ids.to_vec());
        tokio::spawn(async move { me.retry_parked_inner(&ids, now_ms).await })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn status(&self) -> Result<Status, StoreError> {
        let syncs: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM outbox GROUP BY state")
                .fetch_all(&self.reader)
                .await?;
        let inbox: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM inbox GROUP BY status")
                .fetch_all(&self.reader)
                .await?;
        let oldest_pending_at: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'inflight')",
        )
        .fetch_one(&self.reader)
        .await?;
        let parked: Vec<(i64, String, String, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, transaction_id, state, attempts, last_error FROM outbox WHERE state IN ('parked', 'dead') ORDER BY id LIMIT 1000",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(Status {
            syncs: syncs.into_iter().collect(),
            inbox: inbox.into_iter().collect(),
            oldest_pending_at,
            parked: parked
                .into_iter()
                .map(|(id, transaction_id, state, attempts, error)| ParkedSync {
                    id,
                    transaction_id,
                    state,
                    attempts,
                    error: error.unwrap_or_default(),
                })
                .collect(),
        })
    }

    async fn member(&self, openid: &str) -> Result<Option<MemberView>, StoreError> {
        let m: Option<(Option<i64>, i64)> =
            sqlx::query_as("SELECT authorized, balance FROM members WHERE openid = ?")
                .bind(openid)
                .fetch_optional(&self.reader)
                .await?;
        let Some((authorized, balance)) = m else {
            return Ok(None);
        };
        let rows: Vec<(String, String, String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT kind, transaction_id, refund_id, points, balance_after, rule, created_at FROM ledger WHERE openid = ? ORDER BY id",
        )
        .bind(openid)
        .fetch_all(&self.reader)
        .await?;
        Ok(Some(MemberView {
            openid: openid.to_string(),
            authorized: authorized.map(|a| a == 1),
            balance,
            entries: rows
                .into_iter()
                .map(
                    |(kind, transaction_id, refund_id, points, balance_after, rule, created_at)| {
                        LedgerEntry {
                            kind,
                            transaction_id,
                            refund_id,
                            points,
                            balance_after,
                            rule: serde_json::from_str(&rule).unwrap_or(Value::String(rule)),
                            created_at,
                        }
                    },
                )
                .collect(),
        }))
    }

    async fn audit(&self) -> Result<Audit, StoreError> {
        let credits: Vec<(String, i64)> =
            sqlx::query_as("SELECT transaction_id, points FROM ledger WHERE kind = 'credit'")
                .fetch_all(&self.reader)
                .await?;
        let (debits, points_deducted): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(-SUM(points), 0) FROM ledger WHERE kind = 'debit'",
        )
        .fetch_one(&self.reader)
        .await?;
        let sync_latencies_ms: Vec<i64> = sqlx::query_scalar(
            "SELECT done_at - created_at FROM outbox WHERE state = 'done' ORDER BY 1",
        )
        .fetch_all(&self.reader)
        .await?;
        let unbalanced_members: Vec<String> = sqlx::query_scalar(
            "SELECT m.openid FROM members m LEFT JOIN (SELECT openid, SUM(points) AS total FROM ledger GROUP BY openid) l
             ON l.openid = m.openid WHERE m.balance != COALESCE(l.total, 0)",
        )
        .fetch_all(&self.reader)
        .await?;
        let payments_without_sync: Vec<String> = sqlx::query_scalar(
            "SELECT p.transaction_id FROM payments p LEFT JOIN outbox o ON o.transaction_id = p.transaction_id WHERE o.id IS NULL",
        )
        .fetch_all(&self.reader)
        .await?;
        let held_refunds: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE status = 'held'")
                .fetch_one(&self.reader)
                .await?;
        Ok(Audit {
            points_issued: credits.iter().map(|(_, p)| p).sum(),
            credits: credits.into_iter().collect(),
            debits,
            points_deducted,
            sync_latencies_ms,
            unbalanced_members,
            payments_without_sync,
            held_refunds,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}
