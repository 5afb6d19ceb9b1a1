//! The job rows, their events, idempotency keys and audit rows, inside a caller's
//! transaction.

use drover_proto::api::{AuditEvent, Job, JobEvent, JobEventKind};
use drover_proto::{JobId, JobPhase, JobState};
use sqlx::{Sqlite, Transaction};

use super::encode::*;
use crate::error::{Context as _, StoreError};
use crate::model::*;

pub(crate) use crate::codec::{JOB_COLUMNS, event_from_row, job_from_row, transition_allowed};

/// A job's sequence number, state and owner.
pub(crate) async fn job_seq_state_owner(
    tx: &mut Transaction<'static, Sqlite>,
    id: &JobId,
) -> Result<Option<(i64, JobPhase, Option<String>)>, StoreError> {
    let row = sqlx::query("SELECT seq, state, owner_replica FROM jobs WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await
        .during("reading a job")?;
    match row {
        None => Ok(None),
        Some(row) => Ok(Some((
            get(&row, "seq")?,
            parse_phase(&get::<String>(&row, "state")?)?,
            get(&row, "owner_replica")?,
        ))),
    }
}

/// Appends an event inside an open transaction; the caller has checked the job is not
/// terminal.
pub(crate) async fn insert_event(
    tx: &mut Transaction<'static, Sqlite>,
    job_seq: i64,
    at_unix_ms: u64,
    event: &JobEventKind,
) -> Result<JobEvent, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "UPDATE jobs SET last_event_seq = last_event_seq + 1 WHERE seq = $1 RETURNING last_event_seq",
    )
    .bind(job_seq)
    .fetch_one(&mut **tx)
    .await
    .during("numbering a job event")?;
    sqlx::query(
        "INSERT INTO job_events (job_seq, seq, at_unix_ms, kind, body) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(job_seq)
    .bind(seq)
    .bind(to_i64(at_unix_ms))
    .bind(event.name())
    .bind(to_json(event, "job event")?)
    .execute(&mut **tx)
    .await
    .during("appending a job event")?;
    Ok(JobEvent { seq: to_u64(seq), at_unix_ms, event: event.clone() })
}

pub(crate) async fn load_job(
    executor: impl sqlx::Executor<'_, Database = Sqlite>,
    id: &str,
) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
        .during("reading a job")?;
    row.as_ref().map(job_from_row).transpose()
}

/// What inserting one submission did inside a batch's transaction.
#[derive(Debug)]
pub(crate) enum Inserted {
    /// A new job, with its first event.
    New,
    /// The idempotency key matched an earlier submission of the same request: that job.
    Replayed(Box<Job>),
}

impl Inserted {
    /// The answer to the submission of `new`, once the transaction has committed.
    pub(crate) fn into_submitted(self, new: NewJob) -> Submitted {
        match self {
            Self::Replayed(job) => Submitted { job: *job, replayed: true },
            Self::New => Submitted {
                job: Job {
                    id: new.id,
                    state: JobPhase::Queued,
                    spec: new.spec,
                    submitted_by: new.submitted_by,
                    created_unix_ms: new.at_unix_ms,
                    updated_unix_ms: new.at_unix_ms,
                    message: None,
                    output: None,
                },
                replayed: false,
            },
        }
    }
}

/// Inserts one submitted job, its labels, its first event (`queued`, numbered 1 by the job
/// insert itself) and its idempotency key, inside an open transaction that the caller commits.
/// The refusals (a repeated id, an idempotency key reused for a different request) are
/// decided before anything is written.
pub(crate) async fn insert_job(
    tx: &mut Transaction<'static, Sqlite>,
    new: &NewJob,
    owner: Option<&str>,
) -> Result<Inserted, StoreError> {
    if let Some(idem) = &new.idempotency {
        let earlier = sqlx::query(
            "SELECT request_sha256, job_id FROM idempotency_keys WHERE actor = $1 AND key = $2",
        )
        .bind(&new.submitted_by)
        .bind(&idem.key)
        .fetch_optional(&mut **tx)
        .await
        .during("checking an idempotency key")?;
        if let Some(row) = earlier {
            let digest: String = get(&row, "request_sha256")?;
            if digest != idem.request_sha256 {
                return Err(StoreError::IdempotencyConflict);
            }
            let job_id: String = get(&row, "job_id")?;
            let job = load_job(&mut **tx, &job_id)
                .await?
                .ok_or(StoreError::Corrupt { what: "idempotency key's job" })?;
            return Ok(Inserted::Replayed(Box::new(job)));
        }
    }
    let spec_json = to_json(&new.spec, "job spec")?;
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, driver, action, state, submitted_by, spec, created_unix_ms, \
         updated_unix_ms, last_event_seq, owner_replica) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, \
         1, $8) \
         ON CONFLICT (id) DO NOTHING RETURNING seq",
    )
    .bind(new.id.as_str())
    .bind(new.spec.driver.as_str())
    .bind(new.spec.action.as_str())
    .bind(phase_str(JobPhase::Queued))
    .bind(&new.submitted_by)
    .bind(&spec_json)
    .bind(to_i64(new.at_unix_ms))
    .bind(owner)
    .fetch_optional(&mut **tx)
    .await
    .during("inserting a job")?;
    let Some(row) = inserted else {
        return Err(StoreError::DuplicateJob(new.id.clone()));
    };
    let job_seq: i64 = get(&row, "seq")?;
    for (key, value) in &new.spec.labels {
        sqlx::query("INSERT INTO job_labels (job_seq, key, value) VALUES ($1, $2, $3)")
            .bind(job_seq)
            .bind(key)
            .bind(value)
            .execute(&mut **tx)
            .await
            .during("inserting job labels")?;
    }
    let queued = JobEventKind::JobState(JobState {
        job_id: new.id.clone(),
        state: JobPhase::Queued,
        message: None,
    });
    sqlx::query(
        "INSERT INTO job_events (job_seq, seq, at_unix_ms, kind, body) VALUES ($1, 1, $2, $3, $4)",
    )
    .bind(job_seq)
    .bind(to_i64(new.at_unix_ms))
    .bind(queued.name())
    .bind(to_json(&queued, "job event")?)
    .execute(&mut **tx)
    .await
    .during("appending a job event")?;
    if let Some(idem) = &new.idempotency {
        sqlx::query(
            "INSERT INTO idempotency_keys (actor, key, request_sha256, job_id, \
             created_unix_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&new.submitted_by)
        .bind(&idem.key)
        .bind(&idem.request_sha256)
        .bind(new.id.as_str())
        .bind(to_i64(new.at_unix_ms))
        .execute(&mut **tx)
        .await
        .during("recording an idempotency key")?;
    }
    Ok(Inserted::New)
}

/// Inserts one audit event inside `tx`; returns its position in the log.
pub(crate) async fn insert_audit(
    tx: &mut Transaction<'static, Sqlite>,
    event: &AuditEvent,
) -> Result<i64, StoreError> {
    let line = to_json(event, "audit event")?;
    sqlx::query_scalar(
        "INSERT INTO audit_events (timestamp, request_id, actor, action, resource, result, line) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&event.timestamp)
    .bind(event.request_id.as_deref())
    .bind(&event.actor)
    .bind(&event.action)
    .bind(&event.resource)
    .bind(&event.result)
    .bind(line)
    .fetch_one(&mut **tx)
    .await
    .during("appending an audit event")
}
