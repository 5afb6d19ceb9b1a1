//! `drover sandbox gpu-check [--profile FILE] [--gpu N] [--rounds N] [--uid N] [--json]`: the
//! same CUDA workload inside the sandbox and outside it, side by side, with ratios; and
//! `drover sandbox gpu-workload`, that workload itself (one JSON line), which gpu-check runs
//! as a child in both places, so the same binary is measured in both.
//!
//! gpu-check, in order:
//!
//! 1. The GPU inventory (`drover_gpu::inventory`: `nvidia-smi`). No `nvidia-smi`, or no GPU:
//!    "no GPU", exit 2.
//! 2. The GPU: `--gpu` (an index or a UUID; default the first listed).
//! 3. Phase A, as `drover exec` does it (as root: to `--uid`, default 65534, with a copy of this
//!    binary that uid can execute when it cannot reach this one).
//! 4. `--rounds` pairs (default 3), each the workload outside (a plain child process with this
//!    process's environment plus `CUDA_VISIBLE_DEVICES`/`NVIDIA_VISIBLE_DEVICES` set to the
//!    GPU's UUID), then inside (the profile, default the built-in `gpu`, with the GPU granted
//!    as a driver's `gpus = [N]` is). The first outside run answering "no GPU" (libcuda cannot
//!    be loaded, no device) ends the check: exit 2.
//! 5. The medians of each side, and the ratios inside/outside, each oriented so that 1.00 means
//!    "as fast as outside": `init` is outside time / inside time, `h2d`, `d2h`, `kernel` are
//!    inside rate / outside rate.
//!
//! Exit 0 when every run on both sides verified its result, 1 when a run failed (the report
//! says which side, which step, which CUDA error), 2 when there is no GPU or the check could
//! not run. `--json` prints one JSON object: `{"gpu": false, "reason": ...}` without a GPU,
//! else `{"gpu": true, "device", "rounds", "outside", "inside", "ratios", "ok"}`.
//!
//! gpu-workload prints `{"ok": true, "devices", "name", "init_s", "h2d_gbps", "d2h_gbps",
//! "kernel_gbps", "total_s"}` and exits 0, or `{"ok": false, "no_gpu", "stage", "error"}`
//! and exits 2 without a GPU, 1 on any other failure (see `drover_gpu::workload`).

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use drover_gpu::{DeviceSet, Gpu, Inventory, Roots, WorkloadConfig};
use drover_proto::config::{GpuRef, GpuSelection};
use drover_sandbox::{Command, DropConfig, LinuxSys, drop_privileges, prepare};
use serde_json::{Value, json};

use crate::profile;

/// Arguments of `drover sandbox gpu-check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sandbox profile file for the inside run. Default: the built-in `sandbox/gpu.toml`.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// The GPU, by nvidia-smi index or UUID. Default: the first one listed.
    #[arg(long, value_name = "N")]
    pub gpu: Option<String>,
    /// Pairs of runs (outside, then inside). Default 3.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// User id to drop to when started as root. Default 65534.
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `drover sandbox gpu-check`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let inventory = match Inventory::detect(Roots::from_env()) {
        Ok(inventory) if inventory.gpus.is_empty() => {
            return no_gpu(args.json, "nvidia-smi lists no GPU");
        }
        Ok(inventory) => inventory,
        Err(error) => return no_gpu(args.json, &error.to_string()),
    };
    let gpu = pick(&inventory, args.gpu.as_deref())?;
    let profile = match &args.profile {
        Some(path) => profile::load_file(path)?,
        None => profile::load_builtin("gpu")?,
    };
    let (mut policy, _) = profile::to_policy(&profile);
    let selection = GpuSelection::Listed(vec![GpuRef::Index(gpu.index)]);
    DeviceSet::for_driver(Some(&selection), &inventory, &policy)
        .context("the inside run's GPU")?
        .apply(&mut policy);

    drover_sandbox::privilege::check_requested_uid(args.uid, &LinuxSys)
        .context("privilege drop failed")?;
    let uid = args.uid.unwrap_or(65534);
    let mut exe = std::env::current_exe().context("finding the drover binary")?;
    let mut _exe_copy = None;
    if nix::unistd::geteuid().is_root() && !super::serve::reachable_by(&exe, uid, uid, 0o5) {
        let copy = super::serve::copy_binary_for(&exe, uid, uid)?;
        exe = copy.path().join("drover");
        _exe_copy = Some(copy);
    }
    policy.read.push(exe.clone());
    let dropped = drop_privileges(&DropConfig { uid, gid: uid }, &LinuxSys)
        .context("privilege drop failed")?;

    let mut outside = Vec::new();
    let mut inside = Vec::new();
    for _ in 0..args.rounds {
        let out = run_outside(&exe, &gpu)?;
        if out.get("no_gpu").and_then(Value::as_bool) == Some(true) {
            let reason = out.get("error").and_then(Value::as_str).unwrap_or("no GPU");
            return no_gpu(args.json, reason);
        }
        outside.push(out);
        let scratch = tempfile::Builder::new()
            .prefix("drover-gpu-check-")
            .tempdir()
            .context("creating a work directory")?;
        inside.push(run_inside(&policy, &exe, scratch.path(), &dropped)?);
    }
    let ok = outside.iter().chain(&inside).all(|r| r.get("ok") == Some(&Value::Bool(true)));
    let (outside, inside) = (summary(&outside), summary(&inside));
    let ratio = |key: &str, time: bool| {
        let (o, i) = (outside.get(key)?.as_f64()?, inside.get(key)?.as_f64()?);
        let r = if time { o / i } else { i / o };
        r.is_finite().then(|| (r * 1000.0).round() / 1000.0)
    };
    let report = json!({
        "gpu": true,
        "device": {"index": gpu.index, "uuid": gpu.uuid.as_str(), "name": gpu.name, "pci_bus_id": gpu.pci_bus_id},
        "rounds": args.rounds,
        "outside": outside,
        "inside": inside,
        "ratios": {
            "init": ratio("init_s", true),
            "h2d": ratio("h2d_gbps", false),
            "d2h": ratio("d2h_gbps", false),
            "kernel": ratio("kernel_gbps", false),
        },
        "ok": ok,
    });
    print_report(&report, args.json);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn pick(inventory: &Inventory, wanted: Option<&str>) -> anyhow::Result<Gpu> {
    let Some(wanted) = wanted else {
        return inventory.gpus.first().cloned().context("no GPU");
    };
    inventory
        .gpus
        .iter()
        .find(|gpu| gpu.index.to_string() == wanted || gpu.uuid.as_str() == wanted)
        .cloned()
        .with_context(|| {
            let found: Vec<String> = inventory.gpus.iter().map(|g| g.index.to_string()).collect();
            format!("--gpu: GPU {wanted} is not on this machine (found: {})", found.join(", "))
        })
}

#[allow(clippy::print_stdout)]
fn no_gpu(json: bool, reason: &str) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", json!({"gpu": false, "reason": reason}));
    } else {
        println!("no GPU: {reason}");
    }
    Ok(ExitCode::from(crate::EXIT_TROUBLE))
}

/// The workload as a plain child process.
fn run_outside(exe: &Path, gpu: &Gpu) -> anyhow::Result<Value> {
    let output = std::process::Command::new(exe)
        .args(["sandbox", "gpu-workload"])
        .env("CUDA_VISIBLE_DEVICES", gpu.uuid.as_str())
        .env("NVIDIA_VISIBLE_DEVICES", gpu.uuid.as_str())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the workload outside the sandbox")?;
    Ok(parse_line(&output.stdout, &format!("exit status {}", output.status)))
}

/// The workload in the sandbox of `policy`.
fn run_inside(
    policy: &drover_sandbox::Policy,
    exe: &Path,
    work_dir: &Path,
    dropped: &drover_sandbox::Dropped,
) -> anyhow::Result<Value> {
    let (read_end, write_end) = nix::unistd::pipe().context("pipe")?;
    let mut command = Command::new(exe.as_os_str(), work_dir)
        .args([OsString::from("sandbox"), OsString::from("gpu-workload")]);
    command.stdio[1] = Some(write_end);
    let prepared = prepare(policy, command, dropped).context("preparing the sandbox")?;
    let mut sandboxed = prepared.spawn().context("starting the workload in the sandbox")?;
    let mut stdout = Vec::new();
    std::fs::File::from(read_end)
        .read_to_end(&mut stdout)
        .context("reading the workload's output")?;
    let death = sandboxed.wait(None).context("waiting for the workload")?;
    Ok(parse_line(&stdout, &death.cause.to_string()))
}

/// The workload's JSON line, or a failure that says how it ended.
fn parse_line(stdout: &[u8], ended: &str) -> Value {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok().filter(Value::is_object))
        .unwrap_or_else(
            || json!({"ok": false, "stage": "start", "error": format!("no report ({ended})")}),
        )
}

/// One side: the medians of its successful runs, or its first failure.
fn summary(runs: &[Value]) -> Value {
    if let Some(failed) = runs.iter().find(|r| r.get("ok") != Some(&Value::Bool(true))) {
        return failed.clone();
    }
    let median = |key: &str| {
        let mut values: Vec<f64> = runs.iter().filter_map(|r| r.get(key)?.as_f64()).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    };
    json!({
        "ok": true,
        "name": runs.first().and_then(|r| r.get("name")).cloned().unwrap_or(Value::Null),
        "init_s": median("init_s"),
        "h2d_gbps": median("h2d_gbps"),
        "d2h_gbps": median("d2h_gbps"),
        "kernel_gbps": median("kernel_gbps"),
    })
}

#[allow(clippy::print_stdout)]
fn print_report(report: &Value, json: bool) {
    if json {
        println!("{report}");
        return;
    }
    let device = &report["device"];
    println!(
        "GPU {} {} {} ({} rounds, medians)",
        device["index"],
        device["name"].as_str().unwrap_or("?"),
        device["uuid"].as_str().unwrap_or("?"),
        report["rounds"]
    );
    let cell = |side: &Value, key: &str| match side.get(key).and_then(Value::as_f64) {
        Some(v) => format!("{v:>10.3}"),
        None => format!("{:>10}", "-"),
    };
    println!("{:<14}{:>10}{:>10}{:>8}", "", "outside", "inside", "ratio");
    for (label, key, ratio) in [
        ("init (s)", "init_s", "init"),
        ("h2d (GB/s)", "h2d_gbps", "h2d"),
        ("d2h (GB/s)", "d2h_gbps", "d2h"),
        ("kernel (GB/s)", "kernel_gbps", "kernel"),
    ] {
        let r = report["ratios"][ratio].as_f64().map_or("-".to_owned(), |r| format!("{r:.3}"));
        println!(
            "{label:<14}{}{}{r:>8}",
            cell(&report["outside"], key),
            cell(&report["inside"], key)
        );
    }
    for side in ["outside", "inside"] {
        if report[side]["ok"] != Value::Bool(true) {
            println!(
                "{side} FAILED at {}: {}",
                report[side]["stage"].as_str().unwrap_or("?"),
                report[side]["error"].as_str().unwrap_or("?")
            );
        }
    }
    println!("{}", if report["ok"] == Value::Bool(true) { "ok" } else { "FAILED" });
}

/// Runs `drover sandbox gpu-workload`.
#[allow(clippy::print_stdout)]
pub fn workload() -> anyhow::Result<ExitCode> {
    match drover_gpu::workload::run(&WorkloadConfig::default()) {
        Ok(report) => {
            let round = |v: f64| (v * 1000.0).round() / 1000.0;
            println!(
                "{}",
                json!({
                    "ok": true,
                    "devices": report.devices,
                    "name": report.name,
                    "init_s": round(report.init_s),
                    "h2d_gbps": round(report.h2d_gbps),
                    "d2h_gbps": round(report.d2h_gbps),
                    "kernel_gbps": round(report.kernel_gbps),
                    "total_s": round(report.total_s),
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            let no_gpu = matches!(error, drover_gpu::WorkloadError::NoGpu { .. });
            println!(
                "{}",
                json!({"ok": false, "no_gpu": no_gpu, "stage": error.stage(), "error": error.to_string()})
            );
            Ok(if no_gpu { ExitCode::from(crate::EXIT_TROUBLE) } else { ExitCode::FAILURE })
        }
    }
}
