//! Where a driver's GPU requests go: the [`GpuBroker`] trait and [`ProvisionerBroker`], its
//! implementation over [`drover_provision::Provisioner`].
//!
//! A driver sends `acquire_gpu`, `lease_status`, `lease_logs` and `release_gpu` as requests on
//! its transport; the session checks them (the job must be running on that session, the lease
//! must have been acquired by that driver) and hands them to the broker together with a
//! [`LeaseOwner`]. The broker's answer (a `lease`, a `lease_log` or a [`WireError`]) is the
//! reply, correlated by the request's id. A session runs at most
//! [`crate::session::MAX_BROKER_REQUESTS`] broker calls at once; more are answered with an
//! error at once.
//!
//! Ownership is checked twice: the supervisor only forwards a lease request for a lease that
//! the same driver acquired, and a broker must still refuse (`unknown_lease`, so it does not
//! even confirm that the lease exists) any lease whose recorded owner is another driver.
//! [`ProvisionerBroker`] records the owner of every lease it hands out.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use drover_proto::{AcquireGpu, DriverName, ErrorCode, JobId, Lease, LeaseId, LeaseLog, WireError};
use drover_provision::{JobContext, LeaseError, Provider, Provisioner};
use drover_store::Store;

/// The future a [`GpuBroker`] method returns.
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, WireError>> + Send + 'a>>;

/// Who asks for a lease operation: the driver, and the job the lease is (or will be) for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseOwner {
    /// The driver that sent the request.
    pub driver: DriverName,
    /// The job the lease belongs to.
    pub job_id: JobId,
}

/// Rents and manages GPUs on behalf of drivers. Implementations must refuse (with
/// [`ErrorCode::UnknownLease`]) every operation on a lease whose owner is another driver.
pub trait GpuBroker: Send + Sync + 'static {
    /// Rents GPUs for `owner.job_id`, gated against `budget_usd` (the job's whole budget).
    fn acquire<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        budget_usd: f64,
        req: AcquireGpu,
    ) -> BrokerFuture<'a, Lease>;

    /// The state of one of `owner`'s leases.
    fn status<'a>(&'a self, owner: &'a LeaseOwner, lease_id: LeaseId) -> BrokerFuture<'a, Lease>;

    /// The last `tail` log lines of one of `owner`'s leases.
    fn logs<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        lease_id: LeaseId,
        tail: u32,
    ) -> BrokerFuture<'a, LeaseLog>;

    /// Releases one of `owner`'s leases (destroy, confirm, settle). Releasing twice is
    /// harmless.
    fn release<'a>(&'a self, owner: &'a LeaseOwner, lease_id: LeaseId) -> BrokerFuture<'a, Lease>;
}

/// A [`GpuBroker`] over the gated provisioner: every rental is estimated, gated, reserved and
/// bounded by `drover-provision`. It remembers which driver owns each lease it handed out
/// (in memory: leases of a previous supervisor run are the provisioner's reaper's business).
pub struct ProvisionerBroker<P: Provider, S: Store> {
    provisioner: Arc<Provisioner<P, S>>,
    owners: Mutex<HashMap<LeaseId, LeaseOwner>>,
}

impl<P: Provider, S: Store> std::fmt::Debug for ProvisionerBroker<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionerBroker").finish_non_exhaustive()
    }
}

impl<P: Provider, S: Store> ProvisionerBroker<P, S> {
    /// A broker that rents through `provisioner`.
    pub fn new(provisioner: Arc<Provisioner<P, S>>) -> Self {
        Self { provisioner, owners: Mutex::new(HashMap::new()) }
    }

    /// The provisioner behind this broker.
    pub fn provisioner(&self) -> &Arc<Provisioner<P, S>> {
        &self.provisioner
    }

    fn check_owner(&self, owner: &LeaseOwner, lease_id: &LeaseId) -> Result<(), WireError> {
        let owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        match owners.get(lease_id) {
            Some(recorded) if recorded.driver == owner.driver => Ok(()),
            _ => Err(unknown_lease(lease_id)),
        }
    }
}

/// The `unknown_lease` error: said alike for a lease that does not exist and for one that
/// belongs to another driver.
pub fn unknown_lease(lease_id: &LeaseId) -> WireError {
    wire(ErrorCode::UnknownLease, format!("no lease {lease_id} belongs to this driver"))
}

/// A [`WireError`] without violations or details.
pub(crate) fn wire(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError { code, message: message.into(), violations: Vec::new(), details: None }
}

/// A provisioner lease error as the driver sees it; internals stay in the supervisor's log.
fn lease_error(error: &LeaseError) -> WireError {
    match error {
        LeaseError::Unknown(id) => unknown_lease(id),
        LeaseError::Busy(id) => {
            wire(ErrorCode::NotReady, format!("lease {id} is still being provisioned"))
        }
        LeaseError::Provider(_) | LeaseError::DestroyUnconfirmed { .. } => {
            wire(ErrorCode::ProviderUnavailable, error.to_string())
        }
        LeaseError::Store(_) => wire(ErrorCode::Internal, "internal error"),
    }
}

impl<P: Provider, S: Store> GpuBroker for ProvisionerBroker<P, S> {
    fn acquire<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        budget_usd: f64,
        req: AcquireGpu,
    ) -> BrokerFuture<'a, Lease> {
        Box::pin(async move {
            let ctx = JobContext { budget_usd, actor: format!("driver:{}", owner.driver) };
            let lease = self.provisioner.acquire(&req, &ctx).await.map_err(|error| {
                tracing::info!(driver = %owner.driver, job = %owner.job_id, %error, "acquire_gpu refused");
                error.to_wire()
            })?;
            self.owners
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(lease.lease_id.clone(), owner.clone());
            Ok(lease)
        })
    }

    fn status<'a>(&'a self, owner: &'a LeaseOwner, lease_id: LeaseId) -> BrokerFuture<'a, Lease> {
        Box::pin(async move {
            self.check_owner(owner, &lease_id)?;
            self.provisioner.status(&lease_id).await.map_err(|e| lease_error(&e))
        })
    }

    fn logs<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        lease_id: LeaseId,
        tail: u32,
    ) -> BrokerFuture<'a, LeaseLog> {
        Box::pin(async move {
            self.check_owner(owner, &lease_id)?;
            self.provisioner.logs(&lease_id, tail).await.map_err(|e| lease_error(&e))
        })
    }

    fn release<'a>(&'a self, owner: &'a LeaseOwner, lease_id: LeaseId) -> BrokerFuture<'a, Lease> {
        Box::pin(async move {
            self.check_owner(owner, &lease_id)?;
            let actor = format!("driver:{}", owner.driver);
            self.provisioner.release(&lease_id, &actor).await.map_err(|e| lease_error(&e))
        })
    }
}
