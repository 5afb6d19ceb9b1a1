//! What the API needs from the rest of drover: the [`Backend`] trait.
//!
//! The API is a thin, strict shell: it authenticates, rate-limits, validates and audits, then
//! calls one method of [`Backend`]. The supervisor (`drover-supervisor`) implements it,
//! delegating job storage to `drover-store`, estimates to `drover-provision`'s estimator and
//! gate, and driver information to its registry. The router holds it as
//! `Arc<dyn Backend>`; methods return boxed futures so the trait stays object-safe.
//!
//! # Contract for implementations
//!
//! - [`Backend::submit`] returns only after the job is durable (`Store::submit_job` has
//!   committed): the API acknowledges the job (201) the moment it returns. With an idempotency
//!   key, it returns the earlier job and `replayed: true` for the same request, and
//!   [`BackendError::IdempotencyConflict`] for a different request under the same key
//!   (keys are scoped to `Submission::actor`).
//! - The spec it receives is already schema-valid, and its `params` already satisfy the
//!   schema [`Backend::params_schema`] returned for its driver and action.
//! - [`Backend::events`] yields the job's events with `seq > after`, in order, first from
//!   history and then live, and ends after the terminal state. The API turns them into
//!   server-sent events with `id: seq`, so a client resumes with `Last-Event-ID`.
//! - [`Backend::estimate`] runs the same estimator and gate as a rental, reserves nothing and
//!   rents nothing.
//! - [`Backend::audit`] appends the batch to the store's audit log.
//! - Errors: [`BackendError::Internal`] carries any error for the log; the client sees
//!   only `{"error": "internal", "request_id": ...}`. Never put a secret in any error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use drover_proto::api::{
    AuditEvent, DriverList, EstimateRequest, EstimateResponse, Job, JobEvent, JobList, JobSpec,
    Readiness,
};
use drover_proto::{ActionName, DriverName, JobId, JobPhase, ParamsSchema};
use futures_util::Stream;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A job's events, oldest first.
pub type EventStream = Pin<Box<dyn Stream<Item = JobEvent> + Send>>;

/// A validated submission.
#[derive(Clone, Debug, PartialEq)]
pub struct Submission {
    /// The job.
    pub spec: JobSpec,
    /// The submitting token's name.
    pub actor: String,
    /// The request's `Idempotency-Key`, if any, with the SHA-256 (hex) of the body.
    pub idempotency: Option<(String, String)>,
    /// The request id, for the backend's own logs and audit events.
    pub request_id: String,
}

/// What a submission produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    /// The job, durable.
    pub job: Job,
    /// True when an idempotency key replayed an earlier submission.
    pub replayed: bool,
}

/// A validated `GET /v1/jobs` query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<JobPhase>,
    /// Only jobs of this driver.
    pub driver: Option<DriverName>,
    /// Only jobs with this label.
    pub label: Option<(String, String)>,
    /// Page size.
    pub limit: u32,
    /// The previous page's `next_cursor`, parsed.
    pub cursor: Option<u64>,
    /// Only jobs this actor submitted (a token without `jobs:admin` sees only its own);
    /// `None`: every owner's.
    pub submitted_by: Option<String>,
}

/// Why [`Backend::params_schema`] has no schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaLookupError {
    /// No driver of that name is configured.
    #[error("no driver of that name is registered")]
    UnknownDriver,
    /// The driver declared no action of that name.
    #[error("the driver declares no action of that name")]
    UnknownAction,
    /// The driver has not finished a handshake yet, so its actions are not known.
    #[error("the driver has not declared its actions yet")]
    NotReady,
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No such job.
    #[error("not found")]
    NotFound,
    /// The request conflicts with the resource's state (e.g. cancelling a finished job).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The `Idempotency-Key` was used for a different request.
    #[error("the idempotency key was already used for a different request")]
    IdempotencyConflict,
    /// The backend cannot serve this now (starting, shutting down, store unreachable).
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// Free space on the store's volume is below the watermark: new work is refused (503
    /// `storage_low` with `Retry-After`) before the store fails.
    #[error(
        "free space on the store's volume ({free_bytes} bytes) is below the watermark ({min_free_bytes} bytes)"
    )]
    StorageLow {
        /// Bytes available to the store.
        free_bytes: u64,
        /// `store.min_free_bytes`.
        min_free_bytes: u64,
    },
    /// Anything else. Logged under the request id; the client sees only `internal`.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BackendError {
    /// Wraps any error as [`BackendError::Internal`].
    pub fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(error))
    }
}

/// What the API needs from the supervisor and the provisioner. See the [module
/// docs](self) for the contract.
pub trait Backend: Send + Sync + 'static {
    /// Accepts a job; returns only once it is durable.
    fn submit(&self, submission: Submission) -> BoxFuture<'_, Result<Submitted, BackendError>>;

    /// One job; `None` when there is no such job.
    fn job<'a>(&'a self, id: &'a JobId) -> BoxFuture<'a, Result<Option<Job>, BackendError>>;

    /// A page of jobs, newest first.
    fn jobs(&self, query: JobQuery) -> BoxFuture<'_, Result<JobList, BackendError>>;

    /// Asks for a job to be cancelled; returns the job as it is after the request was
    /// recorded ([`BackendError::NotFound`], or [`BackendError::Conflict`] when it already
    /// ended).
    fn cancel<'a>(
        &'a self,
        id: &'a JobId,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<Job, BackendError>>;

    /// The job's events after `after`, then live ones until the job ends
    /// ([`BackendError::NotFound`] for no such job).
    fn events<'a>(
        &'a self,
        id: &'a JobId,
        after: u64,
    ) -> BoxFuture<'a, Result<EventStream, BackendError>>;

    /// Every configured driver with its actions, params schemas and health.
    fn drivers(&self) -> BoxFuture<'_, Result<DriverList, BackendError>>;

    /// The params schema a driver declared for an action. Called on every submission, so it
    /// should be a map lookup; return the same `Arc` while the schema is unchanged so the
    /// API can reuse its compiled validator.
    fn params_schema(
        &self,
        driver: &DriverName,
        action: &ActionName,
    ) -> Result<Arc<ParamsSchema>, SchemaLookupError>;

    /// A dry-run estimate through the estimator and the gate; nothing is rented.
    fn estimate(
        &self,
        request: EstimateRequest,
    ) -> BoxFuture<'_, Result<EstimateResponse, BackendError>>;

    /// Whether the supervisor can take jobs.
    fn readiness(&self) -> BoxFuture<'_, Readiness>;

    /// Appends audit events to the store.
    fn audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Brings the backend's metrics up to date before a scrape (what it reads from the
    /// store: jobs, leases, spend). The metrics themselves live in the registry given to
    /// [`ApiState::with_registry`](crate::ApiState::with_registry); nothing by default.
    fn refresh_metrics(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
