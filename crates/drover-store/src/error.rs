//! Why the store refused or failed.

use drover_proto::{JobId, JobPhase, LeaseId};

/// Why a store operation refused or failed.
///
/// The refusals (everything but [`StoreError::Backend`] and [`StoreError::Corrupt`]) are
/// answers a caller acts on. `Backend` carries the driver's error as its source, which can
/// name tables, SQL and file paths: log it, never show it to a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `Idempotency-Key` was used before, by the same actor, for a different request.
    #[error("the idempotency key was already used for a different request")]
    IdempotencyConflict,
    /// A job with that id already exists.
    #[error("job {0} already exists")]
    DuplicateJob(JobId),
    /// No job with that id.
    #[error("no job {0}")]
    JobNotFound(JobId),
    /// The job is in a terminal state; nothing more may happen to it.
    #[error("job {job_id} is already {state:?}")]
    JobFinished {
        /// The job.
        job_id: JobId,
        /// Its terminal state.
        state: JobPhase,
    },
    /// Another replica took the job over (its owner's heartbeat had expired); the writer no
    /// longer owns it and writes nothing more to it.
    #[error("job {0} was taken over by another replica")]
    JobTakenOver(JobId),
    /// The daily cap would be exceeded.
    #[error(
        "the daily cap of {cap_usd:.2} USD would be exceeded ({committed_usd:.4} USD committed)"
    )]
    DailyCap {
        /// Committed today.
        committed_usd: f64,
        /// The cap.
        cap_usd: f64,
    },
    /// The job's committed amount changed since the gate looked.
    #[error("the job's committed amount changed; decide again")]
    Conflict,
    /// The lease's budget `day` is not the store's current UTC day: the caller's clock is
    /// off the store's (PostgreSQL: the database server's). Measure the offset again and
    /// decide again.
    #[error("the lease is booked on day {day}, but the store's day is {today}")]
    NotToday {
        /// The lease's day (Unix days).
        day: u64,
        /// The store's current day (Unix days).
        today: u64,
    },
    /// A lease with that id already exists.
    #[error("lease {0} already exists")]
    DuplicateLease(LeaseId),
    /// No lease with that id.
    #[error("no lease {0}")]
    LeaseNotFound(LeaseId),
    /// The lease is settled and cannot change.
    #[error("lease {0} is settled")]
    LeaseClosed(LeaseId),
    /// Another replica took the lease over (its owner's heartbeat had expired); the writer
    /// no longer owns it and must leave it alone.
    #[error("lease {0} was taken over by another replica")]
    LeaseTakenOver(LeaseId),
    /// A stored row does not decode: the database was changed by something else.
    #[error("stored {what} does not decode")]
    Corrupt {
        /// Which record.
        what: &'static str,
    },
    /// The database failed.
    #[error("store backend failed while {operation}")]
    Backend {
        /// What the store was doing.
        operation: &'static str,
        /// The driver's error (may name SQL, tables and paths: never show it to a client).
        #[source]
        source: sqlx::Error,
    },
    /// The database could not be opened or migrated.
    #[error("cannot open the store at {location}")]
    Open {
        /// The path or URL, with any password removed.
        location: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Attaches the operation to a driver error.
pub(crate) trait Context<T> {
    fn during(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn during(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Backend { operation, source })
    }
}
