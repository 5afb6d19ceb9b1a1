//! `drover sandbox status [--json] [--uid N] [--config FILE]`, `drover sandbox probe [--try
//! ATTEMPT]...` and `drover sandbox gpu-check` (in [`super::gpu_check`]).
//!
//! `status` first drops privilege exactly as the supervisor does (Phase A; as root to `--uid`,
//! default 65534), because what matters is what the *supervisor* can do afterwards, then says
//! which sandbox features this kernel and this process offer: Landlock ABI and what it covers,
//! seccomp filters and user notification, unprivileged namespaces (tried once), cgroup v2 and
//! whether it is delegated to this process, the cgroup hierarchies each driver's memory, pids
//! and cpu limits go in, PID 1 or child subreaper, `close_range`, the
//! degradations the default profile would suffer here, and the local GPUs (`nvidia-smi`, see
//! `drover_gpu::inventory`). With `--config FILE` it also says which GPUs each configured
//! driver would hold, or why its `gpus` would be refused. Exit 0, or 1 when the privilege drop
//! failed (which the report shows).
//!
//! `probe` is meant to run *inside* the sandbox (`drover exec -- drover sandbox probe`): it
//! prints one JSON line of facts about its own confinement (`/proc/self/status` fields, open
//! fds, environment), then one JSON line per `--try` escape attempt (see
//! `drover_sandbox::probe`). Attempts print only success and errno, never data. With
//! `--try fork-sleep` it sleeps after the attempts until killed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use drover_gpu::{Inventory, Roots};
use drover_proto::api::GpuHeld;

use drover_sandbox::probe::{self, Attempt};
use drover_sandbox::{DropConfig, Feature, Features, LinuxSys, drop_privileges};
use serde_json::{Map, Value, json};

use crate::profile;

/// Arguments of `drover sandbox`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: SandboxCommand,
}

/// `drover sandbox` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SandboxCommand {
    /// Which sandbox features this kernel and this process offer (after the privilege drop).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// User id to drop to when started as root. Default 65534.
        #[arg(long, value_name = "N")]
        uid: Option<u32>,
        /// Also show which GPUs each driver of this configuration would hold.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run a small CUDA workload inside the sandbox and outside it, side by side (exit 2
    /// without a GPU).
    GpuCheck(super::gpu_check::Args),
    /// The CUDA workload of gpu-check, as one JSON line (gpu-check runs it).
    #[command(hide = true)]
    GpuWorkload,
    /// Report this process's own confinement as JSON lines and try escapes (run it inside
    /// `drover exec`).
    Probe {
        /// An escape attempt: setuid0, environ:PID, signal:PID, ptrace:PID, socket-inet,
        /// connect:IP:PORT, write:PATH, syscall:NAME, userns, fork-sleep, alloc:MIB, clone-ns,
        /// pdeathsig, tty-echo:FD, tty-winsize:FD, unix:PATH. Repeatable.
        #[arg(long = "try", value_name = "ATTEMPT", value_parser = parse_attempt)]
        attempts: Vec<(String, Attempt)>,
    },
}

fn parse_attempt(s: &str) -> Result<(String, Attempt), String> {
    s.parse().map(|a| (s.to_owned(), a))
}

/// Runs `drover sandbox`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        SandboxCommand::Status { json, uid, config } => status(json, uid, config.as_deref()),
        SandboxCommand::Probe { attempts } => probe(&attempts),
        SandboxCommand::GpuCheck(args) => super::gpu_check::run(args),
        SandboxCommand::GpuWorkload => super::gpu_check::workload(),
    }
}

#[allow(clippy::print_stdout)]
fn status(as_json: bool, uid: Option<u32>, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = config.map(|path| super::serve::load_config(Some(path))).transpose()?;
    let uid = uid.unwrap_or(65534);
    let drop = drop_privileges(&DropConfig { uid, gid: uid }, &LinuxSys);
    let features = Features::detect();
    let namespaces = Features::namespaces();
    let cgroup = drover_sandbox::features::Cgroup::detect();
    let (policy, _) = profile::to_policy(&profile::load_builtin("default")?);
    let degradations: Vec<String> = drover_sandbox::spawn::expected_degradations(&policy)
        .iter()
        .map(ToString::to_string)
        .collect();
    let abi = features.landlock_abi();
    let gpus = Inventory::detect(Roots::from_env());
    let drivers = driver_gpus(config.as_ref(), gpus.as_ref().ok());
    let report = json!({
        "kernel": features.kernel,
        "privilege_drop": match &drop {
            Ok(d) => json!({"ok": true, "uid": d.uid(), "gid": d.gid(), "started_as_root": d.started_as_root()}),
            Err(e) => json!({"ok": false, "error": format!("{e}")}),
        },
        "pid1": features.pid1,
        "subreaper": features.subreaper,
        "landlock": match &features.landlock {
            Ok(abi) => json!({"available": true, "abi": abi,
                "scoping": features.check(Feature::LandlockScoping).is_ok(),
                "ioctl_dev": features.check(Feature::LandlockIoctlDev).is_ok()}),
            Err(reason) => json!({"available": false, "reason": reason}),
        },
        "seccomp": {"filter": features.seccomp_filter, "user_notification": features.seccomp_notify},
        "namespaces": match namespaces {
            Ok(()) => json!({"available": true}),
            Err(reason) => json!({"available": false, "reason": reason}),
        },
        "private_tree": {"available": namespaces.is_ok()},
        "close_range": features.close_range,
        "memory_cgroup": match drover_sandbox::cgroup::memory_hierarchy() {
            Some((dir, version)) => json!({"available": true, "hierarchy": dir.display().to_string(),
                "version": format!("{version:?}").to_lowercase()}),
            None => json!({"available": false}),
        },
        "driver_cgroups": drover_sandbox::cgroup::hierarchies().iter().map(|(dir, version, held)| json!({
            "hierarchy": dir.display().to_string(),
            "version": format!("{version:?}").to_lowercase(),
            "controllers": held.iter().map(|c| c.name()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "cgroup_v2": {
            "dir": cgroup.dir.as_ref().map(|d| d.display().to_string()),
            "controllers": cgroup.controllers,
            "delegated": cgroup.delegated,
        },
        "degradations": degradations,
        "gpus": gpus.as_ref().map_err(ToString::to_string).map(|inventory| {
            inventory.gpus.iter().map(|gpu| json!({
                "index": gpu.index, "uuid": gpu.uuid.as_str(), "name": gpu.name,
                "pci_bus_id": gpu.pci_bus_id, "node": inventory.node(gpu).display().to_string(),
            })).collect::<Vec<_>>()
        }).unwrap_or_else(|reason| vec![json!({"unavailable": reason})]),
        "drivers": drivers.iter().map(|(name, held)| match held {
            Ok(gpus) => json!({"name": name, "gpus": gpus}),
            Err(reason) => json!({"name": name, "error": reason}),
        }).collect::<Vec<_>>(),
    });
    if as_json {
        println!("{report}");
    } else {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut lines = vec![("kernel", features.kernel.clone())];
        lines.push((
            "privilege drop",
            match &drop {
                Ok(d) => format!(
                    "ok: uid {} gid {}, all capability sets empty, no_new_privs, non-dumpable{}",
                    d.uid(),
                    d.gid(),
                    if d.started_as_root() { " (started as root)" } else { "" }
                ),
                Err(e) => format!("FAILED: {e}"),
            },
        ));
        lines.push((
            "pid 1",
            format!("{} (child subreaper: {})", yes(features.pid1), yes(features.subreaper)),
        ));
        lines.push((
            "landlock",
            match &features.landlock {
                Ok(_) => format!(
                    "ABI {abi}: filesystem rules; device ioctl control: {}; signal and abstract-socket scoping: {}",
                    yes(abi >= 5),
                    yes(abi >= 6)
                ),
                Err(reason) => format!("unavailable: {reason}"),
            },
        ));
        lines.push((
            "seccomp",
            format!(
                "filters: {}; user notification (names killed calls): {}",
                yes(features.seccomp_filter),
                yes(features.seccomp_notify)
            ),
        ));
        lines.push((
            "namespaces",
            match namespaces {
                Ok(()) => {
                    "user, pid, net, mount, ipc, uts, cgroup: available unprivileged".to_owned()
                }
                Err(reason) => format!("unavailable: {reason}"),
            },
        ));
        lines.push((
            "private tree",
            if namespaces.is_ok() {
                "yes: each driver runs on a root of its own (granted paths, own /proc, minimal /dev, tmpfs work directory)".to_owned()
            } else {
                "no (needs the namespaces): drivers see the host's filesystem within Landlock's rules, its /proc and its UNIX sockets".to_owned()
            },
        ));
        lines.push(("close_range", yes(features.close_range).to_owned()));
        lines.push((
            "memory cgroup",
            match drover_sandbox::cgroup::memory_hierarchy() {
                Some((dir, version)) => format!(
                    "{version:?} hierarchy at {} (limits enforced and OOM kills named when drover starts as root)",
                    dir.display()
                ),
                None => "none: memory limits cannot be enforced".to_owned(),
            },
        ));
        let held: Vec<String> = drover_sandbox::cgroup::hierarchies()
            .iter()
            .map(|(dir, version, held)| {
                let names: Vec<&str> = held.iter().map(|c| c.name()).collect();
                format!("{} ({version:?}) at {}", names.join(","), dir.display())
            })
            .collect();
        lines.push((
            "driver cgroups",
            if held.is_empty() {
                "none: pids, cpu and memory limits cannot be enforced".to_owned()
            } else {
                format!("{} (used when drover starts as root)", held.join("; "))
            },
        ));
        lines.push((
            "cgroup v2",
            match &cgroup.dir {
                Some(dir) => format!(
                    "{}; controllers: {}; delegated to this process: {}",
                    dir.display(),
                    if cgroup.controllers.is_empty() {
                        "none".to_owned()
                    } else {
                        cgroup.controllers.join(" ")
                    },
                    yes(cgroup.delegated)
                ),
                None => "not mounted".to_owned(),
            },
        ));
        if degradations.is_empty() {
            lines.push(("degradations", "none for the default profile".to_owned()));
        } else {
            for d in &degradations {
                lines.push(("degradation", d.clone()));
            }
        }
        match &gpus {
            Ok(inventory) if inventory.gpus.is_empty() => {
                lines.push(("gpus", "none listed by nvidia-smi".to_owned()));
            }
            Ok(inventory) => {
                for gpu in &inventory.gpus {
                    lines.push(("gpu", gpu.describe()));
                }
            }
            Err(error) => lines.push(("gpus", format!("none: {error}"))),
        }
        for (name, held) in &drivers {
            let value = match held {
                Ok(gpus) if gpus.is_empty() => format!("{name}: no GPU"),
                Ok(gpus) => {
                    let list: Vec<String> =
                        gpus.iter().map(|g| format!("{} {}", g.index, g.uuid)).collect();
                    format!("{name}: {}", list.join(", "))
                }
                Err(reason) => format!("{name}: REFUSED: {reason}"),
            };
            lines.push(("driver gpus", value));
        }
        for (key, value) in lines {
            println!("{key:<16} {value}");
        }
    }
    Ok(if drop.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Each configured driver's GPUs as `drover serve` would grant them, or why it would refuse.
fn driver_gpus(
    config: Option<&drover_proto::config::Config>,
    inventory: Option<&Inventory>,
) -> Vec<(String, Result<Vec<GpuHeld>, String>)> {
    let Some(config) = config else { return Vec::new() };
    let empty = Inventory { gpus: Vec::new(), roots: Roots::from_env() };
    config
        .drivers
        .iter()
        .map(|driver| {
            let held = (|| {
                let profile = match &driver.profile {
                    Some(path) => profile::load_file(Path::new(path))?,
                    None => profile::load_builtin("default")?,
                };
                let (mut policy, _) = profile::to_policy(&profile);
                let inventory = match (inventory, &driver.gpus) {
                    (Some(inventory), _) => Some(inventory),
                    (None, Some(_)) => anyhow::bail!("no GPU inventory (see the gpus line)"),
                    (None, None) => Some(&empty),
                };
                super::serve::grant_gpus(driver, &mut policy, inventory)
            })();
            (driver.name.to_string(), held.map_err(|e| format!("{e:#}")))
        })
        .collect()
}

fn probe(attempts: &[(String, Attempt)]) -> anyhow::Result<ExitCode> {
    let facts = probe::facts()?;
    let mut out = std::io::stdout().lock();
    let mut status = Map::new();
    for (key, value) in &facts.status {
        status.insert((*key).to_owned(), Value::from(value.as_str()));
    }
    let env: Map<String, Value> =
        facts.env.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
    let line = json!({"facts": {
        "status": status, "fds": facts.fds, "env": env, "pid": facts.pid, "proc_pid": facts.proc_pid,
    }});
    writeln!(out, "{line}")?;
    out.flush()?;
    let mut sleep = false;
    for (text, attempt) in attempts {
        // Flushed before each attempt: a refused system call may kill the probe.
        let outcome = probe::attempt(attempt);
        let line = json!({
            "try": text,
            "succeeded": outcome.succeeded,
            "errno": outcome.errno,
            "detail": outcome.detail,
        });
        writeln!(out, "{line}")?;
        out.flush()?;
        sleep |= *attempt == Attempt::ForkSleep;
    }
    if sleep {
        // Until killed: the tests kill the supervisor and check that this dies with it.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    Ok(ExitCode::SUCCESS)
}
