//! [`AnyStore`]: the store a configuration names, SQLite or PostgreSQL, chosen at start.
//!
//! An enum rather than a generic parameter, so the service and everything above it are compiled
//! once whichever backend runs.

use std::path::Path;

use drover_proto::api::{AuditEvent, Job, JobEvent, JobEventKind};
use drover_proto::config::StoreConfig;
use drover_proto::{JobId, LeaseId};

use crate::error::StoreError;
use crate::fleet::{Fleet, Heartbeat, Replica};
use crate::model::*;
use crate::owners::{JobOwners, OwnedJob};
use crate::{PgStore, SqliteStore, Store};

/// The store a configuration names.
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// Embedded, one supervisor.
    Sqlite(SqliteStore),
    /// Shared by a fleet of supervisors.
    Postgres(PgStore),
}

impl AnyStore {
    /// `store.url` if set (`sqlite://PATH`, `postgres://...` or `postgresql://...`), otherwise
    /// `<data_dir>/drover.db`. Any other scheme is refused naming `store.url`, and the URL
    /// itself (which may hold a password) is never repeated in the error.
    pub async fn from_config(config: &StoreConfig, data_dir: &Path) -> Result<Self, StoreError> {
        match config.url.as_deref() {
            None => Ok(Self::Sqlite(SqliteStore::open_in(data_dir).await?)),
            Some(url) if url.starts_with("sqlite://") => {
                Ok(Self::Sqlite(SqliteStore::open_url(url).await?))
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(PgStore::connect(url).await?))
            }
            Some(_) => Err(StoreError::Open {
                location: "store.url".to_owned(),
                source: "the scheme must be sqlite:// or postgres://".into(),
            }),
        }
    }

    /// Which backend this is: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Closes the backend's connections.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(store) => store.close().await,
            Self::Postgres(store) => store.close().await,
        }
    }
}

/// Forwards a [`Store`] method to whichever backend this is.
macro_rules! forward {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self {
            AnyStore::Sqlite(store) => store.$method($($arg),*).await,
            AnyStore::Postgres(store) => store.$method($($arg),*).await,
        }
    };
}

impl Store for AnyStore {
    async fn submit_job(&self, job: NewJob) -> Result<Submitted, StoreError> {
        forward!(self, submit_job(job))
    }
    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        forward!(self, get_job(id))
    }
    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        forward!(self, list_jobs(filter))
    }
    async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        forward!(self, unfinished_jobs())
    }
    async fn append_event(
        &self,
        id: &JobId,
        at_unix_ms: u64,
        event: JobEventKind,
    ) -> Result<JobEvent, StoreError> {
        forward!(self, append_event(id, at_unix_ms, event))
    }
    async fn events_after(
        &self,
        id: &JobId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        forward!(self, events_after(id, after, limit))
    }
    async fn purge_idempotency_keys(&self, before_unix_ms: u64) -> Result<u64, StoreError> {
        forward!(self, purge_idempotency_keys(before_unix_ms))
    }
    async fn reserve_lease(
        &self,
        lease: &LeaseRecord,
        limits: ReserveLimits,
    ) -> Result<(), StoreError> {
        forward!(self, reserve_lease(lease, limits))
    }
    async fn update_lease(&self, lease: &LeaseRecord) -> Result<(), StoreError> {
        forward!(self, update_lease(lease))
    }
    async fn settle_lease(
        &self,
        id: &LeaseId,
        settled_usd: f64,
        message: &str,
        at_unix_ms: u64,
    ) -> Result<LeaseRecord, StoreError> {
        forward!(self, settle_lease(id, settled_usd, message, at_unix_ms))
    }
    async fn get_lease(&self, id: &LeaseId) -> Result<Option<LeaseRecord>, StoreError> {
        forward!(self, get_lease(id))
    }
    async fn open_leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        forward!(self, open_leases())
    }
    async fn committed(&self, job: &JobId, day: u64) -> Result<Committed, StoreError> {
        forward!(self, committed(job, day))
    }
    async fn ledger_report(&self) -> Result<LedgerReport, StoreError> {
        forward!(self, ledger_report())
    }
    async fn append_audit(&self, event: &AuditEvent) -> Result<i64, StoreError> {
        forward!(self, append_audit(event))
    }
    async fn append_audit_batch(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        forward!(self, append_audit_batch(events))
    }
    async fn audit_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, AuditEvent)>, StoreError> {
        forward!(self, audit_after(after, limit))
    }
    async fn writable(&self) -> Result<(), StoreError> {
        forward!(self, writable())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        forward!(self, ping())
    }
    async fn now_unix_ms(&self) -> Result<u64, StoreError> {
        forward!(self, now_unix_ms())
    }
}

impl Fleet for AnyStore {
    async fn setting_or_init(&self, key: &str, value: &str) -> Result<String, StoreError> {
        forward!(self, setting_or_init(key, value))
    }
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<(), StoreError> {
        forward!(self, heartbeat(beat))
    }
    async fn replicas(&self, deployment: &str) -> Result<Vec<Replica>, StoreError> {
        forward!(self, replicas(deployment))
    }
    async fn retire_replica(&self, replica_id: &str) -> Result<(), StoreError> {
        forward!(self, retire_replica(replica_id))
    }
    async fn prune_replicas(
        &self,
        deployment: &str,
        expired_for_ms: u64,
    ) -> Result<u64, StoreError> {
        forward!(self, prune_replicas(deployment, expired_for_ms))
    }
    async fn try_reaper_lock(
        &self,
        deployment: &str,
        replica_id: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        forward!(self, try_reaper_lock(deployment, replica_id, ttl_ms))
    }
    async fn release_reaper_lock(
        &self,
        deployment: &str,
        replica_id: &str,
    ) -> Result<(), StoreError> {
        forward!(self, release_reaper_lock(deployment, replica_id))
    }
    async fn take_over_lease(
        &self,
        lease_id: &LeaseId,
        from: Option<&str>,
        to: &str,
    ) -> Result<bool, StoreError> {
        forward!(self, take_over_lease(lease_id, from, to))
    }
}

impl JobOwners for AnyStore {
    fn with_replica(&self, replica_id: &str) -> Self {
        match self {
            Self::Sqlite(store) => Self::Sqlite(store.with_replica(replica_id)),
            Self::Postgres(store) => Self::Postgres(store.with_replica(replica_id)),
        }
    }
    fn replica(&self) -> Option<&str> {
        match self {
            Self::Sqlite(store) => store.replica(),
            Self::Postgres(store) => store.replica(),
        }
    }
    async fn orphaned_jobs(&self) -> Result<Vec<OwnedJob>, StoreError> {
        forward!(self, orphaned_jobs())
    }
    async fn take_over_job(&self, id: &JobId, from: Option<&str>) -> Result<bool, StoreError> {
        forward!(self, take_over_job(id, from))
    }
    async fn owns_job(&self, id: &JobId) -> Result<bool, StoreError> {
        forward!(self, owns_job(id))
    }
    async fn request_cancel(&self, id: &JobId, reason: &str) -> Result<bool, StoreError> {
        forward!(self, request_cancel(id, reason))
    }
    async fn cancel_requests(&self) -> Result<Vec<(JobId, String)>, StoreError> {
        forward!(self, cancel_requests())
    }
}
