//! drover's persistence: jobs and their event history, idempotency keys, leases, the budget
//! ledger and the audit log, behind one trait, [`Store`].
//!
//! [`SqliteStore`] is the default: embedded, zero set-up (the file and its directory are
//! created, the schema migrated, at open), WAL mode. [`PgStore`] is PostgreSQL, for a fleet of
//! supervisors on one database: the same schema with its types translated, the same portable
//! queries (`$N` parameters, `ON CONFLICT`, `RETURNING`, no SQLite-only functions), and row
//! locks where SQLite's single writer kept steps apart. [`AnyStore`] is whichever of the two
//! `store.url` names. Both keep to portable types (64-bit integers, integer micro-USD, Unix
//! milliseconds, JSON as text), decoded by one set of row decoders, and the same test suite
//! (`tests/store.rs`) runs against both.
//!
//! # Clock
//!
//! [`Store::now_unix_ms`] is the store's own clock, the one time every replica of a fleet can
//! agree on: PostgreSQL's `clock_timestamp()` on the database server for [`PgStore`], the
//! host's system clock for [`SqliteStore`] (embedded: every process sharing its file runs on
//! that host). Replicas correct their own clocks to it (the provisioner measures the offset
//! at start and with every heartbeat), and [`PgStore`] refuses a reservation whose budget
//! `day` is not the database's current UTC day ([`StoreError::NotToday`]), so replicas with
//! skewed clocks cannot book one day's dollars on two days around midnight.
//!
//! # Write-ahead rules
//!
//! The store is what lets a supervisor be killed at any instant and lose nothing:
//!
//! - **A job is acknowledged only after it is durable.** [`Store::submit_job`] returns after
//!   its transaction has committed with `synchronous = FULL`: the job row, its labels, its
//!   first event (`queued`) and its idempotency key are one atomic write, fsynced. A caller
//!   that answers the client after `submit_job` returns never acknowledges a job a crash can
//!   lose.
//! - **A lease is recorded before the instance is rented** ([`Store::reserve_lease`], which
//!   also appends the reservation to the ledger and checks the caps in the same transaction)
//!   and **closed only after destroy is confirmed** ([`Store::settle_lease`], which appends
//!   the release and the charge in the same transaction).
//! - **A lease has one owner.** Each lease names the replica that owns it; another replica
//!   takes it over only once the owner's heartbeat has expired, and the old owner's writes
//!   are refused from then on ([`fleet`]).
//! - **A job has one owner.** The replica that accepted it, or took it over once its owner's
//!   heartbeat expired; only the owner writes its events ([`owners`]), so a replica presumed
//!   dead that comes back cannot overwrite a job another replica took.
//! - **Events are ordered and final.** A job's events are numbered from 1 without gaps;
//!   nothing is appended after a terminal state.
//!
//! The crash test (`tests/crash.rs`) kills a writer with SIGKILL at many points and checks
//! that every acknowledged job is there and the ledger balances ([`LedgerReport::balances`]).
//!
//! # Defaults
//!
//! | Setting | Default |
//! |---|---|
//! | database | `<data_dir>/drover.db` ([`DEFAULT_FILE_NAME`]), directory created `0700` |
//! | journal | WAL, `synchronous = FULL`, foreign keys on, busy timeout 10 s |
//! | connections | one writer (writes are serialized in the process), four readers |
//!
//! # Example
//!
//! ```
//! # tokio_test::block_on(async {
//! use drover_store::{NewJob, SqliteStore, Store};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open_in(dir.path()).await.unwrap();
//! let spec = serde_json::from_value(serde_json::json!({
//!     "driver": "echo", "action": "run", "max_runtime_s": 60, "budget_usd": 0.0})).unwrap();
//! let new = NewJob {
//!     id: "job-1".parse().unwrap(),
//!     spec,
//!     submitted_by: "ci".into(),
//!     at_unix_ms: 1_795_305_600_000,
//!     idempotency: None,
//! };
//! let submitted = store.submit_job(new).await.unwrap();
//! assert_eq!(submitted.job.state, drover_proto::JobPhase::Queued);
//! // Durable: a second handle on the same file sees it.
//! let again = SqliteStore::open_in(dir.path()).await.unwrap();
//! assert!(again.get_job(&"job-1".parse().unwrap()).await.unwrap().is_some());
//! # });
//! ```

#![forbid(unsafe_code)]

mod any;
mod codec;
mod error;
pub mod fleet;
mod model;
pub mod owners;
mod postgres;
mod sqlite;

use std::future::Future;

use drover_proto::api::{AuditEvent, Job, JobEvent, JobEventKind};
use drover_proto::{JobId, LeaseId};

pub use any::AnyStore;
pub use error::StoreError;
pub use fleet::{Fleet, Heartbeat, Replica};
pub use model::*;
pub use owners::{JobOwners, OwnedJob};
pub use postgres::PgStore;
pub use sqlite::{DEFAULT_FILE_NAME, SqliteStore};

/// Everything drover persists. Every method is one atomic step; a method that writes returns
/// only after its write is durable.
///
/// The futures are `Send`, so a store can be shared across a multi-threaded runtime; an
/// implementation is cheap to clone (a handle on a pool).
///
/// Every store also keeps what replicas of one deployment share ([`Fleet`]) and who runs
/// each job ([`JobOwners`]).
pub trait Store: Fleet + JobOwners + Clone + Send + Sync + 'static {
    // --- jobs -------------------------------------------------------------------------------

    /// Accepts a job: the job, its labels, its first event (`job_state: queued`) and its
    /// idempotency key, in one durable transaction. With an idempotency key that this actor
    /// used before: the same request returns the earlier job with `replayed: true`; a
    /// different request is refused with [`StoreError::IdempotencyConflict`].
    fn submit_job(&self, job: NewJob)
    -> impl Future<Output = Result<Submitted, StoreError>> + Send;

    /// One job.
    fn get_job(&self, id: &JobId) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;

    /// A page of jobs, newest first.
    fn list_jobs(
        &self,
        filter: &JobFilter,
    ) -> impl Future<Output = Result<JobPage, StoreError>> + Send;

    /// Every job not yet in a terminal state, oldest first: what a restarted supervisor
    /// resumes or fails.
    fn unfinished_jobs(&self) -> impl Future<Output = Result<Vec<Job>, StoreError>> + Send;

    /// Appends an event to a job's history and applies it: a `job_state` moves the job to
    /// its state, a `job_result` records its output. Refused with [`StoreError::JobFinished`]
    /// once the job is terminal.
    fn append_event(
        &self,
        id: &JobId,
        at_unix_ms: u64,
        event: JobEventKind,
    ) -> impl Future<Output = Result<JobEvent, StoreError>> + Send;

    /// A job's events with `seq > after`, oldest first, at most `limit`.
    fn events_after(
        &self,
        id: &JobId,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<JobEvent>, StoreError>> + Send;

    /// Forgets idempotency keys recorded before `before_unix_ms`; returns how many.
    fn purge_idempotency_keys(
        &self,
        before_unix_ms: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    // --- leases and the ledger ---------------------------------------------------------------

    /// Inserts a new open lease and its reservation in the ledger, if today's committed amount
    /// plus the reservation stays within the daily cap and the job's committed amount is still
    /// what the gate saw. Call it before renting. [`PgStore`] also refuses, with
    /// [`StoreError::NotToday`], a lease whose `day` is not the database's current UTC day
    /// (Unix days by [`Store::now_unix_ms`]); SQLite's single host needs no such check.
    fn reserve_lease(
        &self,
        lease: &LeaseRecord,
        limits: ReserveLimits,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces an open lease's record (same id; its reservation and owner cannot change).
    /// Refused with [`StoreError::LeaseTakenOver`] when the record's `owner_replica` is no
    /// longer the lease's owner (another replica took it over).
    fn update_lease(
        &self,
        lease: &LeaseRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Closes a lease with its settled cost, phase `released` and a message, and moves the
    /// ledger from the reservation to the charge. Call it only after destroy is confirmed.
    /// Idempotent: settling a settled lease returns it unchanged.
    fn settle_lease(
        &self,
        id: &LeaseId,
        settled_usd: f64,
        message: &str,
        at_unix_ms: u64,
    ) -> impl Future<Output = Result<LeaseRecord, StoreError>> + Send;

    /// One lease.
    fn get_lease(
        &self,
        id: &LeaseId,
    ) -> impl Future<Output = Result<Option<LeaseRecord>, StoreError>> + Send;

    /// Every open lease.
    fn open_leases(&self) -> impl Future<Output = Result<Vec<LeaseRecord>, StoreError>> + Send;

    /// What a job and a UTC day (Unix days) have committed, from the ledger.
    fn committed(
        &self,
        job: &JobId,
        day: u64,
    ) -> impl Future<Output = Result<Committed, StoreError>> + Send;

    /// Checks the ledger against the leases.
    fn ledger_report(&self) -> impl Future<Output = Result<LedgerReport, StoreError>> + Send;

    // --- audit -------------------------------------------------------------------------------

    /// Appends an audit event; returns its position in the log.
    fn append_audit(
        &self,
        event: &AuditEvent,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Appends `events` in order, all or none, in one durable write (one transaction: the API
    /// hands its audit events over in batches, and a commit each would cost one fsync each).
    fn append_audit_batch(
        &self,
        events: &[AuditEvent],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Audit events after position `after`, oldest first, at most `limit`.
    fn audit_after(
        &self,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(i64, AuditEvent)>, StoreError>> + Send;

    // --- health ------------------------------------------------------------------------------

    /// Whether the store can write: `Ok` unless the last write failed in the database (a full
    /// disk, an I/O error), in which case a small probe write is tried and its error returned.
    fn writable(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    // --- clock -------------------------------------------------------------------------------

    /// The store's clock, Unix ms: `clock_timestamp()` of the PostgreSQL server (one round
    /// trip), or the host's system clock for SQLite. The time replicas of a fleet agree on
    /// (see the crate docs, "Clock").
    fn now_unix_ms(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
