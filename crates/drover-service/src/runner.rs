//! What the service needs from whatever runs jobs on drivers: the [`JobRunner`] trait.
//!
//! The supervisor (`drover-supervisor`) is the real runner: [`crate::supervisor`] adapts it.
//! The trait is narrow so the service's own rules (durability, event order, cancellation,
//! recovery) are testable without spawning drivers.
//!
//! Contract:
//!
//! - [`JobRunner::dispatch`] takes the supervisor's own [`Dispatch`] and either refuses at once
//!   ([`RunError`]; nothing was sent to a driver) or returns the job's events, the supervisor's
//!   own [`JobEvent`]s: job frames in the API's vocabulary ([`JobEventKind`]) and the note
//!   that a driver died. One vocabulary from the driver to the store: nothing renames them on
//!   the way. The events end with a terminal [`JobEventKind::JobState`] and then the channel
//!   closes; a channel that closes without one means the runner lost
//!   the job, and the service records it as failed.
//! - [`JobRunner::cancel`] asks for a running job to stop and returns at once; `false` when
//!   the runner does not know the job (not dispatched yet, or already ended). The outcome
//!   arrives as the job's terminal state on its event channel.

use std::sync::Arc;

use drover_api::BoxFuture;
use drover_api::backend::SchemaLookupError;
use drover_proto::api::DriverList;
#[cfg(doc)]
use drover_proto::api::JobEventKind;
use drover_proto::{ActionName, DriverName, JobId, ParamsSchema};
use drover_supervisor::{Dispatch, JobEvent};
use tokio::sync::mpsc;

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
        request: Dispatch,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<JobEvent>, RunError>>;

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
