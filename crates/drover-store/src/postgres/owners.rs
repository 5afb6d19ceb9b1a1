//! [`JobOwners`] on PostgreSQL: the `owner_replica` and `cancel_requested` columns of jobs
//! (migration 4). Liveness is judged by the database server's clock (as in [`super::fleet`]).

use std::sync::Arc;

use drover_proto::{JobId, JobPhase};

use super::PgStore;
use crate::codec::{Columns as _, JOB_COLUMNS, job_from_row, phase_str};
use crate::error::{Context as _, StoreError};
use crate::owners::{JobOwners, OwnedJob};

/// The database clock in Unix milliseconds, as SQL.
const NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// `state NOT IN (...)`: the job is unfinished.
fn unfinished() -> String {
    format!(
        "state NOT IN ('{}', '{}', '{}')",
        phase_str(JobPhase::Succeeded),
        phase_str(JobPhase::Failed),
        phase_str(JobPhase::Cancelled)
    )
}

impl JobOwners for PgStore {
    fn with_replica(&self, replica_id: &str) -> Self {
        Self { replica: Some(Arc::from(replica_id)), ..self.clone() }
    }

    fn replica(&self) -> Option<&str> {
        self.replica.as_deref()
    }

    async fn orphaned_jobs(&self) -> Result<Vec<OwnedJob>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS}, owner_replica FROM jobs WHERE {} \
               AND owner_replica IS DISTINCT FROM $1 \
               AND (owner_replica IS NULL OR owner_replica NOT IN \
                    (SELECT replica_id FROM replicas WHERE expires_unix_ms > {NOW_MS})) \
             ORDER BY seq",
            unfinished()
        ))
        .bind(self.replica.as_deref())
        .fetch_all(&self.pool)
        .await
        .during("listing orphaned jobs")?;
        rows.iter()
            .map(|row| {
                Ok(OwnedJob {
                    job: job_from_row(row)?,
                    owner_replica: row.opt_text("owner_replica")?,
                })
            })
            .collect()
    }

    async fn take_over_job(&self, id: &JobId, from: Option<&str>) -> Result<bool, StoreError> {
        self.track(async {
            // One statement: the row lock makes a second racer re-check the owner after the
            // first commits, and find it changed.
            let done = sqlx::query(&format!(
                "UPDATE jobs SET owner_replica = $3 \
                 WHERE id = $1 AND owner_replica IS NOT DISTINCT FROM $2 AND {}",
                unfinished()
            ))
            .bind(id.as_str())
            .bind(from)
            .bind(self.replica.as_deref())
            .execute(&self.pool)
            .await
            .during("taking over a job")?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn owns_job(&self, id: &JobId) -> Result<bool, StoreError> {
        let owner: Option<Option<String>> =
            sqlx::query_scalar("SELECT owner_replica FROM jobs WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .during("reading a job's owner")?;
        Ok(owner.is_some_and(|owner| owner.as_deref() == self.replica.as_deref()))
    }

    async fn request_cancel(&self, id: &JobId, reason: &str) -> Result<bool, StoreError> {
        self.track(async {
            let done = sqlx::query(&format!(
                "UPDATE jobs SET cancel_requested = $2 WHERE id = $1 AND {}",
                unfinished()
            ))
            .bind(id.as_str())
            .bind(reason)
            .execute(&self.pool)
            .await
            .during("requesting a cancel")?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn cancel_requests(&self) -> Result<Vec<(JobId, String)>, StoreError> {
        self.track(async {
            // The old value comes back through a self-join on the locked row, so a request
            // is returned exactly by the statement that clears it.
            let rows = sqlx::query(&format!(
                "UPDATE jobs SET cancel_requested = NULL FROM \
                   (SELECT seq, cancel_requested AS reason FROM jobs \
                    WHERE cancel_requested IS NOT NULL AND owner_replica IS NOT DISTINCT FROM $1 \
                      AND {} FOR UPDATE) AS asked \
                 WHERE jobs.seq = asked.seq RETURNING jobs.id, asked.reason",
                unfinished()
            ))
            .bind(self.replica.as_deref())
            .fetch_all(&self.pool)
            .await
            .during("collecting cancel requests")?;
            rows.iter()
                .map(|row| {
                    let id = JobId::new(row.text("id")?)
                        .map_err(|_| StoreError::Corrupt { what: "job id" })?;
                    Ok((id, row.text("reason")?))
                })
                .collect()
        })
        .await
    }
}
