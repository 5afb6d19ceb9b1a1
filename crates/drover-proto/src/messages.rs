//! The payload of every DriverTransport message. [`crate::Message`] tags each of these with its
//! `type`; the envelope ([`crate::Frame`]) adds `id` / `re`.
//!
//! Every struct denies unknown fields, and every string, array and number carries a bound in
//! its schema (see [`crate::limits`]). Optional fields are omitted when absent; `null` is not
//! accepted for them, so each value has exactly one spelling.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{ActionName, Capability, DriverName, JobId, LeaseId, SessionId};
use crate::limits;

// ---------------------------------------------------------------------------------------------
// Handshake

/// The driver's first frame, a request answered by `welcome` or by `error` with code
/// `version_mismatch`. It must arrive within the supervisor's hello deadline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol versions the driver speaks; the supervisor picks the highest it shares.
    #[schemars(length(min = 1, max = limits::PROTOCOL_VERSIONS), inner(range(min = 1, max = 1000)))]
    #[schemars(extend("uniqueItems" = true))]
    pub protocol_versions: Vec<u16>,
    /// Who the driver is.
    pub driver: DriverInfo,
    /// Optional features the driver implements (for example `cancel`, `progress`). Names the
    /// supervisor does not know are ignored.
    #[serde(default)]
    #[schemars(length(max = limits::CAPABILITIES), extend("uniqueItems" = true))]
    pub capabilities: Vec<Capability>,
    /// The actions the driver offers, each with the JSON Schema (draft 2020-12) that a job's
    /// `params` must satisfy. The supervisor validates params before it dispatches a job.
    #[schemars(extend("minProperties" = 1, "maxProperties" = limits::ACTIONS))]
    pub actions: BTreeMap<ActionName, ParamsSchema>,
    /// SHA-256 (lowercase hex) of the schema set the driver was built against: the digest of
    /// `schemas/transport/SHA256SUMS`. A mismatch is logged, not fatal; versions decide.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub schema_sha256: String,
    /// The largest frame the driver is willing to receive, in bytes. The supervisor answers
    /// with the smaller of this and its own limit. Absent: 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = limits::MIN_MAX_FRAME_BYTES, max = limits::NEGOTIABLE_MAX_FRAME_BYTES))]
    pub max_frame_bytes: Option<u32>,
}

/// A driver's name and version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverInfo {
    /// The driver's name.
    pub name: DriverName,
    /// The driver's own version, free-form (semantic versioning recommended).
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[0-9A-Za-z.+_-]+$"))]
    pub version: String,
}

/// A JSON Schema (draft 2020-12) for an action's `params`: an object or a boolean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParamsSchema(pub Value);

impl JsonSchema for ParamsSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ParamsSchema".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A JSON Schema (draft 2020-12) for an action's `params`: an object or a boolean.",
            "type": ["object", "boolean"],
        })
    }
}

/// The supervisor's answer to `hello`: the session is open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// The protocol version chosen for this session.
    #[schemars(range(min = 1, max = 1000))]
    pub protocol_version: u16,
    /// This session's id, used in the supervisor's logs.
    pub session_id: SessionId,
    /// How often the supervisor will `ping`, in milliseconds. A driver that misses several
    /// pings in a row is considered hung and restarted.
    #[schemars(range(min = 100, max = 600_000))]
    pub heartbeat_ms: u32,
    /// The largest frame either side may send for the rest of the session, in bytes.
    #[schemars(range(min = limits::MIN_MAX_FRAME_BYTES, max = limits::NEGOTIABLE_MAX_FRAME_BYTES))]
    pub max_frame_bytes: u32,
}

// ---------------------------------------------------------------------------------------------
// Control

/// A heartbeat request; the receiver answers with `pong` at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ping {}

/// The answer to `ping`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pong {}

/// The answer to a request that only needs acknowledging (`run_job`, `cancel_job`,
/// `shutdown`): the request was accepted; what follows arrives as events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ack {}

/// Asks the driver to finish: stop taking work, bring running jobs to a terminal state and
/// exit within `grace_ms`. After the grace period the supervisor closes the transport, then
/// sends SIGTERM, then SIGKILL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// How long the driver has, in milliseconds.
    #[schemars(range(max = limits::MAX_GRACE_MS))]
    pub grace_ms: u32,
}

/// A structured error, as the reply to a request (`re` set) or as an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WireError {
    /// What went wrong, as a stable code.
    pub code: ErrorCode,
    /// A human-readable explanation. It never repeats a received value that could be long or
    /// carry a secret.
    #[schemars(length(max = limits::MESSAGE_LEN))]
    pub message: String,
    /// For `schema_violation`: each violation, in the order found (at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::VIOLATIONS))]
    pub violations: Vec<Violation>,
    /// Structured data for the code, e.g. `{"supported": [1], "offered": [2]}` for
    /// `version_mismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = limits::FIELDS))]
    pub details: Option<Map<String, Value>>,
}

/// A stable error code. Codes are snake_case; the set grows only with a protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame's payload is not UTF-8.
    InvalidUtf8,
    /// A frame's payload is not one JSON object (syntax, duplicate key, nesting too deep).
    InvalidJson,
    /// A frame's declared length is over the session's `max_frame_bytes`; it was discarded.
    FrameTooLarge,
    /// A frame is JSON but breaks its message's schema; `violations` says where.
    SchemaViolation,
    /// `msg.type` names no message of this protocol version.
    UnknownType,
    /// A valid message that this side may not receive here (wrong direction, a reply to no
    /// request, or a reply of the wrong type).
    UnexpectedMessage,
    /// The sides share no protocol version.
    VersionMismatch,
    /// The request came before the handshake finished, or after shutdown began.
    NotReady,
    /// No job with that id exists on this session.
    UnknownJob,
    /// No lease with that id belongs to this driver.
    UnknownLease,
    /// No action with that name was declared.
    UnknownAction,
    /// The cost gate refused the rental; `details` carries the estimate and the reason.
    CostGateRejected,
    /// The budget cannot cover the request.
    BudgetExhausted,
    /// The GPU provider failed or has nothing that matches.
    ProviderUnavailable,
    /// The request did not complete in time.
    Timeout,
    /// The peer is not allowed to do this.
    Forbidden,
    /// Anything else; the details stay in the sender's own log.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidJson => "invalid_json",
            Self::FrameTooLarge => "frame_too_large",
            Self::SchemaViolation => "schema_violation",
            Self::UnknownType => "unknown_type",
            Self::UnexpectedMessage => "unexpected_message",
            Self::VersionMismatch => "version_mismatch",
            Self::NotReady => "not_ready",
            Self::UnknownJob => "unknown_job",
            Self::UnknownLease => "unknown_lease",
            Self::UnknownAction => "unknown_action",
            Self::CostGateRejected => "cost_gate_rejected",
            Self::BudgetExhausted => "budget_exhausted",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::Timeout => "timeout",
            Self::Forbidden => "forbidden",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One place where a document breaks its schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Violation {
    /// JSON pointer (RFC 6901) to the offending value in the document, `""` for the root.
    #[schemars(length(max = limits::POINTER_LEN))]
    pub instance_path: String,
    /// JSON pointer to the schema keyword that failed.
    #[schemars(length(max = limits::POINTER_LEN))]
    pub schema_path: String,
    /// What is wrong, without the offending value.
    #[schemars(length(max = limits::MESSAGE_LEN))]
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// Asks the driver to run a job. Answered with `ack` once the driver has taken it; progress,
/// logs, states and the result follow as events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunJob {
    /// The job's id; all events about the job carry it.
    pub job_id: JobId,
    /// Which of the driver's declared actions to run.
    pub action: ActionName,
    /// The action's parameters, already validated against the schema the driver declared.
    #[schemars(extend("maxProperties" = limits::PARAMS_PROPERTIES))]
    pub params: Map<String, Value>,
    /// The GPUs the job may rent through `acquire_gpu`; absent for a job that needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRequest>,
    /// When the job must have ended, as Unix time in milliseconds. The supervisor cancels the
    /// job at this instant and kills the driver if it does not comply.
    #[schemars(range(min = 1, max = crate::ids::MAX_SAFE_INTEGER))]
    pub deadline_unix_ms: u64,
}

/// Asks the driver to stop a job. Answered at once with `ack`; the outcome arrives as the
/// job's terminal `job_state` (which may be `succeeded` if the job won the race).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelJob {
    /// The job to stop.
    pub job_id: JobId,
    /// Why, for the driver's log.
    #[schemars(length(max = limits::MESSAGE_LEN))]
    pub reason: String,
}

/// Where a job is in its life. `succeeded`, `failed` and `cancelled` are terminal: once sent,
/// no other state follows for that job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// Accepted, waiting for a slot.
    Queued,
    /// Preparing: acquiring GPUs, pulling images.
    Starting,
    /// Doing the work.
    Running,
    /// Finished, and the work succeeded.
    Succeeded,
    /// Finished, and the work failed.
    Failed,
    /// Stopped by `cancel_job` or the deadline.
    Cancelled,
}

impl JobPhase {
    /// True for the states after which nothing more happens to the job.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A job changed state. States for one job arrive in order and are never dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobState {
    /// The job.
    pub job_id: JobId,
    /// Its new state.
    pub state: JobPhase,
    /// Why, when that is worth saying (a failure's cause, for example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MESSAGE_LEN))]
    pub message: Option<String>,
}

/// How far a job has come. Progress may be coalesced: only the latest value matters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobProgress {
    /// The job.
    pub job_id: JobId,
    /// Work done so far, in `unit`s.
    #[schemars(range(min = 0.0, max = 1e15))]
    pub current: f64,
    /// Work in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1e15), extend("exclusiveMinimum" = 0))]
    pub total: Option<f64>,
    /// What is counted (`steps`, `bytes`, `epochs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub unit: Option<String>,
    /// A short status line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub message: Option<String>,
}

/// Which output stream log lines came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output of the job's workload.
    Stdout,
    /// Standard error of the job's workload.
    Stderr,
}

/// A batch of a job's log lines. A driver may drop lines under pressure but must count them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobLog {
    /// The job.
    pub job_id: JobId,
    /// Which stream the lines came from.
    pub stream: LogStream,
    /// The lines, without their line terminators.
    #[schemars(length(min = 1, max = limits::LOG_LINES_PER_FRAME), inner(length(max = limits::LOG_LINE_LEN)))]
    pub lines: Vec<String>,
    /// Lines dropped since the previous `job_log` for this job and stream.
    #[serde(default)]
    #[schemars(range(max = crate::ids::MAX_SAFE_INTEGER))]
    pub dropped: u64,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The work succeeded.
    Succeeded,
    /// The work failed.
    Failed,
    /// The job was cancelled before it finished.
    Cancelled,
}

/// A job's result, sent once, before its terminal `job_state`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    /// The job.
    pub job_id: JobId,
    /// How it ended.
    pub outcome: Outcome,
    /// The action's output, any JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// A human-readable summary, typically the cause of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MESSAGE_LEN))]
    pub message: Option<String>,
}

/// Severity of a driver's own log record.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the driver handled.
    Warn,
    /// Something failed.
    Error,
}

/// A record of the driver's own log (not a job's output), kept in the supervisor's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// Severity.
    pub level: Level,
    /// The message.
    #[schemars(length(max = 4096))]
    pub message: String,
    /// Structured context.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schemars(extend("maxProperties" = limits::FIELDS))]
    pub fields: Map<String, Value>,
}

// ---------------------------------------------------------------------------------------------
// GPUs and leases

/// What kind of GPUs a job or lease needs. Every field narrows the offers considered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuRequest {
    /// GPUs on one machine.
    #[schemars(range(min = 1, max = limits::GPU_COUNT))]
    pub count: u8,
    /// Acceptable models as the provider names them (`"RTX 4090"`, `"H100 SXM"`). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::GPU_MODELS), extend("uniqueItems" = true))]
    #[schemars(inner(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    ))]
    pub models: Vec<String>,
    /// Least memory per GPU, in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub min_gpu_ram_gib: Option<u32>,
    /// Highest acceptable price for the whole machine, in USD per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = limits::MAX_USD), extend("exclusiveMinimum" = 0))]
    pub max_usd_per_hour: Option<f64>,
    /// Least host reliability, from 0 to 1, as the provider scores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_reliability: Option<f64>,
    /// On-demand (the default) or interruptible pricing.
    #[serde(default)]
    pub pricing: Pricing,
}

/// How a rental is priced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pricing {
    /// A fixed hourly price; the instance runs until destroyed.
    #[default]
    OnDemand,
    /// A bid at the current minimum price; the instance may be stopped when outbid.
    Interruptible,
}

/// Asks the supervisor to rent GPUs for a job. The supervisor estimates the cost, refuses with
/// `cost_gate_rejected` unless it is at least 95% confident that the cost stays within the
/// job's remaining budget, reserves the budget, rents, and answers with a `lease`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireGpu {
    /// The job the lease is for; it must be running on this driver.
    pub job_id: JobId,
    /// The GPUs wanted.
    pub gpu: GpuRequest,
    /// Container image for the instance.
    #[schemars(length(min = 1, max = limits::IMAGE_LEN), regex(pattern = r"^[^\s]+$"))]
    pub image: String,
    /// Shell script the instance runs at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::ONSTART_LEN))]
    pub onstart: Option<String>,
    /// Environment of the instance's container. Never put secrets here: the provider shows
    /// them to anyone with read access to the instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = limits::ENV_VARS,
        "propertyNames" = {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"},
        "additionalProperties" = {"type": "string", "maxLength": limits::ENV_VALUE_LEN},
    ))]
    pub env: BTreeMap<String, String>,
    /// Disk for the instance, in GiB.
    #[schemars(range(min = 8, max = 16384))]
    pub disk_gib: u32,
    /// Hard cap on the lease's life, in seconds. The supervisor destroys the instance at the
    /// deadline whatever the driver does; the cost estimate assumes the whole cap is used.
    #[schemars(range(min = 60, max = limits::MAX_RUNTIME_S))]
    pub max_runtime_s: u32,
    /// Data the instance will move over the network (download plus upload), in GiB; it is
    /// billed per GiB and enters the estimate.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1_000_000.0))]
    pub bandwidth_gib: f64,
}

/// Asks for the current state of one of this driver's leases; answered with `lease`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseStatus {
    /// The lease.
    pub lease_id: LeaseId,
}

/// Asks for the latest log lines of a lease's instance; answered with `lease_log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseLogs {
    /// The lease.
    pub lease_id: LeaseId,
    /// How many of the last lines to return.
    #[schemars(range(min = 1, max = limits::LOG_LINES_PER_FRAME))]
    pub tail: u32,
}

/// Gives a lease back. The supervisor destroys the instance, confirms it is gone, settles the
/// cost and answers with the final `lease`. Releasing twice is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseGpu {
    /// The lease.
    pub lease_id: LeaseId,
}

/// Where a lease is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeasePhase {
    /// Budget reserved, instance being created.
    Provisioning,
    /// The instance is loading its image.
    Loading,
    /// The instance is running.
    Running,
    /// The instance's workload ended on its own; it still bills until released.
    Exited,
    /// The instance failed to start or was lost; it still bills until released.
    Failed,
    /// Destroyed and confirmed gone; the cost is settled.
    Released,
}

/// The state of a lease: the reply to `acquire_gpu`, `lease_status` and `release_gpu`.
/// It never carries provider credentials or connection details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The lease.
    pub lease_id: LeaseId,
    /// The job it belongs to.
    pub job_id: JobId,
    /// Its state.
    pub state: LeasePhase,
    /// When the supervisor will destroy the instance regardless, as Unix time in milliseconds.
    #[schemars(range(min = 1, max = crate::ids::MAX_SAFE_INTEGER))]
    pub deadline_unix_ms: u64,
    /// The GPU model rented, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub gpu_model: Option<String>,
    /// The number of GPUs rented, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = limits::GPU_COUNT))]
    pub gpu_count: Option<u8>,
    /// The price of the rental, in USD per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = limits::MAX_USD))]
    pub usd_per_hour: Option<f64>,
    /// The estimate the gate approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<CostEstimate>,
    /// Cost so far, or the settled cost once `released`, in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = limits::MAX_USD))]
    pub cost_usd: Option<f64>,
    /// The provider's status line, with secrets removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MESSAGE_LEN))]
    pub status_message: Option<String>,
}

/// A cost estimate for a rental, in USD, as the gate judged it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CostEstimate {
    /// The cost if everything takes its expected time.
    #[schemars(range(min = 0.0, max = limits::MAX_USD))]
    pub expected_usd: f64,
    /// The cost that is exceeded with probability 5%.
    #[schemars(range(min = 0.0, max = limits::MAX_USD))]
    pub p95_usd: f64,
    /// The cost if every bound is reached (the whole runtime cap, the slowest teardown).
    #[schemars(range(min = 0.0, max = limits::MAX_USD))]
    pub worst_usd: f64,
    /// The probability that the real cost stays within the remaining budget.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub confidence: f64,
}

/// The reply to `lease_logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseLog {
    /// The lease.
    pub lease_id: LeaseId,
    /// The last lines of the instance's log, oldest first, secrets redacted.
    #[schemars(length(max = limits::LOG_LINES_PER_FRAME), inner(length(max = limits::LOG_LINE_LEN)))]
    pub lines: Vec<String>,
    /// True when the log had more lines than were returned.
    pub truncated: bool,
}
