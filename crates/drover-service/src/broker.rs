//! [`ProvisionerBroker`]: the supervisor's [`GpuBroker`] over the gated provisioner.
//!
//! The supervisor defines the seam (its `broker` module: [`GpuBroker`], [`LeaseOwner`], the
//! session's checks against the job's GPU request) and knows nothing of the provisioner or the
//! store; this adapter, here in the service that owns both, is what `drover serve` hands it.
//! Every rental is estimated, gated, reserved and bounded by `drover-provision`.
//!
//! A rental is only for a job that is still running: the job's stored state is read before
//! the provisioner is asked, and again when the lease comes back. A job that ended meanwhile
//! (its driver died, it was cancelled, its deadline passed while the rental was being
//! decided) has its lease released at once and the driver gets `unknown_job`. Together with
//! the service's release of a job's open leases when it ends, no window is left in which a
//! lease outlives its job until the lease's own deadline.
//!
//! Ownership is read from the lease's own record (the job it was rented for), so nothing here
//! grows with the number of leases ever handed out: a lease of another job is refused with
//! `unknown_lease`, said alike for a lease that does not exist, so a driver cannot even learn
//! that it exists. Provisioner errors reach the driver as wire errors without internals
//! (a store failure is a bare `internal error`; the cause stays in the log).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use drover_proto::{AcquireGpu, ErrorCode, JobId, Lease, LeaseId, LeaseLog, WireError};
use drover_provision::{JobContext, LeaseError, Provisioner};
use drover_store::Store;
use drover_supervisor::broker::unknown_lease;
use drover_supervisor::{BrokerFuture, GpuBroker, LeaseOwner};

/// A [`GpuBroker`] over the gated provisioner: every rental is estimated, gated, reserved and
/// bounded by `drover-provision`. Ownership is read from the lease's own record (the job it
/// was rented for), so nothing here grows with the number of leases ever handed out.
pub struct ProvisionerBroker<S: Store> {
    provisioner: Arc<Provisioner<S>>,
    store: S,
}

impl<S: Store> std::fmt::Debug for ProvisionerBroker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionerBroker").finish_non_exhaustive()
    }
}

impl<S: Store> ProvisionerBroker<S> {
    /// A broker that rents through `provisioner` for the jobs in `store`.
    pub fn new(provisioner: Arc<Provisioner<S>>, store: S) -> Self {
        Self { provisioner, store }
    }

    /// Whether the store holds `job` in a terminal state. A job the store does not know is
    /// not ended (the provisioner's own checks still apply).
    async fn job_ended(&self, job: &JobId) -> Result<bool, WireError> {
        match self.store.get_job(job).await {
            Ok(found) => Ok(found.is_some_and(|j| j.state.is_terminal())),
            Err(error) => {
                tracing::warn!(job = %job, %error, "reading the job before a rental");
                Err(wire(ErrorCode::Internal, "internal error"))
            }
        }
    }

    /// The refusal for a rental whose job has ended.
    fn ended(job: &JobId) -> WireError {
        wire(ErrorCode::UnknownJob, format!("job {job} has ended; it gets no GPU"))
    }

    /// The provisioner behind this broker.
    pub fn provisioner(&self) -> &Arc<Provisioner<S>> {
        &self.provisioner
    }

    /// The lease, if it was rented for `owner`'s job; `unknown_lease` alike for a lease that
    /// does not exist and for one of another job.
    async fn owned(&self, owner: &LeaseOwner, lease_id: &LeaseId) -> Result<Lease, WireError> {
        match self.provisioner.status(lease_id).await {
            Ok(lease) if lease.job_id == owner.job_id => Ok(lease),
            Ok(_) | Err(LeaseError::Unknown(_)) => Err(unknown_lease(lease_id)),
            Err(e) => Err(lease_error(&e)),
        }
    }
}

/// A [`WireError`] without violations or details.
fn wire(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError { code, message: message.into(), violations: Vec::new(), details: None }
}

/// A provisioner lease error as the driver sees it; internals stay in the supervisor's log.
fn lease_error(error: &LeaseError) -> WireError {
    match error {
        LeaseError::Unknown(id) | LeaseError::OwnedElsewhere(id) => unknown_lease(id),
        LeaseError::Busy(id) => {
            wire(ErrorCode::NotReady, format!("lease {id} is still being provisioned"))
        }
        LeaseError::Provider(_) | LeaseError::DestroyUnconfirmed { .. } => {
            wire(ErrorCode::ProviderUnavailable, error.to_string())
        }
        LeaseError::Store(_) => wire(ErrorCode::Internal, "internal error"),
    }
}

impl<S: Store> GpuBroker for ProvisionerBroker<S> {
    fn acquire<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        budget_usd: f64,
        req: AcquireGpu,
    ) -> BrokerFuture<'a, Lease> {
        Box::pin(async move {
            let ctx = JobContext { budget_usd, actor: format!("driver:{}", owner.driver) };
            if req.job_id != owner.job_id {
                return Err(wire(ErrorCode::Forbidden, "the lease must be for the asking job"));
            }
            if self.job_ended(&owner.job_id).await? {
                return Err(Self::ended(&owner.job_id));
            }
            let lease = self.provisioner.acquire(&req, &ctx).await.map_err(|error| {
                tracing::info!(driver = %owner.driver, job = %owner.job_id, %error, "acquire_gpu refused");
                error.to_wire()
            })?;
            // The job may have ended while the rental was decided and made; the service's
            // release of its leases may have run before this lease existed.
            if self.job_ended(&owner.job_id).await.unwrap_or(false) {
                match self.provisioner.release(&lease.lease_id, "supervisor").await {
                    Ok(_) => tracing::warn!(job = %owner.job_id, lease = %lease.lease_id,
                        "the job ended while its GPU was rented; released"),
                    Err(error) => tracing::warn!(job = %owner.job_id, lease = %lease.lease_id,
                        %error, "releasing the lease of an ended job failed; the reaper will retry"),
                }
                return Err(Self::ended(&owner.job_id));
            }
            Ok(lease)
        })
    }

    fn status<'a>(&'a self, owner: &'a LeaseOwner, lease_id: LeaseId) -> BrokerFuture<'a, Lease> {
        Box::pin(async move { self.owned(owner, &lease_id).await })
    }

    fn logs<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        lease_id: LeaseId,
        tail: u32,
    ) -> BrokerFuture<'a, LeaseLog> {
        Box::pin(async move {
            self.owned(owner, &lease_id).await?;
            self.provisioner.logs(&lease_id, tail).await.map_err(|e| lease_error(&e))
        })
    }

    fn release<'a>(&'a self, owner: &'a LeaseOwner, lease_id: LeaseId) -> BrokerFuture<'a, Lease> {
        Box::pin(async move {
            self.owned(owner, &lease_id).await?;
            let actor = format!("driver:{}", owner.driver);
            self.provisioner.release(&lease_id, &actor).await.map_err(|e| lease_error(&e))
        })
    }

    fn refused<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        error: &'a WireError,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let field = error
                .details
                .as_ref()
                .and_then(|d| d.get("field"))
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            self.provisioner
                .audit_refusal(
                    &format!("driver:{}", owner.driver),
                    &owner.job_id,
                    error.code.as_str(),
                    field,
                    &error.message,
                )
                .await;
        })
    }
}
