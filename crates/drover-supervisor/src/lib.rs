//! The drover supervisor as a library: it runs the configured drivers in the sandbox, speaks
//! DriverTransport with them, dispatches jobs, routes their GPU requests, and restarts them
//! when they die.
//!
//! ```text
//!  caller (API, CLI)                      Supervisor                         driver processes
//!  ─────────────────                      ──────────                         ────────────────
//!  dispatch(Dispatch) ── params checked ──> least busy ready session ── run_job ──> fd 3
//!       <── JobRun.events (State, Progress,      │  heartbeats, deadlines     <── job_state,
//!           Log, Result, DriverDied)             │  lease requests ──> GpuBroker   job_log, ...
//!  cancel(job) ──────────────────────────> cancel_job (ack at once; outcome as a state)
//!  drivers() <── health, actions, restarts, last death (typed cause, stdout/stderr tails)
//!  shutdown(grace) ──> shutdown{grace_ms}, grace, close, SIGTERM, SIGKILL
//! ```
//!
//! - [`spec`]: what it runs ([`DriverSpec`]) and every default ([`Options`]).
//! - [`supervisor`]: the handle, dispatch, cancel, shutdown, restarts with backoff and the
//!   crash-loop limit.
//! - [`session`]: one process's life: spawn, handshake, heartbeats, jobs, leases, the stop
//!   ladder.
//! - [`job`]: the event stream of one job and its bounds.
//! - `registry` (private): what the handle, its keepers and its sessions share (the drivers,
//!   their state, the handles of ready sessions and the commands they take).
//! - [`broker`]: the [`GpuBroker`] seam (implemented over the provisioner by
//!   `drover-service`) and the check of a lease request against its job's ([`broker::authorize`]).
//! - [`status`]: [`DriverStatus`] and [`DeathReport`].
//! - [`output`]: stdout and stderr capture.
//! - `metrics` (private): drivers, restarts, exits and sandbox deaths for `/metrics`
//!   ([`Supervisor::register_metrics`]).
//!
//! # Defaults
//!
//! Per driver, from `drover.toml` ([`drover_proto::config::DriverConfig`]): pool 1, hello
//! within 10 s, a ping every 5 s and 3 misses, 10 s shutdown grace, 5 restarts. Supervisor-wide
//! settings and their defaults are in [`spec`]. Fixed bounds:
//!
//! | Bound | Value |
//! |---|---|
//! | events a job's receiver holds | [`job::JOB_CHANNEL_CAPACITY`] (64) |
//! | broker calls in flight per session | [`session::MAX_BROKER_REQUESTS`] (16) |
//! | leases held at once per driver | [`session::MAX_LEASES_PER_DRIVER`] (4096) |
//! | unanswered requests remembered per session | [`session::MAX_PENDING`] (1024) |
//! | driver `log`/`error` events logged per second | [`session::LOGGED_EVENTS_PER_SECOND`] (50) |
//! | stdout/stderr lines logged per second and stream | [`output::LOGGED_LINES_PER_SECOND`] (50) |
//! | deadline and cancel checks | every 100 ms |
//! | frames still read after a driver died | for 500 ms |
//!
//! Architecture invariants: every driver process is spawned through `drover-sandbox` with the
//! Phase A proof; every frame in either direction passes `drover-transport`'s validation;
//! nothing a driver sends can grow the supervisor's memory without bound (every queue has a
//! limit, and what is over it is dropped and counted, except job states and results, which
//! are bounded by the state order); every death is recorded with the sandbox's typed cause;
//! a job always ends with exactly one terminal state.
//!
//! ```no_run
//! # async fn demo(dropped: drover_sandbox::Dropped, policy: drover_sandbox::Policy,
//! #               config: drover_proto::config::DriverConfig,
//! #               broker: std::sync::Arc<dyn drover_supervisor::GpuBroker>)
//! #               -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use drover_proto::api::JobEventKind;
//! use drover_supervisor::{Dispatch, DriverSpec, JobEvent, Options, Supervisor};
//!
//! let supervisor =
//!     Supervisor::start(vec![DriverSpec::new(config, policy)], broker, Options::new(dropped))
//!         .await?;
//! let mut run = supervisor
//!     .dispatch(Dispatch {
//!         job_id: "job-1".parse()?,
//!         driver: "echo".parse()?,
//!         action: "echo".parse()?,
//!         params: serde_json::Map::new(),
//!         gpu: None,
//!         max_runtime: Duration::from_secs(60),
//!         budget_usd: 0.0,
//!     })
//!     .await?;
//! while let Some(event) = run.events.recv().await {
//!     if let JobEvent::Job(JobEventKind::JobState(state)) = event {
//!         println!("{:?}", state.state);
//!     }
//! }
//! supervisor.shutdown(Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod broker;
mod deaths;
pub mod job;
mod metered;
mod metrics;
pub mod output;
mod process;
mod registry;
pub mod session;
pub mod spec;
pub mod status;
pub mod supervisor;

pub use broker::{BrokerFuture, GpuBroker, LeaseOwner};
pub use job::{CancelError, Dispatch, DispatchError, JobEvent, JobRun};
pub use process::SpawnFailure;
pub use spec::{DriverSpec, Options};
pub use status::{DeathReport, DriverStatus};
pub use supervisor::{StartError, Supervisor};
