//! `drover exec [--profile FILE] [--uid N] [--net] -- CMD ARGS...`: runs CMD exactly as the
//! supervisor runs a driver, for operators debugging a driver and for benchmarks.
//!
//! 1. The profile is loaded and validated (default: the built-in `sandbox/default.toml`).
//! 2. Phase A: this process drops its own privilege (as root: to `--uid`, default 65534, and
//!    the same gid; non-root: clears what is left) and verifies the result. Failure: exit 2.
//! 3. Phase B: CMD starts in the sandbox with the profile's environment only, this process's
//!    stdin (or `/dev/null` when stdin is a terminal: a driver is never handed the operator's
//!    terminal to read or reconfigure), stdout and stderr, and the profile's work directory, or else a fresh private
//!    directory (removed afterwards). `--net` turns the network on.
//!    Started as root, `drover exec` first prepares the memory, pids and cpu cgroups for the
//!    dropped uid (see `drover_sandbox::cgroup`), so `limits.memory_bytes`, `pids` and
//!    `cpu_millicores` are enforced and an OOM kill is reported as one.
//! 4. Phase C: `drover exec` exits with CMD's exit status, or 128 + the signal that killed it.
//!    When the sandbox killed it (a refused system call, the deadline, SIGINT/SIGTERM/SIGHUP
//!    to `drover exec`), one line on stderr says why.
//!
//! GPUs: with a profile that grants NVIDIA devices (`sandbox/gpu.toml`), CMD gets the GPUs
//! `--gpu` names (default `all`), granted as a driver's `gpus` are (see `drover_gpu::devices`:
//! only their `/dev/nvidiaN` plus the control nodes, their `/sys` PCI directories,
//! `CUDA_VISIBLE_DEVICES`/`NVIDIA_VISIBLE_DEVICES` by UUID). When no inventory can be taken
//! (no `nvidia-smi`) without `--gpu`, one line on stderr says so and the profile's nodes are
//! granted as it lists them; with `--gpu` that is an error.
//!
//! Degradations (a kernel feature missing) are printed on stderr, one line each, before CMD
//! starts. In seccomp log mode the refused calls are listed after CMD exits.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use drover_gpu::{DeviceSet, Inventory, Roots};
use drover_proto::config::{AllGpus, GpuSelection};
use drover_sandbox::cgroup::MemoryParent;
use drover_sandbox::{Command, DropConfig, LinuxSys, drop_privileges, prepare, reap_strays};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::profile;

/// Arguments of `drover exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sandbox profile file (TOML). Default: the built-in default profile.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// User id to drop to when started as root (the group id becomes the same). Default
    /// 65534. When started non-root, only the current uid is accepted.
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,
    /// Allow network access (no network namespace, no socket-family filter).
    #[arg(long)]
    pub net: bool,
    /// The GPUs CMD gets with a GPU profile: `all` (default), or indices and UUIDs,
    /// comma-separated (`0`, `1,GPU-8f2c...`).
    #[arg(long, value_name = "GPUS", value_parser = drover_gpu::devices::parse_selection)]
    pub gpu: Option<GpuSelection>,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// Gives a GPU profile's command the GPUs `wanted` names (default all); see the module docs.
/// Returns the GPUs granted.
#[allow(clippy::print_stderr)]
pub fn grant_gpus(
    policy: &mut drover_sandbox::Policy,
    wanted: Option<&GpuSelection>,
) -> anyhow::Result<Vec<drover_gpu::Gpu>> {
    if wanted.is_none() && !drover_gpu::devices::grants_nvidia(policy) {
        return Ok(Vec::new());
    }
    let all = GpuSelection::All(AllGpus::All);
    let inventory = match Inventory::detect(Roots::from_env()) {
        Ok(inventory) => inventory,
        Err(error) if wanted.is_none() => {
            eprintln!("drover: gpu: {error}: the profile's NVIDIA nodes are granted as listed");
            return Ok(Vec::new());
        }
        Err(error) => return Err(error).context("--gpu: inventorying local GPUs"),
    };
    if wanted.is_none() && inventory.gpus.is_empty() {
        eprintln!("drover: gpu: nvidia-smi found no GPU: no NVIDIA node is granted");
    }
    let set = match wanted {
        None if inventory.gpus.is_empty() => DeviceSet::none(),
        _ => DeviceSet::for_driver(Some(wanted.unwrap_or(&all)), &inventory, policy)
            .context("--gpu")?,
    };
    set.apply(policy);
    Ok(set.gpus)
}

/// Runs `drover exec`.
#[allow(clippy::print_stderr)]
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let profile = match &args.profile {
        Some(path) => profile::load_file(path)?,
        None => profile::load_builtin("default")?,
    };
    let (mut policy, work_dir) = profile::to_policy(&profile);
    policy.network |= args.net;

    drover_sandbox::privilege::check_requested_uid(args.uid, &LinuxSys)
        .context("privilege drop failed")?;
    let uid = args.uid.unwrap_or(65534);
    // Root-only preparation, before the drop: cgroups the dropped uid owns.
    let cgroup_limited = policy.limits.memory_bytes.is_some()
        || policy.limits.pids.is_some()
        || policy.limits.cpu_millicores.is_some();
    let memory_cgroup = if cgroup_limited && nix::unistd::geteuid().is_root() {
        MemoryParent::prepare_as_root(uid, uid).context("preparing the cgroups")?
    } else {
        None
    };
    let dropped = drop_privileges(&DropConfig { uid, gid: uid }, &LinuxSys)
        .context("privilege drop failed")?;
    grant_gpus(&mut policy, args.gpu.as_ref())?;

    // Created after the drop, so it belongs to the uid the driver runs as.
    let scratch = match work_dir {
        Some(_) => None,
        None => Some(
            drover_sandbox::work_dir::WorkDir::create_in(&std::env::temp_dir(), "drover-exec-")
                .context("creating a private work directory")?,
        ),
    };
    let work_dir = work_dir
        .or_else(|| scratch.as_ref().map(|s| s.path().to_path_buf()))
        .context("no work directory")?;

    let mut argv = args.command.into_iter();
    let program = argv.next().context("no command given")?;
    let mut command = Command::new(program, work_dir).args(argv);
    command.memory_cgroup = memory_cgroup;
    if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        let null = std::fs::File::open("/dev/null").context("opening /dev/null for stdin")?;
        command.stdio[0] = Some(null.into());
    }
    let prepared = prepare(&policy, command, &dropped).context("preparing the sandbox")?;

    // SIGINT, SIGTERM and SIGHUP to drover exec end the sandbox; the child resets its mask.
    let mut stop_signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT] {
        stop_signals.add(signal);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stop_signals), None).context("blocking signals")?;
    let stop = SignalFd::with_flags(&stop_signals, SfdFlags::SFD_CLOEXEC).context("signalfd")?;

    let mut sandboxed = prepared.spawn().context("starting the sandboxed command")?;
    for degradation in sandboxed.degradations() {
        eprintln!("drover: sandbox: degraded: {degradation}");
    }
    let death = sandboxed.wait(Some(stop.as_fd())).context("waiting for the sandboxed command")?;
    drop(sandboxed);
    reap_strays(&[]);
    for logged in &death.logged {
        eprintln!(
            "drover: sandbox: log mode: {} (number {}) is not in the allowlist; called {} time(s)",
            logged.name.unwrap_or("unknown"),
            logged.nr,
            logged.count
        );
    }
    if death.cause.by_sandbox() {
        eprintln!("drover: sandbox: {}", death.cause);
    }
    drop(scratch);
    Ok(ExitCode::from(death.cause.exit_code()))
}
