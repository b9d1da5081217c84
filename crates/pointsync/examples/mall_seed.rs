//! Seeds a pointsync database for the mall API benchmark: MEMBERS members, each with a payment and
//! a credit per ledger entry, ROWS ledger entries in all (100 per member by default).
//! Usage: cargo run --release -p pointsync --example mall_seed DB [ROWS] [MEMBERS]

use std::time::Duration;

use pointsync::store::sqlite::SqliteStore;
use rusqlite::params;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let db = args.next().ok_or("usage: mall_seed DB [ROWS] [MEMBERS]")?;
    let rows: i64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let members: i64 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    // created and migrated by the store itself, then filled in bulk
    drop(SqliteStore::open_path(db.as_ref(), Duration::from_secs(5)).await?);
    let mut c = rusqlite::Connection::open(&db)?;
    c.pragma_update(None, "synchronous", "OFF")?;
    let tx = c.transaction()?;
    let t0: i64 = 1_796_000_000_000;
    {
        let mut ledger = tx.prepare(
            "INSERT INTO ledger (openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at)
             VALUES (?, 'credit', ?, '', ?, ?, ?, ?, ?)",
        )?;
        let mut payment = tx.prepare(
            "INSERT INTO payments (transaction_id, openid, appid, mchid, shop_number, amount, credited_points, created_at)
             VALUES (?, ?, 'wx1234567890abcdef', '1230000109', 'S001', ?, ?, ?)",
        )?;
        let mut balances = vec![0i64; members as usize];
        for i in 0..rows {
            let m = i % members;
            let openid = format!("oBench{m:08}");
            let txid = format!("42{i:018}");
            let points = 10 + i % 90;
            balances[m as usize] += points;
            let at = t0 + i * 10;
            let rule = format!(
                r#"{{"rules":"a1b2c3d4e5f6","amount_fen":{},"shop_number":"S001","milli_points_per_yuan":1000,"rounding":"floor","computed":{points},"reason":"credited"}}"#,
                points * 100
            );
            ledger.execute(params![
                openid,
                txid,
                points,
                balances[m as usize],
                at / 86_400_000,
                rule,
                at
            ])?;
            payment.execute(params![txid, openid, points * 100, points, at])?;
        }
        let mut member = tx.prepare(
            "INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at, auth_state, auth_source, auth_learned_at)
             VALUES (?, 1, 'REGISTERED_AND_AUTHORIZATION_MODE', 'C1', ?, ?, 'AUTHORIZED', 'callback', ?)",
        )?;
        for (m, balance) in balances.iter().enumerate() {
            member.execute(params![format!("oBench{m:08}"), balance, t0, t0])?;
        }
    }
    tx.commit()?;
    println!("seeded {db}: {rows} ledger entries and payments over {members} members");
    Ok(())
}
