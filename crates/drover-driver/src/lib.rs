//! The SDK for drover drivers written in Rust.
//!
//! A driver author implements [`Driver`]: a name and version, the actions with the JSON
//! Schema of their params (generated from a `schemars` type), and an async
//! [`Driver::run`]. The SDK does the protocol:
//!
//! ```text
//! driver (this SDK)                              supervisor
//!   hello {versions, driver, actions, schema_sha256}  ──>
//!                                               <──  welcome | error version_mismatch
//!                                               <──  ping            (answered at once: pong)
//!                                               <──  run_job         (ack, then job_state running)
//!   job_progress, job_log (batched)             ──>
//!   acquire_gpu / lease_status / lease_logs / release_gpu  <──>  lease / lease_log | error
//!                                               <──  cancel_job      (ack at once; the job's token fires)
//!   job_result, then job_state succeeded|failed|cancelled ──>
//!                                               <──  shutdown {grace_ms}  (ack; drain; exit)
//! ```
//!
//! - **Transport**: fd 3 (`DROVER_TRANSPORT_FD`), or stdin/stdout when
//!   `DROVER_TRANSPORT=stdio` ([`transport`]). Every frame in both directions passes
//!   `drover-transport`'s schema validation; malformed, oversize and unknown frames from the
//!   supervisor are answered with an `error` and the session goes on.
//! - **Jobs** run as tokio tasks, each with a [`JobContext`]: a cancellation token
//!   ([`JobContext::cancelled`]), progress and log helpers, and the GPU lease requests. What
//!   [`Driver::run`] returns becomes the `job_result` and the terminal `job_state`; a panic is
//!   a failure. States for a job are sent in order and never dropped.
//! - **Shutdown**: after `shutdown {grace_ms}` no new job is accepted; running jobs may finish.
//!   At half the grace period their tokens fire; at the end of it they are reported
//!   `cancelled` and the driver exits. On end of stream of the transport every job is
//!   cancelled and the driver exits at once.
//!
//! # Defaults
//!
//! | Setting | Default | Where |
//! |---|---|---|
//! | wait for `welcome` after `hello` | 30 s | [`HELLO_REPLY_TIMEOUT`] |
//! | log and progress flush | every 100 ms, and before each `job_result` | [`FLUSH_INTERVAL`] |
//! | log lines buffered per job | 10 000 (more are dropped and counted) | [`context::MAX_PENDING_LINES`] |
//! | longest log line | 16 KiB characters (longer lines are split) | [`drover_proto::limits::LOG_LINE_LEN`] |
//! | runtime of [`main`] / [`run`] | tokio current-thread: use `spawn_blocking` for CPU-bound work | |
//! | exit status of [`main`] | 0 after `shutdown` or end of stream; 1 on any error | |
//!
//! # Example
//!
//! A complete driver with one action. `main` is all a driver binary needs; the test below
//! plays the supervisor over an in-memory stream instead.
//!
//! ```
//! use drover_driver::{Action, Driver, Job, JobContext, JobError, JobOutcome};
//! use schemars::JsonSchema;
//! use serde::Deserialize;
//!
//! struct Greeter;
//!
//! /// Params of `greet`.
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Greet {
//!     /// Whom to greet.
//!     #[schemars(length(min = 1, max = 64))]
//!     name: String,
//! }
//!
//! impl Driver for Greeter {
//!     const NAME: &'static str = "greeter";
//!     const VERSION: &'static str = "1.0.0";
//!
//!     fn actions(&self) -> Vec<Action> {
//!         vec![Action::of::<Greet>("greet")]
//!     }
//!
//!     async fn run(&self, ctx: JobContext, job: Job) -> JobOutcome {
//!         let params: Greet = job.params()?;
//!         ctx.log(&format!("greeting {}", params.name));
//!         ctx.progress(1.0, Some(1.0), None);
//!         if ctx.is_cancelled() {
//!             return Err(JobError::Cancelled);
//!         }
//!         Ok(Some(serde_json::json!({ "greeting": format!("hello, {}", params.name) })))
//!     }
//! }
//!
//! // In a driver binary: `fn main() -> std::process::ExitCode { drover_driver::main(Greeter) }`
//!
//! # tokio_test::block_on(async {
//! use drover_proto::*;
//! use drover_transport::{Connection, Inbound};
//!
//! let (ours, theirs) = tokio::io::duplex(64 * 1024);
//! let driver = tokio::spawn(drover_driver::serve(Greeter, theirs));
//! let mut supervisor = Connection::new(ours, Party::Supervisor);
//!
//! let Some(Inbound::Request { id, msg: Message::Hello(hello) }) = supervisor.recv().await?
//! else { panic!("expected hello") };
//! assert!(hello.actions.contains_key(&"greet".parse()?));
//! supervisor.reply(id, Welcome {
//!     protocol_version: 1,
//!     session_id: "s-1".parse()?,
//!     heartbeat_ms: 5000,
//!     max_frame_bytes: 1 << 20,
//! }).await?;
//!
//! supervisor.request(RunJob {
//!     job_id: "job-1".parse()?,
//!     action: "greet".parse()?,
//!     params: serde_json::json!({"name": "ada"}).as_object().cloned().unwrap_or_default(),
//!     gpu: None,
//!     deadline_unix_ms: 4_000_000_000_000,
//! }).await?;
//! let mut states = Vec::new();
//! let mut output = None;
//! while states.last().is_none_or(|s: &JobPhase| !s.is_terminal()) {
//!     match supervisor.recv().await?.expect("the driver is still there") {
//!         Inbound::Event(Message::JobState(s)) => states.push(s.state),
//!         Inbound::Event(Message::JobResult(r)) => output = r.output,
//!         _ => {}
//!     }
//! }
//! assert_eq!(states, [JobPhase::Running, JobPhase::Succeeded]);
//! assert_eq!(output, Some(serde_json::json!({"greeting": "hello, ada"})));
//!
//! supervisor.close().await?;
//! assert_eq!(driver.await??, drover_driver::Ended::TransportClosed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

#![forbid(unsafe_code)]

pub mod context;
mod session;
pub mod transport;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use drover_proto::{ActionName, ErrorCode, GpuRequest, JobId, ParamsSchema};
use drover_transport::ConnectionError;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};

pub use context::{JobContext, RequestError};
pub use transport::{Transport, TransportError};

/// How long the driver waits for `welcome` after sending `hello`.
pub const HELLO_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often buffered log lines and progress are sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// What [`Driver::run`] returns: the job's output (any JSON value, `None` for none), or why
/// it did not succeed.
pub type JobOutcome = Result<Option<Value>, JobError>;

/// A driver: its identity, its actions, and the code that runs a job.
pub trait Driver: Send + Sync + 'static {
    /// The driver's name (`^[a-z][a-z0-9-]*$`, at most 64 characters).
    const NAME: &'static str;
    /// The driver's version (`^[0-9A-Za-z.+_-]+$`, at most 64 characters).
    const VERSION: &'static str;

    /// The actions this driver offers, declared in `hello`. At least one.
    fn actions(&self) -> Vec<Action>;

    /// Runs one job. `job.params` has already been validated by the supervisor against the
    /// action's schema. Return `Err(JobError::Cancelled)` when the job stopped because
    /// [`JobContext::cancelled`] fired; returning `Ok` after a cancel reports that the job won
    /// the race and succeeded.
    fn run(&self, ctx: JobContext, job: Job) -> impl Future<Output = JobOutcome> + Send;
}

/// One action a driver offers: its name and the JSON Schema of its params.
#[derive(Clone, Debug)]
pub struct Action {
    name: String,
    schema: Value,
}

impl Action {
    /// An action whose params are the type `P`; the schema is generated from `P` the way
    /// drover generates its own (draft 2020-12, deserialize contract).
    pub fn of<P: schemars::JsonSchema>(name: &str) -> Self {
        Self { name: name.to_owned(), schema: drover_proto::schema::schema_for::<P>() }
    }

    /// An action with a hand-written params schema (a JSON object or boolean).
    pub fn with_schema(name: &str, schema: Value) -> Self {
        Self { name: name.to_owned(), schema }
    }

    /// The action's name as declared.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The params schema as declared.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    fn into_parts(self) -> Result<(ActionName, ParamsSchema), DriverError> {
        let name: ActionName = self.name.parse().map_err(|e| DriverError::Declaration {
            what: format!("action name {:?}: {e}", self.name),
        })?;
        if !(self.schema.is_object() || self.schema.is_boolean()) {
            return Err(DriverError::Declaration {
                what: format!("action {:?}: the params schema is not an object", self.name),
            });
        }
        drover_transport::SchemaChecker::new(&self.schema).map_err(|e| {
            DriverError::Declaration { what: format!("action {:?}: {e}", self.name) }
        })?;
        Ok((name, ParamsSchema(self.schema)))
    }
}

/// A job to run, as `run_job` asked.
#[derive(Clone, Debug)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The action.
    pub action: ActionName,
    /// The params, valid against the action's schema.
    pub params: Map<String, Value>,
    /// The GPUs the job may rent, if any.
    pub gpu: Option<GpuRequest>,
    /// When the job must have ended, as Unix time in milliseconds.
    pub deadline_unix_ms: u64,
}

impl Job {
    /// The params as the type `P` (usually the type the action's schema came from). A
    /// mismatch fails the job with the deserializer's reason.
    pub fn params<P: DeserializeOwned>(&self) -> Result<P, JobError> {
        serde_json::from_value(Value::Object(self.params.clone()))
            .map_err(|e| JobError::Failed(format!("params do not match the action: {e}")))
    }
}

/// Why a job did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The work failed; the message goes into `job_result` and the `failed` state (cut to
    /// 1024 characters). Never put secrets in it.
    #[error("{0}")]
    Failed(String),
    /// The job stopped because it was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl JobError {
    /// A failure with `message`.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        Self::Failed(message.to_string())
    }
}

impl From<RequestError> for JobError {
    fn from(error: RequestError) -> Self {
        Self::Failed(error.to_string())
    }
}

/// How a session ended normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The supervisor asked for `shutdown` and every job was brought to a terminal state.
    Shutdown,
    /// The transport reached end of stream; every job was cancelled.
    TransportClosed,
}

/// Why a session could not run or ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The driver's declarations (name, version, actions) are not valid.
    #[error("invalid driver declaration: {what}")]
    Declaration {
        /// What is wrong.
        what: String,
    },
    /// The transport could not be opened.
    #[error(transparent)]
    Open(#[from] TransportError),
    /// The supervisor speaks none of this driver's protocol versions.
    #[error("protocol version mismatch: this driver speaks {offered}, the supervisor {supported}")]
    VersionMismatch {
        /// What this driver offered.
        offered: String,
        /// What the supervisor said it supports.
        supported: String,
    },
    /// The supervisor refused `hello` for another reason.
    #[error("the supervisor refused hello: {message} ({code})")]
    HelloRefused {
        /// The error code.
        code: ErrorCode,
        /// The supervisor's message.
        message: String,
    },
    /// No `welcome` came in time.
    #[error("no welcome within {after:?} of hello")]
    NoWelcome {
        /// How long the driver waited.
        after: Duration,
    },
    /// The transport broke (I/O error, a stream that is not framed, end of stream inside a
    /// frame).
    #[error("transport failed: {0}")]
    Transport(#[source] ConnectionError),
    /// The runtime could not be built.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// Runs the session over `io` until `shutdown` or end of stream: handshake, then jobs.
pub async fn serve<D, T>(driver: D, io: T) -> Result<Ended, DriverError>
where
    D: Driver,
    T: AsyncRead + AsyncWrite + Unpin,
{
    session::serve(driver, io).await
}

/// Opens the transport from the environment (see [`transport`]) and serves on it, on a new
/// current-thread tokio runtime.
pub fn run<D: Driver>(driver: D) -> Result<Ended, DriverError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DriverError::Runtime)?;
    runtime.block_on(async {
        match Transport::from_env()? {
            Transport::Socket(socket) => serve(driver, socket).await,
            Transport::Stdio(stdio) => serve(driver, stdio).await,
        }
    })
}

/// The whole `main` of a driver binary: [`run`], with errors on stderr and exit status 1.
pub fn main<D: Driver>(driver: D) -> ExitCode {
    match run(driver) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{}: {error}", D::NAME);
            }
            ExitCode::from(1)
        }
    }
}
