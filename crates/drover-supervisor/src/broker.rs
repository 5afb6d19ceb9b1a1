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
//! was acquired for a job still running on the same session (leases are scoped to (session,
//! job), and forgotten when they are released or their job ends), and a broker must still
//! refuse (`unknown_lease`, so it does not even confirm that the lease exists) any lease of
//! another job. [`ProvisionerBroker`] reads the job from the lease's own record.
//!
//! Authority comes from the job: before anything reaches a broker, the session checks the
//! driver's `acquire_gpu` against the GPU request of the job it names ([`authorize`]): GPU
//! count, models, `max_usd_per_hour`, `min_gpu_ram_gib` and `min_reliability` may only narrow
//! what the job asked for (a field the driver leaves out takes the job's value). A request
//! outside the job's is refused with `forbidden`, `details.field` naming the field, and
//! reported to [`GpuBroker::refused`] so the refusal is audited; the job's remaining budget is
//! the provisioner's gate's business.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use drover_proto::{
    AcquireGpu, DriverName, ErrorCode, GpuRequest, JobId, Lease, LeaseId, LeaseLog, WireError,
};
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
/// [`ErrorCode::UnknownLease`]) every operation on a lease of another job than `owner.job_id`.
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

    /// Records (audits) a request the session refused before it reached the broker: an
    /// `acquire_gpu` outside its job's GPU request, or one for a job that may not rent.
    fn refused<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        error: &'a WireError,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// Checks `asked` (a driver's `acquire_gpu.gpu`) against `job` (the GPU request of the job it
/// runs) and returns the request to rent: the driver's, with every field it left out taken
/// from the job. A field outside the job's request is refused with `forbidden` naming it.
pub fn authorize(job: &GpuRequest, asked: &GpuRequest) -> Result<GpuRequest, WireError> {
    let refuse = |field: &str, why: String| {
        let mut details = serde_json::Map::new();
        details.insert("field".into(), field.into());
        WireError {
            code: ErrorCode::Forbidden,
            message: format!("{field} is outside the job's GPU request: {why}"),
            violations: Vec::new(),
            details: Some(details),
        }
    };
    let mut granted = asked.clone();
    if asked.count > job.count {
        return Err(refuse("gpu.count", format!("the job allows at most {}", job.count)));
    }
    if !job.models.is_empty() {
        if asked.models.is_empty() {
            granted.models.clone_from(&job.models);
        } else if let Some(bad) = asked.models.iter().position(|m| !job.models.contains(m)) {
            return Err(refuse(
                "gpu.models",
                format!("model {} of the request is not one the job allows", bad + 1),
            ));
        }
    }
    if let Some(cap) = job.max_usd_per_hour {
        match asked.max_usd_per_hour {
            None => granted.max_usd_per_hour = Some(cap),
            Some(p) if p <= cap => {}
            Some(_) => {
                return Err(refuse("gpu.max_usd_per_hour", format!("the job allows {cap} USD/h")));
            }
        }
    }
    if let Some(floor) = job.min_gpu_ram_gib {
        match asked.min_gpu_ram_gib {
            None => granted.min_gpu_ram_gib = Some(floor),
            Some(g) if g >= floor => {}
            Some(_) => {
                return Err(refuse("gpu.min_gpu_ram_gib", format!("the job needs {floor} GiB")));
            }
        }
    }
    if let Some(floor) = job.min_reliability {
        match asked.min_reliability {
            None => granted.min_reliability = Some(floor),
            Some(r) if r >= floor => {}
            Some(_) => {
                return Err(refuse("gpu.min_reliability", format!("the job needs {floor}")));
            }
        }
    }
    Ok(granted)
}

/// A [`GpuBroker`] over the gated provisioner: every rental is estimated, gated, reserved and
/// bounded by `drover-provision`. Ownership is read from the lease's own record (the job it
/// was rented for), so nothing here grows with the number of leases ever handed out.
pub struct ProvisionerBroker<P: Provider, S: Store> {
    provisioner: Arc<Provisioner<P, S>>,
}

impl<P: Provider, S: Store> std::fmt::Debug for ProvisionerBroker<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionerBroker").finish_non_exhaustive()
    }
}

impl<P: Provider, S: Store> ProvisionerBroker<P, S> {
    /// A broker that rents through `provisioner`.
    pub fn new(provisioner: Arc<Provisioner<P, S>>) -> Self {
        Self { provisioner }
    }

    /// The provisioner behind this broker.
    pub fn provisioner(&self) -> &Arc<Provisioner<P, S>> {
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

impl<P: Provider, S: Store> GpuBroker for ProvisionerBroker<P, S> {
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
            self.provisioner.acquire(&req, &ctx).await.map_err(|error| {
                tracing::info!(driver = %owner.driver, job = %owner.job_id, %error, "acquire_gpu refused");
                error.to_wire()
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(count: u8, models: &[&str], max_usd_per_hour: Option<f64>) -> GpuRequest {
        GpuRequest {
            count,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            min_gpu_ram_gib: None,
            max_usd_per_hour,
            min_reliability: None,
            pricing: drover_proto::Pricing::OnDemand,
        }
    }

    fn field(e: &WireError) -> &str {
        e.details.as_ref().and_then(|d| d.get("field")).and_then(|f| f.as_str()).unwrap_or("")
    }

    #[test]
    fn a_request_may_only_narrow_the_jobs() {
        let job = gpu(2, &["RTX 3060", "RTX 4090"], Some(0.5));
        // Left out: the job's values are taken.
        let granted = authorize(&job, &gpu(1, &[], None)).unwrap();
        assert_eq!(granted.models, job.models);
        assert_eq!(granted.max_usd_per_hour, Some(0.5));
        // Narrower: kept as asked.
        let granted = authorize(&job, &gpu(2, &["RTX 4090"], Some(0.3))).unwrap();
        assert_eq!((granted.models.len(), granted.max_usd_per_hour), (1, Some(0.3)));
        // Wider: refused, naming the field.
        for (asked, name) in [
            (gpu(3, &[], None), "gpu.count"),
            (gpu(1, &["RTX 4090", "H100 SXM"], None), "gpu.models"),
            (gpu(1, &[], Some(0.51)), "gpu.max_usd_per_hour"),
        ] {
            let e = authorize(&job, &asked).unwrap_err();
            assert_eq!((e.code, field(&e)), (ErrorCode::Forbidden, name), "{e:?}");
        }
        let mut floor = gpu(1, &[], None);
        floor.min_gpu_ram_gib = Some(24);
        floor.min_reliability = Some(0.99);
        let mut lower = floor.clone();
        lower.min_gpu_ram_gib = Some(16);
        assert_eq!(field(&authorize(&floor, &lower).unwrap_err()), "gpu.min_gpu_ram_gib");
        let mut shaky = floor.clone();
        shaky.min_reliability = Some(0.9);
        assert_eq!(field(&authorize(&floor, &shaky).unwrap_err()), "gpu.min_reliability");
        let granted = authorize(&floor, &gpu(1, &[], None)).unwrap();
        assert_eq!((granted.min_gpu_ram_gib, granted.min_reliability), (Some(24), Some(0.99)));
        // A job that allows any model allows any.
        assert!(authorize(&gpu(1, &[], None), &gpu(1, &["H100 SXM"], Some(9.0))).is_ok());
    }
}
