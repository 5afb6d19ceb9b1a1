//! Bodies of the HTTP API: what `POST /v1/jobs` and `POST /v1/estimates` accept, what every
//! route answers, the server-sent events of a job, the audit line and the webhook payload.
//!
//! Every request body denies unknown fields and bounds every string, array, map and number,
//! so schema validation (which runs before any handler logic) rejects abuse as well as wrong
//! types. The API serves these same schemas in `GET /v1/openapi.json`, and `schemas/api/`
//! holds them for clients; [`API_SCHEMAS`] lists them.
//!
//! | Route | Request | Response |
//! |---|---|---|
//! | `POST /v1/jobs` | [`JobSpec`] | [`Job`] (201, or 200 when an `Idempotency-Key` replays) |
//! | `GET /v1/jobs` | [`JobListQuery`] (query string) | [`JobList`] |
//! | `GET /v1/jobs/{id}` | | [`Job`] |
//! | `DELETE /v1/jobs/{id}` | | [`Job`] |
//! | `GET /v1/jobs/{id}/events` | `Last-Event-ID` | `text/event-stream` of [`JobEvent`] |
//! | `POST /v1/estimates` | [`EstimateRequest`], or a [`JobSpec`] ([`EstimateRequest::for_job`]) | [`EstimateResponse`] |
//! | `GET /v1/drivers` | | [`DriverList`] |
//! | `GET /healthz`, `GET /readyz` | | [`Health`], [`Readiness`] |
//! | every error | | [`ErrorBody`] |

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{ActionName, DriverName, JobId};
use crate::limits;
use crate::messages::{
    CostEstimate, GpuRequest, JobLog, JobPhase, JobProgress, JobResult, JobState, ParamsSchema,
    Violation,
};

/// Most jobs one page of `GET /v1/jobs` returns.
pub const MAX_PAGE: u32 = 500;
/// Jobs per page when the query does not say.
pub const DEFAULT_PAGE: u32 = 50;
/// Longest webhook URL, in characters.
pub const WEBHOOK_URL_LEN: u32 = 2048;
/// Longest `Idempotency-Key` header value, in characters.
pub const IDEMPOTENCY_KEY_LEN: usize = 255;

/// A job submission: the body of `POST /v1/jobs`.
///
/// ```json
/// {"driver": "container", "action": "run",
///  "params": {"image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime", "command": ["python", "-c", "print(1)"]},
///  "gpu": {"count": 1, "models": ["RTX 4090"]},
///  "max_runtime_s": 3600, "budget_usd": 2.5}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The registered driver that runs the job.
    pub driver: DriverName,
    /// The driver action to run.
    pub action: ActionName,
    /// The action's parameters; validated against the schema the driver declared for it.
    #[serde(default)]
    #[schemars(extend("maxProperties" = limits::PARAMS_PROPERTIES))]
    pub params: Map<String, Value>,
    /// GPUs the job may rent. Absent: the job may not rent any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRequest>,
    /// Hard cap on the job's run time, in seconds; the job is cancelled when it is reached.
    #[schemars(range(min = 1, max = limits::MAX_RUNTIME_S))]
    pub max_runtime_s: u32,
    /// The most the job may spend on rentals, in USD. Every rental is gated against what is
    /// left of it.
    #[schemars(range(min = 0.0, max = limits::MAX_USD))]
    pub budget_usd: f64,
    /// Free-form labels for filtering and for the caller's own bookkeeping.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "propertyNames" = {"pattern": "^[a-z0-9][a-z0-9._/-]{0,62}$"},
        "additionalProperties" = {"type": "string", "maxLength": 256},
    ))]
    pub labels: BTreeMap<String, String>,
    /// Where to POST a signed `job.finished` event when the job reaches a terminal state.
    /// `https://` URLs only, unless the operator allows plain HTTP. The body is signed with
    /// HMAC-SHA256 over `timestamp + "." + body` (see the `Drover-Signature` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = WEBHOOK_URL_LEN), regex(pattern = r"^https?://[^\s]+$"))]
    pub webhook_url: Option<String>,
}

/// A job as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The job's id, chosen by the supervisor.
    pub id: JobId,
    /// Where the job is.
    pub state: JobPhase,
    /// What was submitted.
    pub spec: JobSpec,
    /// The name of the token that submitted it (never the token).
    #[schemars(length(min = 1, max = 64))]
    pub submitted_by: String,
    /// When it was accepted, Unix ms.
    #[schemars(range(min = 1, max = crate::ids::MAX_SAFE_INTEGER))]
    pub created_unix_ms: u64,
    /// When it last changed, Unix ms.
    #[schemars(range(min = 1, max = crate::ids::MAX_SAFE_INTEGER))]
    pub updated_unix_ms: u64,
    /// Why it is in its state, when that is worth saying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MESSAGE_LEN))]
    pub message: Option<String>,
    /// The action's output, once the driver sent its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// The query string of `GET /v1/jobs`. Numbers arrive as text and are checked as numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    /// Only jobs in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobPhase>,
    /// Only jobs of this driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<DriverName>,
    /// Only jobs carrying this label, as `key=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 320), regex(pattern = r"^[a-z0-9][a-z0-9._/-]{0,62}=.*$"))]
    pub label: Option<String>,
    /// Jobs per page, newest first. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_PAGE))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[0-9]+$"))]
    pub cursor: Option<String>,
}

/// One page of jobs, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobList {
    /// The jobs.
    #[schemars(length(max = MAX_PAGE))]
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[0-9]+$"))]
    pub next_cursor: Option<String>,
}

/// Something that happened to a job: the `data` of one server-sent event of
/// `GET /v1/jobs/{id}/events`, whose `id` is [`JobEvent::seq`] (send it back as
/// `Last-Event-ID` to resume after it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobEvent {
    /// Position in the job's history, from 1, without gaps.
    #[schemars(range(min = 1, max = crate::ids::MAX_SAFE_INTEGER))]
    pub seq: u64,
    /// When it was recorded, Unix ms.
    #[schemars(range(min = 1, max = crate::ids::MAX_SAFE_INTEGER))]
    pub at_unix_ms: u64,
    /// What happened: the driver's frame payload, as it arrived.
    pub event: JobEventKind,
}

/// The kinds of job event: the driver's job frames, validated on arrival.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEventKind {
    /// The job changed state.
    JobState(JobState),
    /// How far the job has come.
    JobProgress(JobProgress),
    /// A batch of the job's log lines.
    JobLog(JobLog),
    /// The job's result.
    JobResult(JobResult),
}

impl JobEventKind {
    /// The SSE `event:` name: the `type` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Self::JobState(_) => "job_state",
            Self::JobProgress(_) => "job_progress",
            Self::JobLog(_) => "job_log",
            Self::JobResult(_) => "job_result",
        }
    }

    /// The job the event is about.
    pub fn job_id(&self) -> &JobId {
        match self {
            Self::JobState(e) => &e.job_id,
            Self::JobProgress(e) => &e.job_id,
            Self::JobLog(e) => &e.job_id,
            Self::JobResult(e) => &e.job_id,
        }
    }
}

/// A dry-run cost estimate: the body of `POST /v1/estimates`. The same estimator and gate
/// as a real rental judge it; nothing is rented and nothing is reserved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EstimateRequest {
    /// The GPUs wanted.
    pub gpu: GpuRequest,
    /// Hard cap on the rental's life, in seconds; the estimate assumes all of it is used.
    #[schemars(range(min = 60, max = limits::MAX_RUNTIME_S))]
    pub max_runtime_s: u32,
    /// Disk for the instance, in GiB. Default 16.
    #[serde(default = "default_disk_gib")]
    #[schemars(range(min = 8, max = 16384))]
    pub disk_gib: u32,
    /// Data the instance will move over the network, in GiB. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1_000_000.0))]
    pub bandwidth_gib: f64,
    /// The budget the rental would be gated against, in USD.
    #[schemars(range(min = 0.0, max = limits::MAX_USD))]
    pub budget_usd: f64,
}

fn default_disk_gib() -> u32 {
    16
}

impl EstimateRequest {
    /// The estimate request for a job spec, as `POST /v1/estimates` and `drover estimate`
    /// read one: its `gpu`, `max_runtime_s` (at least 60, the estimate's floor) and
    /// `budget_usd`, disk from `params.disk_gib` or `params.disk` (default 16 GiB, kept within
    /// 8..=16384), no bandwidth. `None` when the job asks for no GPU: it rents nothing.
    pub fn for_job(spec: &JobSpec) -> Option<Self> {
        let gpu = spec.gpu.clone()?;
        let disk = spec
            .params
            .get("disk_gib")
            .or_else(|| spec.params.get("disk"))
            .and_then(Value::as_u64)
            .unwrap_or(u64::from(default_disk_gib()))
            .clamp(8, 16_384);
        Some(Self {
            gpu,
            max_runtime_s: spec.max_runtime_s.max(60),
            disk_gib: u32::try_from(disk).unwrap_or(16_384),
            bandwidth_gib: 0.0,
            budget_usd: spec.budget_usd,
        })
    }
}

/// The answer to `POST /v1/estimates`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EstimateResponse {
    /// Whether the gate would allow the rental.
    pub allowed: bool,
    /// The estimate, when one could be made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<CostEstimate>,
    /// The confidence the gate requires.
    #[schemars(range(min = 0.95, max = 1.0))]
    pub confidence_floor: f64,
    /// Why the gate refuses, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MESSAGE_LEN))]
    pub reason: Option<String>,
    /// The offer the estimate priced, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<OfferSummary>,
}

/// The offer an estimate priced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferSummary {
    /// The GPU model.
    #[schemars(length(max = 64))]
    pub gpu_model: String,
    /// GPUs on the machine.
    #[schemars(range(min = 1, max = limits::GPU_COUNT))]
    pub gpu_count: u8,
    /// Its price, USD per hour.
    #[schemars(range(min = 0.0, max = limits::MAX_USD))]
    pub usd_per_hour: f64,
}

/// The answer to `GET /v1/drivers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverList {
    /// Every configured driver.
    #[schemars(length(max = 64))]
    pub drivers: Vec<DriverView>,
}

/// A registered driver, as its latest `hello` described it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverView {
    /// The driver's name.
    pub name: DriverName,
    /// Its version, once a session said it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub version: Option<String>,
    /// How it is doing.
    pub health: DriverHealth,
    /// Sessions that finished their handshake and are alive.
    #[schemars(range(max = 64))]
    pub ready_sessions: u16,
    /// Its actions, each with the JSON Schema a job's `params` must satisfy.
    #[schemars(extend("maxProperties" = limits::ACTIONS))]
    pub actions: BTreeMap<ActionName, ParamsSchema>,
    /// The local GPUs its processes hold (its configuration's `gpus`); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub gpus: Vec<GpuHeld>,
}

/// A local GPU a driver holds, as the supervisor found it at start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuHeld {
    /// Its index as `nvidia-smi` lists it.
    #[schemars(range(max = 1023))]
    pub index: u32,
    /// Its UUID.
    pub uuid: crate::config::GpuUuid,
    /// Its model name.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Its PCI bus id (`00000000:19:00.0`).
    #[schemars(length(min = 1, max = 32))]
    pub pci_bus_id: String,
}

/// How a driver is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriverHealth {
    /// No session has finished its handshake yet.
    Starting,
    /// Every wanted session is up.
    Ready,
    /// Some sessions are up, some are restarting.
    Degraded,
    /// It crash-looped and is no longer restarted.
    Failed,
}

/// The answer to `GET /healthz`: the process serves HTTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `ok`.
    #[schemars(length(max = 8))]
    pub status: String,
}

/// The answer to `GET /readyz`: whether the supervisor can take jobs (200) or not (503).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    /// True when every check passes.
    pub ready: bool,
    /// Each check by name (`store`, `drivers`, ...).
    #[schemars(extend("maxProperties" = 32))]
    pub checks: BTreeMap<String, Check>,
}

/// One readiness check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Whether it passes.
    pub ok: bool,
    /// What is wrong, in words safe to show (never an internal error text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub message: Option<String>,
}

/// The body of every error response.
///
/// ```json
/// {"error": "invalid_request", "request_id": "req-5f0c2a9e31d4b7c8",
///  "violations": [{"instance_path": "/max_runtime_s", "schema_path": "/properties/max_runtime_s/minimum",
///                  "message": "value is less than the minimum of 1"}]}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong, as a stable code.
    pub error: ApiErrorCode,
    /// The request's id; the server's log has the details under it.
    #[schemars(length(min = 1, max = 64))]
    pub request_id: String,
    /// A short explanation safe to show. Never an internal error, path or query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MESSAGE_LEN))]
    pub message: Option<String>,
    /// For `invalid_request`: each violation, with JSON pointers into the request body
    /// (`/params/...` for the driver's params schema) and into the schema.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::VIOLATIONS))]
    pub violations: Vec<Violation>,
    /// Development mode only: the internal error. Production never sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub detail: Option<String>,
}

/// A stable API error code; each has one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// 400: the request breaks its schema (see `violations`) or names something unknown.
    InvalidRequest,
    /// 401: no token, or one that is malformed, unknown or revoked.
    Unauthorized,
    /// 403: a valid token without the scope the route needs.
    Forbidden,
    /// 404: no such route or resource.
    NotFound,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 409: the request conflicts with the resource's state, or reuses an `Idempotency-Key`
    /// for a different request.
    Conflict,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 429: the token's rate limit; see `Retry-After`.
    RateLimited,
    /// 500: something failed inside; the log has it under `request_id`.
    Internal,
    /// 503: the supervisor cannot serve this now.
    Unavailable,
    /// 503: free space on the store's volume is below `store.min_free_bytes`; new work is
    /// refused until space returns. See `Retry-After`.
    StorageLow,
}

impl ApiErrorCode {
    /// The HTTP status code of this error.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable | Self::StorageLow => 503,
        }
    }

    /// The code as it appears in the body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::StorageLow => "storage_low",
        }
    }
}

/// One audit line: `{timestamp, request_id, actor, action, resource, result, metadata}`.
///
/// Every API request, and every job, gate, lease and destroy event, is one of these, appended
/// to the store and optionally to a file as JSON lines. `actor` is a token's name, never the
/// token; `metadata` never holds a secret.
///
/// ```json
/// {"timestamp": "2026-11-22T09:14:03.120Z", "request_id": "req-5f0c2a9e31d4b7c8", "actor": "ci",
///  "action": "job.submit", "resource": "job:job-0194f3a2b7c1-9d3e", "result": "ok",
///  "metadata": {"driver": "container", "budget_usd": 2.5}}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// When, RFC 3339 UTC with milliseconds.
    #[schemars(
        length(min = 24, max = 24),
        regex(pattern = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    )]
    pub timestamp: String,
    /// The API request it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub request_id: Option<String>,
    /// Who: a token name, `anonymous`, or an internal actor (`supervisor`, `reaper`).
    #[schemars(length(min = 1, max = 64))]
    pub actor: String,
    /// What, dotted: `http.request`, `job.submit`, `job.cancel`, `gate.decide`, `lease.reserve`.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z][a-z0-9_.]*$"))]
    pub action: String,
    /// On what: `route:GET /v1/jobs`, `job:<id>`, `lease:<id>`.
    #[schemars(length(max = 256))]
    pub resource: String,
    /// How it ended: `ok`, `denied`, `rejected`, `error`, or an HTTP status.
    #[schemars(length(min = 1, max = 64))]
    pub result: String,
    /// The numbers and reasons; never a secret.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schemars(extend("maxProperties" = limits::FIELDS))]
    pub metadata: Map<String, Value>,
}

/// The body of an outbound webhook. Signed: `Drover-Signature: t=<unix seconds>,v1=<hex
/// HMAC-SHA256(secret, t + "." + body)>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEvent {
    /// Unique per event; a receiver drops repeats (deliveries are retried).
    #[schemars(length(min = 1, max = 64))]
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: WebhookKind,
    /// When, Unix ms.
    #[schemars(range(min = 1, max = crate::ids::MAX_SAFE_INTEGER))]
    pub created_unix_ms: u64,
    /// The job, as `GET /v1/jobs/{id}` shows it.
    pub job: Job,
}

/// What a webhook reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum WebhookKind {
    /// The job reached a terminal state.
    #[serde(rename = "job.finished")]
    JobFinished,
    /// The job's budget cannot cover what it asked for.
    #[serde(rename = "budget.exhausted")]
    BudgetExhausted,
}

/// One API schema: its name in OpenAPI `components/schemas`, its file under `schemas/`, and
/// how to generate it.
#[derive(Clone, Copy, Debug)]
pub struct ApiSchema {
    /// The component name, e.g. `JobSpec`.
    pub name: &'static str,
    /// The path under `schemas/`, e.g. `api/job-spec.json`.
    pub path: &'static str,
    /// Generates the schema (see [`crate::schema::api_schema`]).
    pub generate: fn() -> Value,
}

macro_rules! api_schemas {
    ($($ty:ident => $path:literal),* $(,)?) => {
        /// Every API body, in the order OpenAPI lists them.
        pub const API_SCHEMAS: &[ApiSchema] = &[
            $(ApiSchema {
                name: stringify!($ty),
                path: $path,
                generate: || crate::generate::api_schema::<$ty>(stringify!($ty)),
            }),*
        ];
    };
}

api_schemas! {
    JobSpec => "api/job-spec.json",
    Job => "api/job.json",
    JobListQuery => "api/job-list-query.json",
    JobList => "api/job-list.json",
    JobEvent => "api/job-event.json",
    EstimateRequest => "api/estimate-request.json",
    EstimateResponse => "api/estimate-response.json",
    DriverList => "api/driver-list.json",
    Health => "api/health.json",
    Readiness => "api/readiness.json",
    ErrorBody => "api/error.json",
    AuditEvent => "api/audit-event.json",
    WebhookEvent => "api/webhook-event.json",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_its_status_and_name() {
        for code in [
            ApiErrorCode::InvalidRequest,
            ApiErrorCode::Unauthorized,
            ApiErrorCode::Forbidden,
            ApiErrorCode::NotFound,
            ApiErrorCode::MethodNotAllowed,
            ApiErrorCode::Conflict,
            ApiErrorCode::PayloadTooLarge,
            ApiErrorCode::UnsupportedMediaType,
            ApiErrorCode::RateLimited,
            ApiErrorCode::Internal,
            ApiErrorCode::Unavailable,
            ApiErrorCode::StorageLow,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str());
            assert!((400..600).contains(&code.status()));
        }
    }

    #[test]
    fn api_schemas_are_self_contained_and_named() {
        let mut names = std::collections::BTreeSet::new();
        for schema in API_SCHEMAS {
            assert!(names.insert(schema.name), "{} listed twice", schema.name);
            let value = (schema.generate)();
            assert_eq!(value["$id"], format!("urn:drover:api:{}", schema.name));
            // Compiles and resolves every `$ref` inside itself.
            let validator = jsonschema::draft202012::new(&value).unwrap();
            let _ = validator.is_valid(&serde_json::json!({}));
        }
    }

    #[test]
    fn job_spec_example_is_valid() {
        let example = serde_json::json!({"driver": "container", "action": "run",
            "params": {"image": "x"}, "gpu": {"count": 1, "models": ["RTX 4090"]},
            "max_runtime_s": 3600, "budget_usd": 2.5, "webhook_url": "https://example.test/hook"});
        let schema = crate::generate::api_schema::<JobSpec>("JobSpec");
        assert!(jsonschema::draft202012::is_valid(&schema, &example));
        let spec: JobSpec = serde_json::from_value(example).unwrap();
        assert_eq!(spec.webhook_url.as_deref(), Some("https://example.test/hook"));
    }

    #[test]
    fn event_kind_names_match_their_tags() {
        let event = JobEventKind::JobState(JobState {
            job_id: "j-1".parse().unwrap(),
            state: JobPhase::Running,
            message: None,
        });
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], event.name());
        assert_eq!(event.job_id().as_str(), "j-1");
    }
}
