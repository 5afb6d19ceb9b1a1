//! [`JobOwners`] on SQLite: the `owner_replica` and `cancel_requested` columns of jobs
//! (migration 4). Liveness is judged by this host's clock, which every process sharing the
//! file shares (as in [`super::fleet`]).

use std::sync::Arc;

use drover_proto::{JobId, JobPhase};
use sqlx::Row as _;

use super::{JOB_COLUMNS, SqliteStore, job_from_row, now_unix_ms, phase_str, to_i64};
use crate::error::{Context as _, StoreError};
use crate::owners::{JobOwners, OwnedJob};

/// `state NOT IN (...)`: the job is unfinished.
fn unfinished() -> String {
    format!(
        "state NOT IN ('{}', '{}', '{}')",
        phase_str(JobPhase::Succeeded),
        phase_str(JobPhase::Failed),
        phase_str(JobPhase::Cancelled)
    )
}

impl JobOwners for SqliteStore {
    fn with_replica(&self, replica_id: &str) -> Self {
        Self { replica: Some(Arc::from(replica_id)), ..self.clone() }
    }

    fn replica(&self) -> Option<&str> {
        self.replica.as_deref()
    }

    async fn orphaned_jobs(&self) -> Result<Vec<OwnedJob>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS}, owner_replica FROM jobs WHERE {} \
               AND owner_replica IS NOT $1 \
               AND (owner_replica IS NULL OR owner_replica NOT IN \
                    (SELECT replica_id FROM replicas WHERE expires_unix_ms > $2)) \
             ORDER BY seq",
            unfinished()
        ))
        .bind(self.replica.as_deref())
        .bind(to_i64(now_unix_ms()))
        .fetch_all(&self.reader)
        .await
        .during("listing orphaned jobs")?;
        rows.iter()
            .map(|row| {
                Ok(OwnedJob {
                    job: job_from_row(row)?,
                    owner_replica: row.try_get("owner_replica").during("decoding a row")?,
                })
            })
            .collect()
    }

    async fn take_over_job(&self, id: &JobId, from: Option<&str>) -> Result<bool, StoreError> {
        self.track(async {
            let mut tx = self.begin("taking over a job").await?;
            let done = sqlx::query(&format!(
                "UPDATE jobs SET owner_replica = $3 WHERE id = $1 AND owner_replica IS $2 AND {}",
                unfinished()
            ))
            .bind(id.as_str())
            .bind(from)
            .bind(self.replica.as_deref())
            .execute(&mut *tx)
            .await
            .during("taking over a job")?;
            tx.commit().await.during("taking over a job")?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn owns_job(&self, id: &JobId) -> Result<bool, StoreError> {
        let owner: Option<Option<String>> =
            sqlx::query_scalar("SELECT owner_replica FROM jobs WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.reader)
                .await
                .during("reading a job's owner")?;
        Ok(owner.is_some_and(|owner| owner.as_deref() == self.replica.as_deref()))
    }

    async fn request_cancel(&self, id: &JobId, reason: &str) -> Result<bool, StoreError> {
        self.track(async {
            let mut tx = self.begin("requesting a cancel").await?;
            let done = sqlx::query(&format!(
                "UPDATE jobs SET cancel_requested = $2 WHERE id = $1 AND {}",
                unfinished()
            ))
            .bind(id.as_str())
            .bind(reason)
            .execute(&mut *tx)
            .await
            .during("requesting a cancel")?;
            tx.commit().await.during("requesting a cancel")?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn cancel_requests(&self) -> Result<Vec<(JobId, String)>, StoreError> {
        self.track(async {
            // One writer at a time (BEGIN IMMEDIATE): no request lands between the read and
            // the clear.
            let mut tx = self.begin("collecting cancel requests").await?;
            let predicate = format!(
                "cancel_requested IS NOT NULL AND owner_replica IS $1 AND {}",
                unfinished()
            );
            let rows = sqlx::query(&format!(
                "SELECT id, cancel_requested FROM jobs WHERE {predicate} ORDER BY seq"
            ))
            .bind(self.replica.as_deref())
            .fetch_all(&mut *tx)
            .await
            .during("collecting cancel requests")?;
            if !rows.is_empty() {
                sqlx::query(&format!("UPDATE jobs SET cancel_requested = NULL WHERE {predicate}"))
                    .bind(self.replica.as_deref())
                    .execute(&mut *tx)
                    .await
                    .during("collecting cancel requests")?;
            }
            tx.commit().await.during("collecting cancel requests")?;
            rows.iter()
                .map(|row| {
                    let id: String = row.try_get("id").during("decoding a row")?;
                    let reason: String =
                        row.try_get("cancel_requested").during("decoding a row")?;
                    Ok((
                        JobId::new(id).map_err(|_| StoreError::Corrupt { what: "job id" })?,
                        reason,
                    ))
                })
                .collect()
        })
        .await
    }
}
