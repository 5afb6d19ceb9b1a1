//! What the supervisor is given: one [`DriverSpec`] per configured driver and the
//! supervisor-wide [`Options`].
//!
//! Per-driver settings (pool size, hello deadline, heartbeat interval and miss limit, shutdown
//! grace, restart limit) come from [`DriverConfig`] and keep the defaults documented there
//! (pool 1, hello 10 s, heartbeat 5 s, 3 misses, grace 10 s, 5 restarts). The rest are
//! [`Options`]:
//!
//! | Option | Default |
//! |---|---|
//! | `max_frame_bytes` | 1 MiB (a driver may ask for less in `hello`, never more) |
//! | `restart_backoff` | 500 ms, doubled after each consecutive failure |
//! | `restart_backoff_max` | 30 s |
//! | `crash_loop_window` | 60 s: `max_restarts` restarts within it mark the driver failed; a session that lived longer resets the count |
//! | `cancel_grace` | 10 s: how long a job may take to end after `cancel_job` (or its deadline) before its driver is killed |
//! | `stop_step` | 2 s: each later rung of the shutdown ladder (close, then SIGTERM, then SIGKILL) waits this long |
//! | `ready_timeout` | 30 s: how long `dispatch` waits for a driver session to finish its handshake |
//! | `max_jobs_per_session` | 64 |
//! | `read_bytes_per_second` | 64 MiB/s per session, bursts of a quarter of that (at least two frames); a faster driver is not read until the budget refills, so it blocks in `write` |
//! | `max_protocol_violations` | 64 rejected frames per session, after which the driver is killed |
//! | `job_log_bytes` | 1 MiB of undelivered log lines per job; beyond it lines are dropped and counted |
//! | `output_tail_lines` | 40 lines of stdout and of stderr kept for the death report |
//! | `output_line_bytes` | 4096 bytes per captured stdout/stderr line (longer lines are cut) |
//! | `scratch_dir` | the system temporary directory: where per-process work directories are made |
//! | `cgroups` | none: the parent cgroups (prepared as root before Phase A) each driver process gets its memory, pids and cpu cgroups under; without them those limits are degradations |

use std::path::PathBuf;
use std::time::Duration;

use drover_proto::api::GpuHeld;
use drover_proto::config::DriverConfig;
use drover_sandbox::{Dropped, Policy};

/// One driver to run: its configuration and its sandbox.
#[derive(Clone, Debug)]
pub struct DriverSpec {
    /// The driver's entry from `drover.toml`: name, command, pool size, timeouts, restarts.
    pub config: DriverConfig,
    /// The sandbox every process of this driver runs in (the caller turns the configured
    /// profile into it). The transport is added at fd 3; stdin is `/dev/null`; stdout and
    /// stderr are captured.
    pub policy: Policy,
    /// The work directory of every process of this driver (must exist and be writable by the
    /// dropped uid). `None`: a fresh private directory under [`Options::scratch_dir`] per
    /// process, removed when the process has died.
    pub work_dir: Option<PathBuf>,
    /// The local GPUs the caller granted in `policy` (devices, `/sys` entries and the
    /// `CUDA_VISIBLE_DEVICES`/`NVIDIA_VISIBLE_DEVICES` environment), shown by
    /// [`crate::DriverStatus`] and `GET /v1/drivers`. Default none.
    pub gpus: Vec<GpuHeld>,
}

impl DriverSpec {
    /// A driver with the given configuration and policy and a private work directory per
    /// process.
    pub fn new(config: DriverConfig, policy: Policy) -> Self {
        Self { config, policy, work_dir: None, gpus: Vec::new() }
    }
}

/// Supervisor-wide settings. See the [module docs](self) for every default.
#[derive(Clone, Debug)]
pub struct Options {
    /// Proof that Phase A ran: drivers are spawned only from a process without privilege.
    pub dropped: Dropped,
    /// Largest frame in either direction, in bytes.
    pub max_frame_bytes: u32,
    /// First delay before restarting a dead driver process.
    pub restart_backoff: Duration,
    /// Longest delay between restarts.
    pub restart_backoff_max: Duration,
    /// Window in which `max_restarts` restarts mark a driver failed.
    pub crash_loop_window: Duration,
    /// How long a job may take to reach a terminal state after `cancel_job` (or its deadline)
    /// before the driver is killed.
    pub cancel_grace: Duration,
    /// Wait after each later rung of the shutdown ladder: after closing the transport, and
    /// after SIGTERM.
    pub stop_step: Duration,
    /// How long `dispatch` waits for a session that has finished its handshake.
    pub ready_timeout: Duration,
    /// Jobs one driver process may run at once.
    pub max_jobs_per_session: usize,
    /// Bytes per second one session reads from its driver; a driver that sends faster is
    /// slowed to this rate.
    pub read_bytes_per_second: u64,
    /// Rejected frames after which a session counts as broken and its driver is killed.
    pub max_protocol_violations: u32,
    /// Bytes of undelivered log lines held per job before lines are dropped (and counted).
    pub job_log_bytes: usize,
    /// Lines of stdout and of stderr kept for the death report.
    pub output_tail_lines: usize,
    /// Longest captured stdout/stderr line, in bytes; the rest of a longer line is dropped.
    pub output_line_bytes: usize,
    /// Where private work directories are created.
    pub scratch_dir: PathBuf,
    /// Where each driver process's cgroups are made.
    pub cgroups: Option<drover_sandbox::cgroup::MemoryParent>,
}

impl Options {
    /// The defaults, with the Phase A proof.
    pub fn new(dropped: Dropped) -> Self {
        Self {
            dropped,
            max_frame_bytes: drover_transport::codec::DEFAULT_MAX_FRAME_BYTES,
            restart_backoff: Duration::from_millis(500),
            restart_backoff_max: Duration::from_secs(30),
            crash_loop_window: Duration::from_secs(60),
            cancel_grace: Duration::from_secs(10),
            stop_step: Duration::from_secs(2),
            ready_timeout: Duration::from_secs(30),
            max_jobs_per_session: 64,
            read_bytes_per_second: 64 << 20,
            max_protocol_violations: 64,
            job_log_bytes: 1 << 20,
            output_tail_lines: 40,
            output_line_bytes: 4096,
            scratch_dir: std::env::temp_dir(),
            cgroups: None,
        }
    }
}
