//! [`Store`] for [`PgStore`]: the SQLite store's steps in portable SQL, each read-then-write
//! step locking what it reads (the table in the parent module).

use std::sync::atomic::Ordering;

use drover_proto::api::{AuditEvent, Job, JobEvent, JobEventKind};
use drover_proto::{JobId, JobPhase, JobState, LeaseId, LeasePhase};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Transaction};

use super::leases::{
    SumKey, append_ledger, ledger_sum, load_contracts, load_lease, write_contracts,
};
use super::{BUDGET_LOCK, DAY_MS, NOW_MS, PgStore};
use crate::Store;
use crate::codec::{
    Columns, JOB_COLUMNS, LEASE_COLUMNS, LEASE_LEDGER_QUERY, event_from_row, from_json,
    job_from_row, lease_from_row, lease_ledger_from_row, lease_phase_str, ledger_report,
    parse_phase, phase_str, to_i64, to_json, to_u64, transition_allowed,
};
use crate::error::{Context, StoreError};
use crate::model::*;

pub(super) type Tx = Transaction<'static, Postgres>;

async fn load_job(conn: &mut PgConnection, id: &str) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
        .during("reading a job")?;
    row.as_ref().map(job_from_row).transpose()
}

/// Inserts a job, its labels, its first event and its idempotency key in `tx`; `Ok(Some(job))`
/// when the key replays an earlier submission of the same request.
async fn insert_job(
    tx: &mut Tx,
    new: &NewJob,
    owner: Option<&str>,
) -> Result<Option<Job>, StoreError> {
    if let Some(idem) = &new.idempotency {
        // Two replicas handling the same key at once: the second waits here, then replays.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
            .bind(&new.submitted_by)
            .bind(&idem.key)
            .execute(&mut **tx)
            .await
            .during("locking an idempotency key")?;
        let earlier = sqlx::query(
            "SELECT request_sha256, job_id FROM idempotency_keys WHERE actor = $1 AND key = $2",
        )
        .bind(&new.submitted_by)
        .bind(&idem.key)
        .fetch_optional(&mut **tx)
        .await
        .during("checking an idempotency key")?;
        if let Some(row) = earlier {
            if row.text("request_sha256")? != idem.request_sha256 {
                return Err(StoreError::IdempotencyConflict);
            }
            let job = load_job(tx, &row.text("job_id")?)
                .await?
                .ok_or(StoreError::Corrupt { what: "idempotency key's job" })?;
            return Ok(Some(job));
        }
    }
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (id, driver, action, state, submitted_by, spec, created_unix_ms, \
         updated_unix_ms, last_event_seq, owner_replica) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 1, $8) ON CONFLICT (id) DO NOTHING RETURNING seq",
    )
    .bind(new.id.as_str())
    .bind(new.spec.driver.as_str())
    .bind(new.spec.action.as_str())
    .bind(phase_str(JobPhase::Queued))
    .bind(&new.submitted_by)
    .bind(to_json(&new.spec, "job spec")?)
    .bind(to_i64(new.at_unix_ms))
    .bind(owner)
    .fetch_optional(&mut **tx)
    .await
    .during("inserting a job")?;
    let Some(job_seq) = inserted else {
        return Err(StoreError::DuplicateJob(new.id.clone()));
    };
    if !new.spec.labels.is_empty() {
        let mut labels =
            QueryBuilder::<Postgres>::new("INSERT INTO job_labels (job_seq, key, value) ");
        labels.push_values(&new.spec.labels, |mut row, (key, value)| {
            row.push_bind(job_seq).push_bind(key.as_str()).push_bind(value.as_str());
        });
        labels.build().execute(&mut **tx).await.during("inserting job labels")?;
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
            "INSERT INTO idempotency_keys (actor, key, request_sha256, job_id, created_unix_ms) \
             VALUES ($1, $2, $3, $4, $5)",
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
    Ok(None)
}

fn audit_insert<'a>(
    events: impl IntoIterator<Item = (&'a AuditEvent, &'a String)>,
) -> QueryBuilder<'a, Postgres> {
    let mut insert = QueryBuilder::<Postgres>::new(
        "INSERT INTO audit_events (timestamp, request_id, actor, action, resource, result, line) ",
    );
    insert.push_values(events, |mut row, (event, line)| {
        row.push_bind(event.timestamp.as_str())
            .push_bind(event.request_id.as_deref())
            .push_bind(event.actor.as_str())
            .push_bind(event.action.as_str())
            .push_bind(event.resource.as_str())
            .push_bind(event.result.as_str())
            .push_bind(line.as_str());
    });
    insert
}

/// Audit rows per statement: seven parameters a row, under PostgreSQL's 65,535.
const AUDIT_ROWS: usize = 1024;

impl Store for PgStore {
    async fn submit_job(&self, new: NewJob) -> Result<Submitted, StoreError> {
        self.track(async {
            let mut tx = self.begin("accepting a job").await?;
            let replayed = insert_job(&mut tx, &new, self.replica.as_deref()).await?;
            tx.commit().await.during("committing a job")?;
            Ok(match replayed {
                Some(job) => Submitted { job, replayed: true },
                None => Submitted {
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
            })
        })
        .await
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let mut conn = self.pool.acquire().await.during("reading a job")?;
        load_job(&mut conn, id.as_str()).await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        let limit = filter.limit.max(1);
        let (label_key, label_value) = match &filter.label {
            Some((k, v)) => (Some(k.as_str()), Some(v.as_str())),
            None => (None, None),
        };
        // Each optional filter is typed by its cast, which PostgreSQL needs to plan `$n IS NULL`.
        let sql = format!(
            "SELECT seq, {JOB_COLUMNS} FROM jobs \
             WHERE ($1::TEXT IS NULL OR state = $1) \
               AND ($2::TEXT IS NULL OR driver = $2) \
               AND ($3::BIGINT IS NULL OR seq < $3) \
               AND ($4::TEXT IS NULL OR EXISTS (SELECT 1 FROM job_labels l \
                    WHERE l.job_seq = jobs.seq AND l.key = $4 AND l.value = $5)) \
               AND ($7::TEXT IS NULL OR submitted_by = $7) \
             ORDER BY seq DESC LIMIT $6"
        );
        let rows: Vec<PgRow> = sqlx::query(&sql)
            .bind(filter.state.map(phase_str))
            .bind(filter.driver.as_deref())
            .bind(filter.before)
            .bind(label_key)
            .bind(label_value)
            .bind(i64::from(limit) + 1)
            .bind(filter.submitted_by.as_deref())
            .fetch_all(&self.pool)
            .await
            .during("listing jobs")?;
        let more = rows.len() > limit as usize;
        let mut jobs = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last_seq = None;
        for row in rows.iter().take(limit as usize) {
            jobs.push(job_from_row(row)?);
            last_seq = Some(row.int("seq")?);
        }
        Ok(JobPage { jobs, next_cursor: if more { last_seq } else { None } })
    }

    async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state NOT IN ($1, $2, $3) ORDER BY seq"
        ))
        .bind(phase_str(JobPhase::Succeeded))
        .bind(phase_str(JobPhase::Failed))
        .bind(phase_str(JobPhase::Cancelled))
        .fetch_all(&self.pool)
        .await
        .during("listing unfinished jobs")?;
        rows.iter().map(job_from_row).collect()
    }

    async fn append_event(
        &self,
        id: &JobId,
        at_unix_ms: u64,
        event: JobEventKind,
    ) -> Result<JobEvent, StoreError> {
        self.track(async {
            let mut tx = self.begin("appending a job event").await?;
            let row = sqlx::query("SELECT seq, state, owner_replica FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .during("reading a job")?
                .ok_or_else(|| StoreError::JobNotFound(id.clone()))?;
            let job_seq = row.int("seq")?;
            let state = parse_phase(&row.text("state")?)?;
            // The fence: only the job's owner writes to it (crate::owners).
            if row.opt_text("owner_replica")?.as_deref() != self.replica.as_deref() {
                return Err(StoreError::JobTakenOver(id.clone()));
            }
            if state.is_terminal() {
                return Err(StoreError::JobFinished { job_id: id.clone(), state });
            }
            let (phase, message, output) = match &event {
                JobEventKind::JobState(change) => {
                    if !transition_allowed(state, change.state) {
                        return Err(StoreError::JobFinished { job_id: id.clone(), state });
                    }
                    (Some(phase_str(change.state)), change.message.as_deref(), None)
                }
                JobEventKind::JobResult(result) => {
                    let output =
                        result.output.as_ref().map(|o| to_json(o, "job output")).transpose()?;
                    (None, None, Some(output))
                }
                JobEventKind::JobProgress(_) | JobEventKind::JobLog(_) => (None, None, None),
            };
            // One statement numbers the event and applies it: state and message for a state
            // change, output for a result, only the numbering for the rest.
            let seq: i64 = sqlx::query_scalar(
                "UPDATE jobs SET last_event_seq = last_event_seq + 1, \
                   state = COALESCE($2, state), \
                   message = CASE WHEN $2::TEXT IS NULL THEN message ELSE $3 END, \
                   output = CASE WHEN $4 THEN $5 ELSE output END, \
                   updated_unix_ms = CASE WHEN $2::TEXT IS NULL AND NOT $4 THEN updated_unix_ms ELSE $6 END \
                 WHERE seq = $1 RETURNING last_event_seq",
            )
            .bind(job_seq)
            .bind(phase)
            .bind(message)
            .bind(output.is_some())
            .bind(output.flatten())
            .bind(to_i64(at_unix_ms))
            .fetch_one(&mut *tx)
            .await
            .during("applying a job event")?;
            sqlx::query(
                "INSERT INTO job_events (job_seq, seq, at_unix_ms, kind, body) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(job_seq)
            .bind(seq)
            .bind(to_i64(at_unix_ms))
            .bind(event.name())
            .bind(to_json(&event, "job event")?)
            .execute(&mut *tx)
            .await
            .during("appending a job event")?;
            tx.commit().await.during("committing a job event")?;
            Ok(JobEvent { seq: to_u64(seq), at_unix_ms, event })
        })
        .await
    }

    async fn events_after(
        &self,
        id: &JobId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.seq, e.at_unix_ms, e.body FROM job_events e JOIN jobs j ON j.seq = e.job_seq \
             WHERE j.id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
        )
        .bind(id.as_str())
        .bind(to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .during("reading job events")?;
        rows.iter().map(event_from_row).collect()
    }

    async fn purge_idempotency_keys(&self, before_unix_ms: u64) -> Result<u64, StoreError> {
        self.track(async {
            let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_unix_ms < $1")
                .bind(to_i64(before_unix_ms))
                .execute(&self.pool)
                .await
                .during("purging idempotency keys")?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn reserve_lease(
        &self,
        lease: &LeaseRecord,
        limits: ReserveLimits,
    ) -> Result<(), StoreError> {
        self.track(async {
            let mut tx = self.begin("reserving a lease").await?;
            // Every replica's reservations queue here, so the sums below cannot move until
            // this transaction ends.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(BUDGET_LOCK)
                .execute(&mut *tx)
                .await
                .during("locking the budget")?;
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM leases WHERE lease_id = $1")
                    .bind(lease.lease_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .during("reserving a lease")?;
            if exists.is_some() {
                return Err(StoreError::DuplicateLease(lease.lease_id.clone()));
            }
            // The database's day, not the caller's: a replica whose clock is off cannot book
            // today's dollars on another day.
            let today: i64 = sqlx::query_scalar(&format!("SELECT {NOW_MS} / {DAY_MS}"))
                .fetch_one(&mut *tx)
                .await
                .during("reading the database clock")?;
            if to_i64(lease.day) != today {
                return Err(StoreError::NotToday { day: lease.day, today: to_u64(today) });
            }
            let job_micros =
                ledger_sum(&mut tx, "job_id", SumKey::Text(lease.job_id.as_str())).await?;
            let day_micros = ledger_sum(&mut tx, "day", SumKey::Int(to_i64(lease.day))).await?;
            if (job_micros - usd_to_micros(limits.job_committed_seen_usd)).abs() > 1 {
                return Err(StoreError::Conflict);
            }
            let reserved = usd_to_micros(lease.reserved_usd);
            if day_micros + reserved > usd_to_micros(limits.daily_cap_usd) {
                return Err(StoreError::DailyCap {
                    committed_usd: micros_to_usd(day_micros),
                    cap_usd: limits.daily_cap_usd,
                });
            }
            sqlx::query(
                "INSERT INTO leases (lease_id, job_id, actor, label, phase, reserved_micros, day, \
                 granted_unix_ms, deadline_unix_ms, pending_offer, gpu_model, gpu_count, \
                 expected_usd, p95_usd, worst_usd, confidence, bandwidth_micros, settled_micros, \
                 status_message, owner_replica) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12, $13, $14, $15, $16, $17, NULL, $18, $19)",
            )
            .bind(lease.lease_id.as_str())
            .bind(lease.job_id.as_str())
            .bind(&lease.actor)
            .bind(&lease.label)
            .bind(lease_phase_str(lease.phase))
            .bind(reserved)
            .bind(to_i64(lease.day))
            .bind(to_i64(lease.granted_unix_ms))
            .bind(to_i64(lease.deadline_unix_ms))
            .bind(lease.pending_offer.map(to_i64))
            .bind(lease.gpu_model.as_deref())
            .bind(lease.gpu_count.map(i64::from))
            .bind(lease.estimate.expected_usd)
            .bind(lease.estimate.p95_usd)
            .bind(lease.estimate.worst_usd)
            .bind(lease.estimate.confidence)
            .bind(usd_to_micros(lease.bandwidth_usd))
            .bind(lease.status_message.as_deref())
            .bind(lease.owner_replica.as_deref())
            .execute(&mut *tx)
            .await
            .during("inserting a lease")?;
            write_contracts(&mut tx, lease).await?;
            append_ledger(&mut tx, lease, LedgerKind::Reserve, reserved, lease.granted_unix_ms)
                .await?;
            tx.commit().await.during("committing a lease reservation")
        })
        .await
    }

    async fn update_lease(&self, lease: &LeaseRecord) -> Result<(), StoreError> {
        self.track(async {
            let mut tx = self.begin("updating a lease").await?;
            let row: Option<(Option<i64>, Option<String>)> = sqlx::query_as(
                "SELECT settled_micros, owner_replica FROM leases WHERE lease_id = $1 FOR UPDATE",
            )
            .bind(lease.lease_id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .during("updating a lease")?;
            match row {
                None => return Err(StoreError::LeaseNotFound(lease.lease_id.clone())),
                Some((Some(_), _)) => return Err(StoreError::LeaseClosed(lease.lease_id.clone())),
                // Fencing: a replica that lost the lease to a takeover writes nothing more.
                Some((None, owner)) if owner != lease.owner_replica => {
                    return Err(StoreError::LeaseTakenOver(lease.lease_id.clone()));
                }
                Some((None, _)) => {}
            }
            sqlx::query(
                "UPDATE leases SET phase = $2, deadline_unix_ms = $3, pending_offer = $4, \
                 gpu_model = $5, gpu_count = $6, status_message = $7 WHERE lease_id = $1",
            )
            .bind(lease.lease_id.as_str())
            .bind(lease_phase_str(lease.phase))
            .bind(to_i64(lease.deadline_unix_ms))
            .bind(lease.pending_offer.map(to_i64))
            .bind(lease.gpu_model.as_deref())
            .bind(lease.gpu_count.map(i64::from))
            .bind(lease.status_message.as_deref())
            .execute(&mut *tx)
            .await
            .during("updating a lease")?;
            write_contracts(&mut tx, lease).await?;
            tx.commit().await.during("committing a lease update")
        })
        .await
    }

    async fn settle_lease(
        &self,
        id: &LeaseId,
        settled_usd: f64,
        message: &str,
        at_unix_ms: u64,
    ) -> Result<LeaseRecord, StoreError> {
        self.track(async {
            let mut tx = self.begin("settling a lease").await?;
            let mut lease = load_lease(&mut tx, id.as_str(), true)
                .await?
                .ok_or_else(|| StoreError::LeaseNotFound(id.clone()))?;
            if !lease.is_open() {
                tx.commit().await.during("settling a lease")?;
                return Ok(lease);
            }
            let settled = usd_to_micros(settled_usd);
            let reserved = usd_to_micros(lease.reserved_usd);
            sqlx::query(
                "UPDATE leases SET settled_micros = $2, settled_unix_ms = $3, phase = $4, \
                 pending_offer = NULL, status_message = $5 \
                 WHERE lease_id = $1 AND settled_micros IS NULL",
            )
            .bind(id.as_str())
            .bind(settled)
            .bind(to_i64(at_unix_ms))
            .bind(lease_phase_str(LeasePhase::Released))
            .bind(message)
            .execute(&mut *tx)
            .await
            .during("settling a lease")?;
            append_ledger(&mut tx, &lease, LedgerKind::Release, -reserved, at_unix_ms).await?;
            append_ledger(&mut tx, &lease, LedgerKind::Charge, settled, at_unix_ms).await?;
            tx.commit().await.during("committing a settlement")?;
            lease.settled_usd = Some(micros_to_usd(settled));
            lease.phase = LeasePhase::Released;
            lease.pending_offer = None;
            lease.status_message = Some(message.to_owned());
            Ok(lease)
        })
        .await
    }

    async fn get_lease(&self, id: &LeaseId) -> Result<Option<LeaseRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.during("reading a lease")?;
        load_lease(&mut conn, id.as_str(), false).await
    }

    async fn open_leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.during("listing open leases")?;
        let rows = sqlx::query(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE settled_micros IS NULL \
             ORDER BY granted_unix_ms, lease_id"
        ))
        .fetch_all(&mut *conn)
        .await
        .during("listing open leases")?;
        let mut leases = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut lease = lease_from_row(row)?;
            lease.contracts = load_contracts(&mut conn, lease.lease_id.as_str()).await?;
            leases.push(lease);
        }
        Ok(leases)
    }

    async fn committed(&self, job: &JobId, day: u64) -> Result<Committed, StoreError> {
        let mut conn = self.pool.acquire().await.during("summing the ledger")?;
        let job_micros = ledger_sum(&mut conn, "job_id", SumKey::Text(job.as_str())).await?;
        let day_micros = ledger_sum(&mut conn, "day", SumKey::Int(to_i64(day))).await?;
        Ok(Committed { job_usd: micros_to_usd(job_micros), day_usd: micros_to_usd(day_micros) })
    }

    async fn ledger_report(&self) -> Result<LedgerReport, StoreError> {
        // One repeatable-read transaction, so the leases and the ledger are the same snapshot.
        let mut tx = self.begin("checking the ledger").await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .during("checking the ledger")?;
        let rows = sqlx::query(LEASE_LEDGER_QUERY)
            .fetch_all(&mut *tx)
            .await
            .during("checking the ledger")?;
        let ledger_micros: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) FROM ledger",
        )
        .fetch_one(&mut *tx)
        .await
        .during("checking the ledger")?;
        tx.commit().await.during("checking the ledger")?;
        let leases = rows.iter().map(lease_ledger_from_row).collect::<Result<Vec<_>, _>>()?;
        ledger_report(leases, ledger_micros)
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<i64, StoreError> {
        let line = to_json(event, "audit event")?;
        self.track(async {
            let mut insert = audit_insert([(event, &line)]);
            insert.push(" RETURNING id");
            insert
                .build_query_scalar::<i64>()
                .fetch_one(&self.pool)
                .await
                .during("appending an audit event")
        })
        .await
    }

    async fn append_audit_batch(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let lines =
            events.iter().map(|e| to_json(e, "audit event")).collect::<Result<Vec<_>, _>>()?;
        self.track(async {
            let mut tx = self.begin("appending audit events").await?;
            let pairs: Vec<_> = events.iter().zip(&lines).collect();
            for chunk in pairs.chunks(AUDIT_ROWS) {
                audit_insert(chunk.iter().copied())
                    .build()
                    .execute(&mut *tx)
                    .await
                    .during("appending audit events")?;
            }
            tx.commit().await.during("appending audit events")
        })
        .await
    }

    async fn audit_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, AuditEvent)>, StoreError> {
        let rows =
            sqlx::query("SELECT id, line FROM audit_events WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .during("reading the audit log")?;
        rows.iter()
            .map(|row| Ok((row.int("id")?, from_json(&row.text("line")?, "audit event")?)))
            .collect()
    }

    async fn writable(&self) -> Result<(), StoreError> {
        if !self.write_failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.track(async {
            sqlx::query(
                "INSERT INTO write_probe (id, at_unix_ms) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET at_unix_ms = excluded.at_unix_ms",
            )
            .bind(to_i64(crate::codec::now_unix_ms()))
            .execute(&self.pool)
            .await
            .during("probing a write")?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .during("pinging the database")?;
        Ok(())
    }

    async fn now_unix_ms(&self) -> Result<u64, StoreError> {
        let ms: i64 = sqlx::query_scalar(&format!("SELECT {NOW_MS}"))
            .fetch_one(&self.pool)
            .await
            .during("reading the database clock")?;
        Ok(to_u64(ms))
    }
}
