//! The SQLite [`Store`]: one file, WAL, every write `synchronous = FULL`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use drover_proto::api::{AuditEvent, Job, JobEvent, JobEventKind};
use drover_proto::{JobId, JobPhase, LeaseId, LeasePhase};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Sqlite, SqlitePool, Transaction};

use crate::Store;
use crate::codec::now_unix_ms;
use crate::error::{Context, StoreError};
use crate::model::*;

mod encode;
mod fleet;
mod group_commit;
mod jobs;
mod leases;
mod migrations;
mod owners;
pub(crate) use encode::*;
use group_commit::Submissions;
pub(crate) use jobs::*;
use leases::*;
use migrations::migrator;

/// The database file name inside the data directory.
pub const DEFAULT_FILE_NAME: &str = "drover.db";

/// Readers in the pool; writes go through a single connection.
const READERS: u32 = 4;

/// Audit events per multi-row insert of [`Store::append_audit_batch`].
const AUDIT_ROWS: usize = 1024;

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite [`Store`]. Cheap to clone: clones share the pools.
///
/// Writes are serialized through one connection and each runs in a `BEGIN IMMEDIATE`
/// transaction, so a read-then-write step (the idempotency check, the daily cap, the event
/// sequence) can never interleave with another writer, in this process or another.
///
/// # Recovery from I/O errors
///
/// A write that fails (a full disk, an I/O error) leaves nothing behind that the next write
/// trips over: SQLite rolls such a transaction back by itself, and the writer connection
/// returns to its pool only when it is outside any transaction (checked after the queued
/// rollback has run; otherwise it is closed and the pool opens a fresh one). Before this
/// check, a `ROLLBACK` refused with "no transaction is active" left sqlx counting an open
/// transaction, and every later write failed with "begin_with at non-zero transaction depth"
/// until a restart. The failure is remembered ([`Store::writable`] says so) until a write
/// succeeds again; `writable` itself retries with a one-row probe write.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pub(crate) writer: SqlitePool,
    reader: SqlitePool,
    /// Whether the last write failed in the database (not a refusal).
    write_failed: Arc<AtomicBool>,
    /// Job submissions waiting for the next group commit.
    pub(crate) submissions: Arc<Submissions>,
    /// The replica this handle speaks for ([`crate::JobOwners`]): the owner of the jobs it
    /// accepts, and the only owner it writes events for.
    pub(crate) replica: Option<Arc<str>>,
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/drover.db`; creates `data_dir` with mode `0700`
    /// if it does not exist.
    pub async fn open_in(data_dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(data_dir).await.map_err(|e| StoreError::Open {
            location: data_dir.display().to_string(),
            source: Box::new(e),
        })?;
        Self::open(&data_dir.join(DEFAULT_FILE_NAME)).await
    }

    /// Opens (creating if needed) the database file at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new().filename(path);
        Self::open_with(options, path.display().to_string()).await
    }

    /// Opens a `sqlite://PATH` URL (the form `StoreConfig::url` takes).
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let location = url.to_owned();
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Open { location: location.clone(), source: Box::new(e) })?;
        Self::open_with(options, location).await
    }

    /// The store a configuration names: `url` if set, otherwise `<data_dir>/drover.db`.
    pub async fn from_config(
        config: &drover_proto::config::StoreConfig,
        data_dir: &Path,
    ) -> Result<Self, StoreError> {
        match config.url.as_deref() {
            Some(url) if url.starts_with("sqlite://") => Self::open_url(url).await,
            Some(_) => Err(StoreError::Open {
                location: "store.url".to_owned(),
                source: "only sqlite:// URLs are supported by this build".into(),
            }),
            None => Self::open_in(data_dir).await,
        }
    }

    async fn open_with(
        options: SqliteConnectOptions,
        location: String,
    ) -> Result<Self, StoreError> {
        let open_error =
            |e: sqlx::Error| StoreError::Open { location: location.clone(), source: Box::new(e) };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .after_release(|conn, _| {
                Box::pin(async move {
                    // A dropped transaction only queues its ROLLBACK; the ping runs after it.
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        migrator()
            .run(&writer)
            .await
            .map_err(|e| StoreError::Open { location: location.clone(), source: Box::new(e) })?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.read_only(true))
            .await
            .map_err(open_error)?;
        Ok(Self {
            writer,
            reader,
            write_failed: Arc::new(AtomicBool::new(false)),
            submissions: Arc::new(Submissions::default()),
            replica: None,
        })
    }

    /// Runs a write and remembers whether the database failed it (refusals are answers, not
    /// failures, and leave the flag alone).
    async fn track<T>(
        &self,
        write: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = write.await;
        match &result {
            Ok(_) => self.write_failed.store(false, Ordering::SeqCst),
            Err(StoreError::Backend { .. }) => self.write_failed.store(true, Ordering::SeqCst),
            Err(_) => {}
        }
        result
    }

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn begin(
        &self,
        operation: &'static str,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.during(operation)
    }
}

async fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if tokio::fs::metadata(dir).await.is_ok() {
        return Ok(());
    }
    let dir: PathBuf = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)
    })
    .await
    .map_err(std::io::Error::other)?
}

// ---------------------------------------------------------------------------------------------

impl Store for SqliteStore {
    async fn submit_job(&self, new: NewJob) -> Result<Submitted, StoreError> {
        // Concurrent submissions share one transaction and one fsync (`group_commit`).
        self.track(self.submissions.submit(&self.writer, new, self.replica.clone())).await
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        load_job(&self.reader, id.as_str()).await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        let limit = filter.limit.max(1);
        let (label_key, label_value) = match &filter.label {
            Some((k, v)) => (Some(k.as_str()), Some(v.as_str())),
            None => (None, None),
        };
        let sql = format!(
            "SELECT seq, {JOB_COLUMNS} FROM jobs \
             WHERE ($1 IS NULL OR state = $1) \
               AND ($2 IS NULL OR driver = $2) \
               AND ($3 IS NULL OR seq < $3) \
               AND ($4 IS NULL OR EXISTS (SELECT 1 FROM job_labels l \
                    WHERE l.job_seq = jobs.seq AND l.key = $4 AND l.value = $5)) \
               AND ($7 IS NULL OR submitted_by = $7) \
             ORDER BY seq DESC LIMIT $6"
        );
        let rows = sqlx::query(&sql)
            .bind(filter.state.map(phase_str))
            .bind(filter.driver.as_deref())
            .bind(filter.before)
            .bind(label_key)
            .bind(label_value)
            .bind(i64::from(limit) + 1)
            .bind(filter.submitted_by.as_deref())
            .fetch_all(&self.reader)
            .await
            .during("listing jobs")?;
        let more = rows.len() > limit as usize;
        let mut jobs = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last_seq = None;
        for row in rows.iter().take(limit as usize) {
            jobs.push(job_from_row(row)?);
            last_seq = Some(get::<i64>(row, "seq")?);
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
        .fetch_all(&self.reader)
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
            let (job_seq, state, owner) = job_seq_state_owner(&mut tx, id)
                .await?
                .ok_or_else(|| StoreError::JobNotFound(id.clone()))?;
            // The fence: only the job's owner writes to it (crate::owners).
            if owner.as_deref() != self.replica.as_deref() {
                return Err(StoreError::JobTakenOver(id.clone()));
            }
            if state.is_terminal() {
                return Err(StoreError::JobFinished { job_id: id.clone(), state });
            }
            match &event {
                JobEventKind::JobState(change) => {
                    if !transition_allowed(state, change.state) {
                        return Err(StoreError::JobFinished { job_id: id.clone(), state });
                    }
                    sqlx::query(
                        "UPDATE jobs SET state = $1, message = $2, updated_unix_ms = $3 WHERE seq = $4",
                    )
                    .bind(phase_str(change.state))
                    .bind(change.message.as_deref())
                    .bind(to_i64(at_unix_ms))
                    .bind(job_seq)
                    .execute(&mut *tx)
                    .await
                    .during("updating a job's state")?;
                }
                JobEventKind::JobResult(result) => {
                    let output =
                        result.output.as_ref().map(|o| to_json(o, "job output")).transpose()?;
                    sqlx::query("UPDATE jobs SET output = $1, updated_unix_ms = $2 WHERE seq = $3")
                        .bind(output)
                        .bind(to_i64(at_unix_ms))
                        .bind(job_seq)
                        .execute(&mut *tx)
                        .await
                        .during("recording a job's result")?;
                }
                JobEventKind::JobProgress(_) | JobEventKind::JobLog(_) => {}
            }
            let stored = insert_event(&mut tx, job_seq, at_unix_ms, &event).await?;
            tx.commit().await.during("committing a job event")?;
            Ok(stored)
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
        .fetch_all(&self.reader)
        .await
        .during("reading job events")?;
        rows.iter().map(event_from_row).collect()
    }

    async fn purge_idempotency_keys(&self, before_unix_ms: u64) -> Result<u64, StoreError> {
        self.track(async {
            let mut tx = self.begin("purging idempotency keys").await?;
            let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_unix_ms < $1")
                .bind(to_i64(before_unix_ms))
                .execute(&mut *tx)
                .await
                .during("purging idempotency keys")?;
            tx.commit().await.during("purging idempotency keys")?;
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
            let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM leases WHERE lease_id = $1")
                .bind(lease.lease_id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .during("reserving a lease")?;
            if exists.is_some() {
                return Err(StoreError::DuplicateLease(lease.lease_id.clone()));
            }
            let job_micros = ledger_sum(&mut tx, "job_id", SumKey::Text(lease.job_id.as_str())).await?;
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
                 granted_unix_ms, deadline_unix_ms, pending_offer, gpu_model, gpu_count, expected_usd, \
                 p95_usd, worst_usd, confidence, bandwidth_micros, settled_micros, status_message, \
                 owner_replica) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                 $15, $16, $17, NULL, $18, $19)",
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
            append_ledger(&mut tx, lease, LedgerKind::Reserve, reserved, lease.granted_unix_ms).await?;
            tx.commit().await.during("committing a lease reservation")?;
            Ok(())
        })
        .await
    }

    async fn update_lease(&self, lease: &LeaseRecord) -> Result<(), StoreError> {
        self.track(async {
            let mut tx = self.begin("updating a lease").await?;
            let row: Option<(Option<i64>, Option<String>)> = sqlx::query_as(
                "SELECT settled_micros, owner_replica FROM leases WHERE lease_id = $1",
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
            tx.commit().await.during("committing a lease update")?;
            Ok(())
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
            let mut lease = load_lease(&mut tx, id.as_str())
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
                 pending_offer = NULL, status_message = $5 WHERE lease_id = $1 AND settled_micros IS NULL",
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
        let mut conn = self.reader.acquire().await.during("reading a lease")?;
        load_lease(&mut conn, id.as_str()).await
    }

    async fn open_leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        let mut conn = self.reader.acquire().await.during("listing open leases")?;
        let rows = sqlx::query(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE settled_micros IS NULL ORDER BY granted_unix_ms"
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
        let job_micros: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE job_id = $1",
        )
        .bind(job.as_str())
        .fetch_one(&self.reader)
        .await
        .during("summing the ledger")?;
        let day_micros: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE day = $1")
                .bind(to_i64(day))
                .fetch_one(&self.reader)
                .await
                .during("summing the ledger")?;
        Ok(Committed { job_usd: micros_to_usd(job_micros), day_usd: micros_to_usd(day_micros) })
    }

    async fn ledger_report(&self) -> Result<LedgerReport, StoreError> {
        // One read transaction, so the leases and the ledger are the same snapshot.
        let mut tx = self.reader.begin().await.during("checking the ledger")?;
        let rows = sqlx::query(crate::codec::LEASE_LEDGER_QUERY)
            .fetch_all(&mut *tx)
            .await
            .during("checking the ledger")?;
        let ledger_micros: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(amount_micros), 0) FROM ledger")
                .fetch_one(&mut *tx)
                .await
                .during("checking the ledger")?;
        tx.commit().await.during("checking the ledger")?;
        let leases =
            rows.iter().map(crate::codec::lease_ledger_from_row).collect::<Result<Vec<_>, _>>()?;
        crate::codec::ledger_report(leases, ledger_micros)
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<i64, StoreError> {
        self.track(async {
            let mut tx = self.begin("appending an audit event").await?;
            let id = insert_audit(&mut tx, event).await?;
            tx.commit().await.during("appending an audit event")?;
            Ok(id)
        })
        .await
    }

    async fn append_audit_batch(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.track(async {
            // One transaction and one fsync for the whole batch: one per event made every API
            // request pay two commits (issue 18: the durable submit path's bottleneck).
            let lines =
                events.iter().map(|e| to_json(e, "audit event")).collect::<Result<Vec<_>, _>>()?;
            let mut tx = self.begin("appending audit events").await?;
            // One statement per chunk as well: each statement is a round trip to sqlx's SQLite
            // thread. Seven parameters a row, well under SQLite's limit of 32,766.
            for chunk in events.iter().zip(&lines).collect::<Vec<_>>().chunks(AUDIT_ROWS) {
                let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
                    "INSERT INTO audit_events \
                     (timestamp, request_id, actor, action, resource, result, line) ",
                );
                insert.push_values(chunk, |mut row, (event, line)| {
                    row.push_bind(event.timestamp.as_str())
                        .push_bind(event.request_id.as_deref())
                        .push_bind(event.actor.as_str())
                        .push_bind(event.action.as_str())
                        .push_bind(event.resource.as_str())
                        .push_bind(event.result.as_str())
                        .push_bind(line.as_str());
                });
                insert.build().execute(&mut *tx).await.during("appending audit events")?;
            }
            tx.commit().await.during("appending audit events")?;
            Ok(())
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
                .fetch_all(&self.reader)
                .await
                .during("reading the audit log")?;
        rows.iter()
            .map(|row| {
                Ok((get(row, "id")?, from_json(&get::<String>(row, "line")?, "audit event")?))
            })
            .collect()
    }

    async fn writable(&self) -> Result<(), StoreError> {
        if !self.write_failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.track(async {
            let mut tx = self.begin("probing a write").await?;
            sqlx::query(
                "INSERT INTO write_probe (id, at_unix_ms) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET at_unix_ms = excluded.at_unix_ms",
            )
            .bind(to_i64(now_unix_ms()))
            .execute(&mut *tx)
            .await
            .during("probing a write")?;
            tx.commit().await.during("probing a write")
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query_scalar::<_, i64>("SELECT 1")
            .fetch_one(&self.reader)
            .await
            .during("pinging the database")?;
        Ok(())
    }

    async fn now_unix_ms(&self) -> Result<u64, StoreError> {
        // Embedded: the store's clock is this host's.
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
}
