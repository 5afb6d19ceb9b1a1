//! How each driver is doing: [`DriverStatus`], and [`DeathReport`] for every process exit.

use std::collections::BTreeMap;
use std::time::SystemTime;

use drover_proto::api::{DriverHealth, DriverView, GpuHeld};
use drover_proto::{ActionName, DriverName, ParamsSchema};
use drover_sandbox::Cause;

/// A snapshot of one configured driver.
#[derive(Clone, Debug, PartialEq)]
pub struct DriverStatus {
    /// The driver's name.
    pub name: DriverName,
    /// `starting` (no session finished its handshake yet), `ready` (every pooled process is
    /// up), `degraded` (some are restarting) or `failed` (crash loop: no longer restarted).
    pub health: DriverHealth,
    /// The version the latest `hello` announced.
    pub version: Option<String>,
    /// Processes that finished their handshake and are alive.
    pub ready_sessions: u16,
    /// The actions the latest `hello` declared, each with its params schema.
    pub actions: BTreeMap<ActionName, serde_json::Value>,
    /// How many times a process of this driver was restarted.
    pub restarts: u32,
    /// Frames rejected (and answered with `error`) across all sessions.
    pub protocol_violations: u64,
    /// The latest death, if any.
    pub last_death: Option<DeathReport>,
    /// The local GPUs the driver holds (from its [`crate::DriverSpec::gpus`]).
    pub gpus: Vec<GpuHeld>,
}

impl DriverStatus {
    /// The driver as `GET /v1/drivers` shows it.
    pub fn to_view(&self) -> DriverView {
        DriverView {
            name: self.name.clone(),
            version: self.version.clone(),
            health: self.health,
            ready_sessions: self.ready_sessions,
            actions: self
                .actions
                .iter()
                .map(|(name, schema)| (name.clone(), ParamsSchema(schema.clone())))
                .collect(),
            gpus: self.gpus.clone(),
        }
    }
}

/// Why a driver process ended, and what it said last.
#[derive(Clone, Debug, PartialEq)]
pub struct DeathReport {
    /// The sandbox's typed cause: exit status, signal, seccomp violation, OOM, or a kill by
    /// the supervisor (with the supervisor's reason, e.g. `hung: 3 heartbeats missed`).
    /// `None` when the process never started (see `session_end`).
    pub cause: Option<Cause>,
    /// What the supervisor saw go wrong in the session before the process ended, if anything
    /// (no `hello` in time, version mismatch, invalid `hello`, broken stream, too many invalid
    /// frames, end of transport). For a kill by the supervisor it is the kill's reason.
    pub session_end: Option<String>,
    /// When the death was observed.
    pub at: SystemTime,
    /// The last lines the process wrote to stdout (bounded, oldest first).
    pub stdout_tail: Vec<String>,
    /// The last lines the process wrote to stderr (bounded, oldest first).
    pub stderr_tail: Vec<String>,
}

impl DeathReport {
    /// One line: the session problem, if any, then the process's cause.
    pub fn summary(&self) -> String {
        match (&self.session_end, &self.cause) {
            (Some(end), Some(Cause::KilledBySupervisor { reason })) if end == reason => {
                format!("killed by the supervisor: {end}")
            }
            (Some(end), Some(cause)) => format!("{end}; process {cause}"),
            (Some(end), None) => end.clone(),
            (None, Some(cause)) => format!("process {cause}"),
            (None, None) => "process ended for an unknown reason".to_owned(),
        }
    }
}

impl std::fmt::Display for DeathReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}
