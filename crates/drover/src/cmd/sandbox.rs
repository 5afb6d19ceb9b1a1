//! `drover sandbox status [--json] [--uid N]` and `drover sandbox probe [--try ATTEMPT]...`.
//!
//! `status` first drops privilege exactly as the supervisor does (Phase A; as root to `--uid`,
//! default 65534), because what matters is what the *supervisor* can do afterwards, then says
//! which sandbox features this kernel and this process offer: Landlock ABI and what it covers,
//! seccomp filters and user notification, unprivileged namespaces (tried once), cgroup v2 and
//! whether it is delegated to this process, PID 1 or child subreaper, `close_range`, and the
//! degradations the default profile would suffer here. Exit 0, or 1 when the privilege drop
//! failed (which the report shows).
//!
//! `probe` is meant to run *inside* the sandbox (`drover exec -- drover sandbox probe`): it
//! prints one JSON line of facts about its own confinement (`/proc/self/status` fields, open
//! fds, environment), then one JSON line per `--try` escape attempt (see
//! `drover_sandbox::probe`). Attempts print only success and errno, never data. With
//! `--try fork-sleep` it sleeps after the attempts until killed.

use std::io::Write as _;
use std::process::ExitCode;

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
    },
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
        SandboxCommand::Status { json, uid } => status(json, uid),
        SandboxCommand::Probe { attempts } => probe(&attempts),
    }
}

#[allow(clippy::print_stdout)]
fn status(as_json: bool, uid: Option<u32>) -> anyhow::Result<ExitCode> {
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
        "close_range": features.close_range,
        "memory_cgroup": match drover_sandbox::cgroup::memory_hierarchy() {
            Some((dir, version)) => json!({"available": true, "hierarchy": dir.display().to_string(),
                "version": format!("{version:?}").to_lowercase()}),
            None => json!({"available": false}),
        },
        "cgroup_v2": {
            "dir": cgroup.dir.as_ref().map(|d| d.display().to_string()),
            "controllers": cgroup.controllers,
            "delegated": cgroup.delegated,
        },
        "degradations": degradations,
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
        for (key, value) in lines {
            println!("{key:<16} {value}");
        }
    }
    Ok(if drop.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
