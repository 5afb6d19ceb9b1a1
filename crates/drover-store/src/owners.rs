//! Who runs each job when several supervisors (replicas) share one store.
//!
//! A store handle may speak for one replica ([`JobOwners::with_replica`]). Jobs it accepts
//! are owned by that replica, and [`crate::Store::append_event`] through it writes only to
//! jobs that replica owns: any other is refused with [`crate::StoreError::JobTakenOver`]. That
//! is the fence: once another replica has taken a job over, the old owner (presumed dead,
//! perhaps only partitioned) can no longer change it, whatever it still believes. A handle
//! without a replica owns the jobs without an owner (one supervisor, or jobs written before
//! owners were recorded).
//!
//! A job is an **orphan** when it is unfinished and its owner is neither this replica nor a
//! live one (see [`crate::fleet`] for liveness): [`JobOwners::orphaned_jobs`] lists them and
//! [`JobOwners::take_over_job`] hands one to this replica, for exactly one of several racing
//! callers. A client's cancel that reaches a replica other than the owner is left as a
//! request ([`JobOwners::request_cancel`]) that the owner collects
//! ([`JobOwners::cancel_requests`]).

use std::future::Future;

use drover_proto::JobId;
use drover_proto::api::Job;

use crate::StoreError;

/// An unfinished job and the replica that owned it when it was read.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedJob {
    /// The job.
    pub job: Job,
    /// Its owner; `None` for a job without one.
    pub owner_replica: Option<String>,
}

/// Job ownership across replicas. See the module docs.
pub trait JobOwners: Send + Sync + Sized {
    /// This handle, speaking for `replica_id` from now on (the same pools: cheap).
    fn with_replica(&self, replica_id: &str) -> Self;

    /// The replica this handle speaks for, if any.
    fn replica(&self) -> Option<&str>;

    /// Unfinished jobs whose owner is neither this handle's replica nor live, oldest first.
    fn orphaned_jobs(&self) -> impl Future<Output = Result<Vec<OwnedJob>, StoreError>> + Send;

    /// Makes this handle's replica the owner of an unfinished job whose owner is still `from`;
    /// true when it did. Exactly one of several racing callers succeeds.
    fn take_over_job(
        &self,
        id: &JobId,
        from: Option<&str>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether this handle's replica owns the job (false for an unknown job).
    fn owns_job(&self, id: &JobId) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Leaves a cancel request with `reason` on an unfinished job, for its owner; false when
    /// the job is unknown or already finished.
    fn request_cancel(
        &self,
        id: &JobId,
        reason: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Cancel requests left on unfinished jobs this handle's replica owns, each once: a
    /// request is cleared as it is returned.
    fn cancel_requests(
        &self,
    ) -> impl Future<Output = Result<Vec<(JobId, String)>, StoreError>> + Send;
}
