//! The lease rows, their contracts and the ledger, inside a caller's transaction or on a
//! reader connection.

use sqlx::{Sqlite, Transaction};

use super::encode::*;
use crate::error::{Context as _, StoreError};
use crate::model::*;

pub(crate) use crate::codec::{LEASE_COLUMNS, lease_from_row};

pub(crate) async fn load_lease(
    conn: &mut sqlx::SqliteConnection,
    id: &str,
) -> Result<Option<LeaseRecord>, StoreError> {
    let row = sqlx::query(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE lease_id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .during("reading a lease")?;
    let Some(row) = row else { return Ok(None) };
    let mut lease = lease_from_row(&row)?;
    lease.contracts = load_contracts(conn, id).await?;
    Ok(Some(lease))
}

pub(crate) async fn load_contracts(
    conn: &mut sqlx::SqliteConnection,
    lease_id: &str,
) -> Result<Vec<ContractRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT contract_id, offer_id, usd_per_hour, created_unix_ms, gone_unix_ms \
         FROM lease_contracts WHERE lease_id = $1 ORDER BY position",
    )
    .bind(lease_id)
    .fetch_all(&mut *conn)
    .await
    .during("reading lease contracts")?;
    rows.iter()
        .map(|row| {
            let gone: Option<i64> = get(row, "gone_unix_ms")?;
            Ok(ContractRecord {
                contract_id: to_u64(get(row, "contract_id")?),
                offer_id: to_u64(get(row, "offer_id")?),
                usd_per_hour: get(row, "usd_per_hour")?,
                created_unix_ms: to_u64(get(row, "created_unix_ms")?),
                gone_unix_ms: gone.map(to_u64),
            })
        })
        .collect()
}

pub(crate) async fn write_contracts(
    tx: &mut Transaction<'static, Sqlite>,
    lease: &LeaseRecord,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM lease_contracts WHERE lease_id = $1")
        .bind(lease.lease_id.as_str())
        .execute(&mut **tx)
        .await
        .during("replacing lease contracts")?;
    for (position, c) in lease.contracts.iter().enumerate() {
        sqlx::query(
            "INSERT INTO lease_contracts (lease_id, position, contract_id, offer_id, \
             usd_per_hour, created_unix_ms, gone_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(lease.lease_id.as_str())
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(to_i64(c.contract_id))
        .bind(to_i64(c.offer_id))
        .bind(c.usd_per_hour)
        .bind(to_i64(c.created_unix_ms))
        .bind(c.gone_unix_ms.map(to_i64))
        .execute(&mut **tx)
        .await
        .during("recording a lease contract")?;
    }
    Ok(())
}

pub(crate) async fn ledger_sum(
    tx: &mut Transaction<'static, Sqlite>,
    column: &'static str,
    value: SumKey<'_>,
) -> Result<i64, StoreError> {
    let sql = format!("SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE {column} = $1");
    let query = sqlx::query_scalar::<_, i64>(&sql);
    let query = match value {
        SumKey::Text(text) => query.bind(text.to_owned()),
        SumKey::Int(int) => query.bind(int),
    };
    query.fetch_one(&mut **tx).await.during("summing the ledger")
}

pub(crate) enum SumKey<'a> {
    Text(&'a str),
    Int(i64),
}

pub(crate) async fn append_ledger(
    tx: &mut Transaction<'static, Sqlite>,
    lease: &LeaseRecord,
    kind: LedgerKind,
    amount_micros: i64,
    at_unix_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ledger (lease_id, job_id, day, kind, amount_micros, at_unix_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(lease.lease_id.as_str())
    .bind(lease.job_id.as_str())
    .bind(to_i64(lease.day))
    .bind(kind.as_str())
    .bind(amount_micros)
    .bind(to_i64(at_unix_ms))
    .execute(&mut **tx)
    .await
    .during("appending to the ledger")?;
    Ok(())
}
