//! `drover driver-check [--json] [--no-sandbox] -- CMD ARGS...`: the conformance kit. It runs
//! CMD as a driver, plays the supervisor over a socketpair on fd 3, and judges what the driver
//! does in each scenario.
//!
//! | Scenario | Required | Passes when |
//! |---|---|---|
//! | `handshake` | yes | a valid `hello` arrives within 5 s, offering protocol version 1 |
//! | `version_negotiation` | yes | after `error {code: version_mismatch}` the driver exits within 5 s (fresh driver) |
//! | `action_schemas` | yes | every declared params schema compiles (draft 2020-12) |
//! | `heartbeat` | yes | each of 3 `ping`s gets its `pong` within 2 s |
//! | `job_run` | yes | `run_job` is acked within 2 s and the job reaches a terminal state within 20 s: states in order (queued, starting, running, then one terminal state), one `job_result` before it, consistent with it, nothing about the job after it |
//! | `cancel` | yes | during a job, `cancel_job` is answered within 2 s and a terminal state follows within 5 s |
//! | `malformed_frames` | yes | after invalid UTF-8, invalid JSON, a non-object, an empty payload and a schema-violating `run_job`, the driver still answers `ping` |
//! | `oversize_frame` | yes | after a frame one byte over the negotiated limit, the driver still answers `ping` |
//! | `unknown_type` | yes | a frame of an unknown `type` gets an `error` with code `unknown_type`, and `ping` still works |
//! | `shutdown` | yes | after `shutdown {grace_ms: 2000}` the driver exits within the grace period plus 1 s |
//! | `transport_eof` | yes | when the kit closes the transport (during a job) the driver exits within 5 s (fresh driver) |
//! | `valid_frames` | yes | no frame the driver wrote in any scenario failed validation; otherwise the first one's code and JSON pointer |
//! | `quiet_stdout` | no | nothing was written on stdout (it is captured as logs; a warning only) |
//!
//! The job for `job_run` (`--job ACTION[=PARAMS]`) defaults to the first declared action
//! (in name order) whose params schema accepts its first `examples` entry, or `{}`; the job
//! for `cancel` (`--cancel-job`) defaults to the last such action. When the job ends on its
//! own before the cancel lands, `cancel` passes and says it was inconclusive.
//!
//! Each scenario restarts the driver when the previous one ended it. Once a handshake has
//! failed, later scenarios that need a session fail at once instead of waiting again. The
//! whole run is bounded by 120 s ([`TOTAL_TIME`]); a scenario that would start after that
//! fails as out of time. The deadlines above are fixed.
//!
//! Sandboxed (the default), the kit first drops its own privilege as `drover exec` does (as
//! root, to uid 65534) and starts each driver with the built-in default profile (or
//! `--profile`), granting read access to the program and to the directory of every argument that
//! names an existing file (a script and the modules beside it), plus `--read` paths.
//! `--no-sandbox` runs the driver as a plain child, for development. Either way the driver starts
//! in a private work directory, so relative paths to existing files among the arguments are
//! first made absolute against the directory the check was started from.
//!
//! Output: a table (scenario, result, why) or, with `--json`, one JSON object
//! `{"passed": bool, "scenarios": [{"name", "required", "result", "why", "ms"}]}`.
//! Exit status: 0 when every required scenario passes, 1 when one fails, 2 when the kit could
//! not run.

mod process;
mod scenarios;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use drover_sandbox::{DropConfig, LinuxSys, drop_privileges};
use serde::Serialize;

use crate::profile;
use process::Launcher;
pub(crate) use process::read_grants;

/// Upper bound on a whole run.
pub const TOTAL_TIME: Duration = Duration::from_secs(120);

/// Arguments of `drover driver-check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run the driver as a plain child process, without the sandbox (development only).
    #[arg(long)]
    pub no_sandbox: bool,
    /// Sandbox profile file (TOML). Default: the built-in default profile.
    #[arg(long, value_name = "FILE", conflicts_with = "no_sandbox")]
    pub profile: Option<PathBuf>,
    /// Extra path the sandboxed driver may read (repeatable).
    #[arg(long, value_name = "PATH")]
    pub read: Vec<PathBuf>,
    /// User id to drop to when started as root. Default 65534.
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,
    /// The job for `job_run`: an action and optionally its params as JSON.
    #[arg(long, value_name = "ACTION[=PARAMS]")]
    pub job: Option<String>,
    /// The job for `cancel`, ideally one that runs for a few seconds.
    #[arg(long, value_name = "ACTION[=PARAMS]")]
    pub cancel_job: Option<String>,
    /// The driver's command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// The outcome of one scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The driver did what the protocol asks.
    Pass,
    /// It did not.
    Fail,
    /// Worth knowing, not a failure (advisory scenarios only).
    Warn,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Warn => "warn",
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The scenario.
    pub name: &'static str,
    /// Whether it must pass for the exit status to be 0.
    pub required: bool,
    /// Its outcome.
    pub result: Verdict,
    /// Why, in a sentence.
    pub why: String,
    /// How long it took, in milliseconds.
    pub ms: u64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// True when every required scenario passed.
    pub passed: bool,
    /// Every scenario, in the order played.
    pub scenarios: Vec<Row>,
}

/// A job to run: action and params.
#[derive(Clone, Debug)]
pub(crate) struct JobSpec {
    pub(crate) action: String,
    pub(crate) params: Option<serde_json::Map<String, serde_json::Value>>,
}

fn parse_job(text: &str) -> anyhow::Result<JobSpec> {
    let (action, params) = match text.split_once('=') {
        Some((action, params)) => {
            let value: serde_json::Value = serde_json::from_str(params)
                .with_context(|| format!("the params of --job {action} are not JSON"))?;
            let serde_json::Value::Object(map) = value else {
                anyhow::bail!("the params of --job {action} must be a JSON object");
            };
            (action, Some(map))
        }
        None => (text, None),
    };
    Ok(JobSpec { action: action.to_owned(), params })
}

/// Runs `drover driver-check`.
pub fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    args.command = process::absolute_args(&args.command);
    let job = args.job.as_deref().map(parse_job).transpose()?;
    let cancel_job = args.cancel_job.as_deref().map(parse_job).transpose()?;
    let launcher = if args.no_sandbox {
        Launcher::Plain
    } else {
        let profile = match &args.profile {
            Some(path) => profile::load_file(path)?,
            None => profile::load_builtin("default")?,
        };
        let (mut policy, _) = profile::to_policy(&profile);
        policy.read.extend(read_grants(&args.command));
        policy.read.extend(args.read.iter().cloned());
        // Phase A, before any thread or runtime exists.
        drover_sandbox::privilege::check_requested_uid(args.uid, &LinuxSys)
            .context("privilege drop failed (use --no-sandbox to test without the sandbox)")?;
        let uid = args.uid.unwrap_or(65534);
        let dropped = drop_privileges(&DropConfig { uid, gid: uid }, &LinuxSys)
            .context("privilege drop failed (use --no-sandbox to test without the sandbox)")?;
        Launcher::Sandboxed { policy: Box::new(policy), dropped }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let plan = scenarios::Plan { argv: args.command, launcher, job, cancel_job };
    let rows = runtime.block_on(scenarios::play(plan))?;
    let passed = rows.iter().all(|r| !r.required || r.result == Verdict::Pass);
    let report = Report { passed, scenarios: rows };
    #[allow(clippy::print_stdout)]
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The report as a plain-text table.
pub fn table(report: &Report) -> String {
    let width = report.scenarios.iter().map(|r| r.name.len()).max().unwrap_or(8).max(8);
    let mut out = format!("{:width$}  {:6}  why\n", "scenario", "result");
    for row in &report.scenarios {
        let result = if row.required || row.result == Verdict::Pass {
            row.result.as_str().to_owned()
        } else {
            format!("{}*", row.result.as_str())
        };
        out.push_str(&format!("{:width$}  {:6}  {}\n", row.name, result, row.why));
    }
    let failed = report.scenarios.iter().filter(|r| r.required && r.result == Verdict::Fail);
    out.push_str(&match failed.count() {
        0 => "\nall required scenarios passed\n".to_owned(),
        n => format!("\n{n} required scenario(s) failed\n"),
    });
    if report.scenarios.iter().any(|r| !r.required && r.result != Verdict::Pass) {
        out.push_str("* advisory: does not affect the exit status\n");
    }
    out
}
