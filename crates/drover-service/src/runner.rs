//! What the service needs from whatever runs jobs on drivers: the [`JobRunner`] trait.
//!
//! The supervisor (`drover-supervisor`) is the real runner: [`crate::supervisor`] adapts it.
//! The trait is narrow so the service's own rules (durability, event order, cancellation,
//! recovery) are testable without spawning drivers.
//!
//! Contract:
//!
//! - [`JobRunner::dispatch`] either refuses at once ([`RunError`]; nothing was sent to a driver)
//!   or returns the job's events. The events end with a terminal [`JobEventKind::JobState`]
//!   and then the channel closes; a channel that closes without one means the runner lost
//!   the job, and the service records it as failed.
//! - [`JobRunner::cancel`] asks for a running job to stop and returns at once; `false` when
//!   the runner does not know the job (not dispatched yet, or already ended). The outcome
//!   arrives as the job's terminal state on its event channel.

use std::sync::Arc;
use std::time::Duration;

use drover_api::BoxFuture;
use drover_api::backend::SchemaLookupError;
use drover_proto::api::{DriverList, JobEventKind};
use drover_proto::{ActionName, DriverName, GpuRequest, JobId, ParamsSchema};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// A job to run on a driver.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRequest {
    /// The job.
    pub job_id: JobId,
    /// The driver that runs it.
    pub driver: DriverName,
    /// The action.
    pub action: ActionName,
    /// The action's parameters (already valid against the driver's schema).
    pub params: Map<String, Value>,
    /// The GPUs the job may rent; `None`: none.
    pub gpu: Option<GpuRequest>,
    /// Hard cap on the job's run time from now.
    pub max_runtime: Duration,
    /// What the job may spend on rentals, in USD.
    pub budget_usd: f64,
}

/// Something that happened to a running job.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEvent {
    /// A job frame from the driver (or a terminal state the runner made for it).
    Job(JobEventKind),
    /// The driver died with the job running; a terminal state follows.
    DriverDied {
        /// The typed cause, in words.
        cause: String,
    },
}

/// Why a job was not dispatched. Nothing was sent to a driver.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// Not now: the driver is starting or busy. The service tries again until the job's
    /// deadline.
    #[error("not yet: {0}")]
    Retry(String),
    /// Never: unknown driver or action, a failed driver, invalid params.
    #[error("{0}")]
    Refused(String),
}

/// Runs jobs on drivers. See the [module docs](self).
pub trait JobRunner: Send + Sync + 'static {
    /// Sends the job to a driver; its events follow on the returned channel.
    fn dispatch(
        &self,
        request: RunRequest,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<RunEvent>, RunError>>;

    /// Asks a running job to stop; `false` when the runner does not know it.
    fn cancel<'a>(&'a self, job_id: &'a JobId, reason: &'a str) -> BoxFuture<'a, bool>;

    /// The configured drivers, their actions and health.
    fn drivers(&self) -> BoxFuture<'_, DriverList>;

    /// The params schema a driver declared for an action (a map lookup).
    fn params_schema(
        &self,
        driver: &DriverName,
        action: &ActionName,
    ) -> Result<Arc<ParamsSchema>, SchemaLookupError>;
}
