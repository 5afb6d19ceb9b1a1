//! The lease rows of [`super::PgStore`]: reading a lease with its contracts, replacing its
//! contracts, and the ledger's sums and entries.

use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::store::Tx;
use crate::codec::{CONTRACT_COLUMNS, LEASE_COLUMNS, contract_from_row, lease_from_row, to_i64};
use crate::error::{Context, StoreError};
use crate::model::*;

pub(super) async fn load_lease(
    conn: &mut PgConnection,
    id: &str,
    lock: bool,
) -> Result<Option<LeaseRecord>, StoreError> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let row =
        sqlx::query(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE lease_id = $1{suffix}"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .during("reading a lease")?;
    let Some(row) = row else { return Ok(None) };
    let mut lease = lease_from_row(&row)?;
    lease.contracts = load_contracts(conn, id).await?;
    Ok(Some(lease))
}

pub(super) async fn load_contracts(
    conn: &mut PgConnection,
    lease_id: &str,
) -> Result<Vec<ContractRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {CONTRACT_COLUMNS} FROM lease_contracts WHERE lease_id = $1 ORDER BY position"
    ))
    .bind(lease_id)
    .fetch_all(conn)
    .await
    .during("reading lease contracts")?;
    rows.iter().map(contract_from_row).collect()
}

pub(super) async fn write_contracts(tx: &mut Tx, lease: &LeaseRecord) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM lease_contracts WHERE lease_id = $1")
        .bind(lease.lease_id.as_str())
        .execute(&mut **tx)
        .await
        .during("replacing lease contracts")?;
    if lease.contracts.is_empty() {
        return Ok(());
    }
    let mut insert = QueryBuilder::<Postgres>::new(
        "INSERT INTO lease_contracts (lease_id, position, contract_id, offer_id, usd_per_hour, \
         created_unix_ms, gone_unix_ms) ",
    );
    insert.push_values(lease.contracts.iter().enumerate(), |mut row, (position, c)| {
        row.push_bind(lease.lease_id.as_str())
            .push_bind(i64::try_from(position).unwrap_or(i64::MAX))
            .push_bind(to_i64(c.contract_id))
            .push_bind(to_i64(c.offer_id))
            .push_bind(c.usd_per_hour)
            .push_bind(to_i64(c.created_unix_ms))
            .push_bind(c.gone_unix_ms.map(to_i64));
    });
    insert.build().execute(&mut **tx).await.during("recording lease contracts")?;
    Ok(())
}

/// The ledger's sum over `column = value`, as a 64-bit integer.
pub(super) async fn ledger_sum(
    conn: &mut PgConnection,
    column: &'static str,
    value: SumKey<'_>,
) -> Result<i64, StoreError> {
    let sql = format!(
        "SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) FROM ledger WHERE {column} = $1"
    );
    let query = sqlx::query_scalar::<_, i64>(&sql);
    let query = match value {
        SumKey::Text(text) => query.bind(text.to_owned()),
        SumKey::Int(int) => query.bind(int),
    };
    query.fetch_one(conn).await.during("summing the ledger")
}

pub(super) enum SumKey<'a> {
    Text(&'a str),
    Int(i64),
}

pub(super) async fn append_ledger(
    tx: &mut Tx,
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
