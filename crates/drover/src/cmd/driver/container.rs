//! The bundled `container` driver (`drover driver container`): runs a container image with a
//! command on a rented GPU instance, through the supervisor's gated provisioner only. It is
//! sandboxed like any driver; it has no network and no credentials of its own.
//!
//! Action `run`, params `{image, command, env?, disk?, gpu?}`:
//!
//! 1. `acquire_gpu` for `image`, with `command` as the instance's start script (each argument
//!    shell-quoted, followed by `echo drover-exit-status=$?`), `env`, `disk` GiB (default 16)
//!    and the GPU request (`gpu` in the params, else the job's), for the job's remaining
//!    time (at least 60 s). The supervisor estimates, gates (nothing is rented below 95%
//!    confidence) and rents. A refusal that says "later" is asked again after a pause that
//!    doubles from [`RETRY_FIRST`] up to [`RETRY_MAX`], logged each time, unless the job is
//!    cancelled or its deadline comes first: `not_ready` (the session's lease requests are
//!    all in flight: a queue, which a busy supervisor works through) as often as the deadline
//!    allows; `provider_unavailable` (no offer could be started, e.g. another rental took the
//!    last ones) at most [`RETRIES`] times (about 40 s in all). Any other refusal (the cost
//!    gate, the budget) fails the job at once.
//! 2. Every second (default): `lease_status` and `lease_logs` (last 100 lines); new log lines
//!    become the job's log, the lease state its progress (`provisioning` 1/4, `loading` 2/4,
//!    `running` 3/4, done 4/4).
//! 3. The workload has ended when the log shows `drover-exit-status=N` (N = 0 succeeded,
//!    anything else failed) or the simulator's deterministic `[sim] onstart finished` (the
//!    simulator runs no script: that line is its whole "run", status 0), or when the lease
//!    is `exited` (succeeded) or `failed` (failed). Cancellation and the job's deadline end it
//!    `cancelled`.
//! 4. `release_gpu`, always, whatever happened (the supervisor's lease deadline is the
//!    backstop if even that fails). The result is `{lease_id, exit_status, gpu_model,
//!    gpu_count, usd_per_hour, cost_usd, log_lines}`, the cost as settled by the release.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_driver::{Action, Driver, Job, JobContext, JobError, JobOutcome, RequestError};
use drover_proto::{AcquireGpu, ErrorCode, GpuRequest, Lease, LeasePhase};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

/// How often the lease is polled.
const POLL: Duration = Duration::from_secs(1);
/// The first pause before asking again for a GPU after a "later" refusal.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest pause between two asks.
pub const RETRY_MAX: Duration = Duration::from_secs(8);
/// How many times a `provider_unavailable` refusal is asked again (`not_ready` is asked again
/// until the job's deadline).
pub const RETRIES: u32 = 7;
/// Log lines asked for per poll.
const TAIL: u32 = 100;
/// The line a real instance's start script ends with.
pub const EXIT_MARKER: &str = "drover-exit-status=";
/// The simulator's last log line: its instances run no script.
pub const SIM_DONE: &str = "[sim] onstart finished";

/// The driver.
#[derive(Debug, Default)]
pub struct Container;

/// Params of `run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// The container image, e.g. `pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime`.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[^\s]+$"))]
    pub image: String,
    /// The command and its arguments, run when the instance starts.
    #[schemars(length(min = 1, max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// Environment of the container. Never put secrets here: the provider shows them.
    #[serde(default)]
    #[schemars(extend("maxProperties" = 64))]
    pub env: BTreeMap<String, String>,
    /// Disk for the instance, GiB. Default 16.
    #[serde(default)]
    #[schemars(range(min = 8, max = 16384))]
    pub disk: Option<u32>,
    /// The GPUs; default: the job's `gpu`.
    #[serde(default)]
    pub gpu: Option<GpuRequest>,
}

/// `'...'` shell quoting.
fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// `acquire_gpu`, asked again after a "later" refusal (see the module docs).
async fn acquire(
    ctx: &JobContext,
    request: AcquireGpu,
    deadline_unix_ms: u64,
) -> Result<Lease, RequestError> {
    let mut pause = RETRY_FIRST;
    let mut unavailable = 0;
    loop {
        let error = match ctx.acquire_gpu(request.clone()).await {
            Ok(lease) => return Ok(lease),
            Err(error) => error,
        };
        let code = match &error {
            RequestError::Refused { error, .. } => Some(error.code),
            _ => None,
        };
        let later = match code {
            Some(ErrorCode::NotReady) => true,
            Some(ErrorCode::ProviderUnavailable) => {
                unavailable += 1;
                unavailable <= RETRIES
            }
            _ => false,
        };
        let wait_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        if !later || ctx.is_cancelled() || now_ms().saturating_add(wait_ms) >= deadline_unix_ms {
            return Err(error);
        }
        ctx.log(&format!("no GPU yet ({error}); asking again in {} ms", pause.as_millis()));
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = ctx.cancelled() => return Err(error),
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// The instance's start script for `command`.
pub fn onstart(command: &[String]) -> String {
    let line: Vec<String> = command.iter().map(|a| quote(a)).collect();
    format!("{}\necho {EXIT_MARKER}$?\n", line.join(" "))
}

use drover_proto::text::now_unix_ms as now_ms;

/// How a workload ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exit(i32),
    Cancelled(&'static str),
    Lost(String),
}

impl Driver for Container {
    const NAME: &'static str = "container";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn actions(&self) -> Vec<Action> {
        vec![Action::of::<Run>("run")]
    }

    async fn run(&self, ctx: JobContext, job: Job) -> JobOutcome {
        let params: Run = job.params()?;
        let gpu = params.gpu.clone().or(job.gpu.clone()).ok_or_else(|| {
            JobError::failed("the job asks for no GPU: set `gpu` in the job or its params")
        })?;
        let remaining_s = job.deadline_unix_ms.saturating_sub(now_ms()) / 1000;
        let max_runtime_s = u32::try_from(remaining_s).unwrap_or(u32::MAX).max(60);
        ctx.progress(0.0, Some(4.0), Some("asking for a GPU"));
        let request = AcquireGpu {
            job_id: ctx.job_id().clone(),
            gpu,
            image: params.image.clone(),
            onstart: Some(onstart(&params.command)),
            env: params.env.clone(),
            disk_gib: params.disk.unwrap_or(16),
            max_runtime_s,
            bandwidth_gib: 0.0,
        };
        // Not abandoned on cancel: a lease granted after the job gave up would be nobody's.
        // The follow loop below sees the cancellation and releases it.
        let lease = acquire(&ctx, request, job.deadline_unix_ms).await?;
        ctx.log(&format!(
            "lease {} granted: {} x {} at ${:.4}/h, deadline in {} s",
            lease.lease_id,
            lease.gpu_count.unwrap_or(0),
            lease.gpu_model.as_deref().unwrap_or("?"),
            lease.usd_per_hour.unwrap_or(0.0),
            lease.deadline_unix_ms.saturating_sub(now_ms()) / 1000,
        ));
        let (end, lines) = follow(&ctx, &lease, job.deadline_unix_ms).await;
        // Always released, whatever happened above.
        let released = ctx.release_gpu(&lease.lease_id).await;
        let cost = match &released {
            Ok(final_lease) => {
                ctx.log(&format!(
                    "lease {} released: {}, cost ${:.4}",
                    lease.lease_id,
                    phase(final_lease.state),
                    final_lease.cost_usd.unwrap_or(0.0)
                ));
                final_lease.cost_usd
            }
            Err(error) => {
                ctx.log_stderr(&format!(
                    "releasing lease {} failed ({error}); the supervisor destroys it at its deadline",
                    lease.lease_id
                ));
                None
            }
        };
        ctx.progress(4.0, Some(4.0), Some("done"));
        let output = json!({
            "lease_id": lease.lease_id, "gpu_model": lease.gpu_model, "gpu_count": lease.gpu_count,
            "usd_per_hour": lease.usd_per_hour, "cost_usd": cost, "log_lines": lines,
            "exit_status": match &end { End::Exit(code) => Some(*code), _ => None },
        });
        match end {
            End::Exit(0) => Ok(Some(output)),
            End::Exit(code) => {
                Err(JobError::failed(format!("the command exited with status {code}")))
            }
            End::Cancelled(_) => Err(JobError::Cancelled),
            End::Lost(why) => Err(JobError::failed(why)),
        }
    }
}

fn phase(state: LeasePhase) -> &'static str {
    match state {
        LeasePhase::Provisioning => "provisioning",
        LeasePhase::Loading => "loading",
        LeasePhase::Running => "running",
        LeasePhase::Exited => "exited",
        LeasePhase::Failed => "failed",
        LeasePhase::Released => "released",
    }
}

/// Follows the lease until the workload ends; returns how, and how many log lines it saw.
async fn follow(ctx: &JobContext, lease: &Lease, deadline_unix_ms: u64) -> (End, usize) {
    let mut seen: Vec<String> = Vec::new();
    let mut last_state = None;
    loop {
        if ctx.is_cancelled() {
            return (End::Cancelled("cancelled"), seen.len());
        }
        if now_ms() >= deadline_unix_ms {
            return (End::Cancelled("deadline"), seen.len());
        }
        let status = match ctx.lease_status(&lease.lease_id).await {
            Ok(status) => status,
            Err(error) => return (End::Lost(format!("lease status: {error}")), seen.len()),
        };
        if last_state != Some(status.state) {
            let step = match status.state {
                LeasePhase::Provisioning => 1.0,
                LeasePhase::Loading => 2.0,
                _ => 3.0,
            };
            ctx.progress(step, Some(4.0), Some(&format!("instance {}", phase(status.state))));
            last_state = Some(status.state);
        }
        if matches!(status.state, LeasePhase::Running | LeasePhase::Exited | LeasePhase::Failed) {
            if let Ok(log) = ctx.lease_logs(&lease.lease_id, TAIL).await {
                for line in new_lines(&seen, &log.lines) {
                    ctx.log(&line);
                    seen.push(line);
                }
            }
            if let Some(code) = exit_status(&seen) {
                return (End::Exit(code), seen.len());
            }
        }
        match status.state {
            LeasePhase::Exited => return (End::Exit(0), seen.len()),
            LeasePhase::Failed | LeasePhase::Released => {
                let why = status.status_message.unwrap_or_else(|| "the instance failed".to_owned());
                return (End::Lost(why), seen.len());
            }
            _ => {}
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = ctx.cancelled() => return (End::Cancelled("cancelled"), seen.len()),
        }
    }
}

/// The lines of `tail` after the longest overlap of `seen`'s end with `tail`'s start.
fn new_lines(seen: &[String], tail: &[String]) -> Vec<String> {
    let max = seen.len().min(tail.len());
    for overlap in (0..=max).rev() {
        if seen[seen.len() - overlap..] == tail[..overlap] {
            return tail[overlap..].to_vec();
        }
    }
    tail.to_vec()
}

/// The workload's exit status, once its log says it ended.
fn exit_status(lines: &[String]) -> Option<i32> {
    lines.iter().rev().find_map(|line| {
        if line.trim() == SIM_DONE {
            return Some(0);
        }
        line.trim().strip_prefix(EXIT_MARKER).and_then(|code| code.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_script_quotes_every_argument() {
        let script = onstart(&["python".into(), "-c".into(), "print('hi')".into()]);
        assert_eq!(script, "'python' '-c' 'print('\\''hi'\\'')'\necho drover-exit-status=$?\n");
    }

    #[test]
    fn only_new_lines_are_logged() {
        let seen: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let tail: Vec<String> = ["b", "c", "d"].map(String::from).to_vec();
        assert_eq!(new_lines(&seen, &tail), ["d"]);
        assert_eq!(new_lines(&[], &tail), ["b", "c", "d"]);
        assert!(new_lines(&seen, &seen[1..]).is_empty());
    }

    #[test]
    fn exit_status_comes_from_the_marker_or_the_simulator() {
        assert_eq!(exit_status(&["x".into(), "drover-exit-status=3".into()]), Some(3));
        assert_eq!(exit_status(&["[sim] onstart finished".into()]), Some(0));
        assert_eq!(exit_status(&["still running".into()]), None);
    }
}
