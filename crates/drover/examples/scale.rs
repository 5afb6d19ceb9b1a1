//! Memory and scale of the supervisor (`benches/scale.sh` runs it): the resident set of a
//! supervisor process idle, with N connected sandboxed drivers, and under M concurrent jobs
//! streaming progress; and the CPU it spends per 1000 frames per second.
//!
//! ```text
//! scale DROVER_BINARY DRIVERS JOBS SECONDS
//! ```
//!
//! `DROVER_BINARY` is a drover build readable by the dropped uid; the drivers are its bundled
//! `example` driver (`drover driver example`), under the default sandbox profile, spawned
//! through the same `drover-supervisor` library `drover serve` uses. Each job is the driver's
//! `sleep` action for SECONDS: ten progress updates a second and a log line a second. Run as
//! root (Phase A then drops to 65534) or with an empty capability bounding set.
//!
//! Prints one JSON object on stdout: RSS figures in KiB (the first driver's one-time cost apart
//! from the marginal cost of each further one) (from `/proc/self/status`), the frames
//! the supervisor delivered, and its CPU time (user + system, from `/proc/self/stat`) over the
//! streaming window.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    missing_docs
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drover_proto::api::JobEventKind;
use drover_proto::config::DriverConfig;
use drover_proto::messages::{AcquireGpu, ErrorCode, Lease, LeaseLog, WireError};
use drover_proto::{JobPhase, LeaseId};
use drover_sandbox::{DropConfig, LinuxSys, drop_privileges};
use drover_supervisor::{
    BrokerFuture, Dispatch, DriverSpec, GpuBroker, JobEvent, LeaseOwner, Options, Supervisor,
};

/// The bench's jobs rent nothing; any GPU request is refused.
struct NoGpus;

fn refused<'a, T: Send + 'a>() -> BrokerFuture<'a, T> {
    Box::pin(async {
        Err(WireError {
            code: ErrorCode::Forbidden,
            message: "this benchmark rents no GPUs".into(),
            violations: Vec::new(),
            details: None,
        })
    })
}

impl GpuBroker for NoGpus {
    fn acquire<'a>(&'a self, _: &'a LeaseOwner, _: f64, _: AcquireGpu) -> BrokerFuture<'a, Lease> {
        refused()
    }
    fn status<'a>(&'a self, _: &'a LeaseOwner, _: LeaseId) -> BrokerFuture<'a, Lease> {
        refused()
    }
    fn logs<'a>(&'a self, _: &'a LeaseOwner, _: LeaseId, _: u32) -> BrokerFuture<'a, LeaseLog> {
        refused()
    }
    fn release<'a>(&'a self, _: &'a LeaseOwner, _: LeaseId) -> BrokerFuture<'a, Lease> {
        refused()
    }
    fn refused<'a>(
        &'a self,
        _: &'a LeaseOwner,
        _: &'a WireError,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// User + system CPU time of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields[11].parse().unwrap(), fields[12].parse().unwrap());
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as f64;
    (utime + stime) as f64 / ticks
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(args.len(), 5, "usage: scale DROVER_BINARY DRIVERS JOBS SECONDS");
    let drover = PathBuf::from(&args[1]);
    let drivers: usize = args[2].parse().unwrap();
    let jobs: usize = args[3].parse().unwrap();
    let seconds: f64 = args[4].parse().unwrap();

    // Phase A, before any thread exists, as `drover serve` does.
    let target = if nix::unistd::geteuid().is_root() {
        DropConfig::default()
    } else {
        DropConfig { uid: nix::unistd::getuid().as_raw(), gid: nix::unistd::getgid().as_raw() }
    };
    let dropped = drop_privileges(&target, &LinuxSys).expect("phase A");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let broker: Arc<dyn GpuBroker> = Arc::new(NoGpus);
        let profile = drover::profile::load_builtin("default").unwrap();
        let (mut policy, _) = drover::profile::to_policy(&profile);
        policy.read.push(drover.clone());

        // Idle: the runtime and a supervisor with nothing to run.
        let idle =
            Supervisor::start(Vec::new(), Arc::clone(&broker), Options::new(dropped.clone()))
                .await
                .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss_idle = rss_kib();
        // The process-wide frame validators (every message schema, compiled once).
        let _ = drover_transport::FrameValidator::shared();
        let rss_validators = rss_kib();

        // One driver first: what the first session costs once (the shared frame validators,
        // the sandbox's compiled seccomp programs), so the per-driver figure is the marginal
        // cost of one more connected driver.
        let driver_config = |name: &str, pool: usize| -> DriverConfig {
            serde_json::from_value(serde_json::json!({
                "name": name,
                "command": [drover.to_str().unwrap(), "driver", "example"],
                "pool_size": pool,
            }))
            .unwrap()
        };
        let warm = Supervisor::start(
            vec![DriverSpec::new(driver_config("warm-up", 1), policy.clone())],
            Arc::clone(&broker),
            Options::new(dropped.clone()),
        )
        .await
        .unwrap();
        while warm.drivers().iter().map(|d| usize::from(d.ready_sessions)).sum::<usize>() < 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_warm = rss_kib();

        // N drivers, in pools of at most 64 (the configuration's bound).
        let mut specs = Vec::new();
        let mut names = Vec::new();
        let mut left = drivers;
        while left > 0 {
            let pool = left.min(64);
            let name = format!("bench-{}", names.len());
            specs.push(DriverSpec::new(driver_config(&name, pool), policy.clone()));
            names.push(name);
            left -= pool;
        }
        let spawn_started = Instant::now();
        let supervisor =
            Supervisor::start(specs, Arc::clone(&broker), Options::new(dropped)).await.unwrap();
        loop {
            let ready: usize =
                supervisor.drivers().iter().map(|d| usize::from(d.ready_sessions)).sum();
            if ready == drivers {
                break;
            }
            assert!(spawn_started.elapsed() < Duration::from_secs(120), "{ready} of {drivers}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ready_after = spawn_started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_drivers = rss_kib();

        // Two batches of M jobs: the first gives the load figures, the second shows whether
        // memory keeps growing from one batch to the next.
        let first = batch(&supervisor, &names, jobs, seconds, "a").await;
        let second = batch(&supervisor, &names, jobs, seconds, "b").await;
        let (rss_peak, window_s, cpu_s, window_frames) =
            (first.rss_peak.max(second.rss_peak), first.window_s, first.cpu_s, first.frames);
        let succeeded = first.succeeded + second.succeeded;
        let rss_after = first.rss_after;
        supervisor.shutdown(Duration::from_secs(5)).await;
        warm.shutdown(Duration::from_secs(1)).await;
        idle.shutdown(Duration::from_secs(1)).await;

        let frames_per_s = window_frames as f64 / window_s;
        let cpu_per_1000_fps = if frames_per_s > 0.0 {
            (cpu_s / window_s) / (frames_per_s / 1000.0)
        } else {
            f64::NAN
        };
        let result = serde_json::json!({
            "drivers": drivers,
            "jobs": jobs,
            "jobs_succeeded": succeeded,
            "batches": 2,
            "drivers_ready_s": ready_after.as_secs_f64(),
            "rss_idle_kib": rss_idle,
            "rss_drivers_kib": rss_drivers,
            "rss_validators_kib": rss_validators.saturating_sub(rss_idle),
            "rss_first_driver_kib": rss_warm.saturating_sub(rss_validators),
            "rss_per_driver_kib": (rss_drivers.saturating_sub(rss_warm)) as f64 / drivers as f64,
            "rss_load_peak_kib": rss_peak,
            "rss_after_jobs_kib": rss_after,
            "rss_after_second_batch_kib": second.rss_after,
            "window_s": window_s,
            "frames": window_frames,
            "frames_per_s": frames_per_s,
            "cpu_s": cpu_s,
            "cpu_core_fraction_per_1000_fps": cpu_per_1000_fps,
        });
        println!("{result}");
    });
}

/// What one batch of jobs measured.
struct Batch {
    rss_peak: u64,
    rss_after: u64,
    window_s: f64,
    cpu_s: f64,
    frames: u64,
    succeeded: usize,
}

/// Runs `jobs` `sleep` jobs spread over the drivers `names`, each streaming progress and logs,
/// and measures the supervisor while they stream and after they end.
async fn batch(
    supervisor: &Supervisor,
    names: &[String],
    jobs: usize,
    seconds: f64,
    tag: &str,
) -> Batch {
    let frames = Arc::new(AtomicU64::new(0));
    let mut runs = Vec::new();
    for j in 0..jobs {
        let name = &names[j % names.len()];
        let mut params = serde_json::Map::new();
        params.insert("seconds".into(), serde_json::json!(seconds));
        let run = supervisor
            .dispatch(Dispatch {
                job_id: format!("scale-{tag}-{j}").parse().unwrap(),
                driver: name.parse().unwrap(),
                action: "sleep".parse().unwrap(),
                params,
                gpu: None,
                max_runtime: Duration::from_secs_f64(seconds + 60.0),
                budget_usd: 0.0,
            })
            .await
            .unwrap();
        let frames = Arc::clone(&frames);
        runs.push(tokio::spawn(async move {
            let mut run = run;
            let mut last = None;
            while let Some(event) = run.events.recv().await {
                frames.fetch_add(1, Ordering::Relaxed);
                if let JobEvent::Job(JobEventKind::JobState(state)) = event {
                    last = Some(state.state);
                }
            }
            last
        }));
    }
    let stream_started = Instant::now();
    let cpu_started = cpu_seconds();
    let frames_started = frames.load(Ordering::Relaxed);
    let mut rss_peak = rss_kib();
    // Measure while every job streams: the first 80% of the jobs' run time.
    let window = Duration::from_secs_f64(seconds * 0.8);
    while stream_started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_peak = rss_peak.max(rss_kib());
    }
    let window_s = stream_started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu_started;
    let window_frames = frames.load(Ordering::Relaxed) - frames_started;
    let mut succeeded = 0;
    for run in runs {
        if run.await.unwrap() == Some(JobPhase::Succeeded) {
            succeeded += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Batch { rss_peak, rss_after: rss_kib(), window_s, cpu_s, frames: window_frames, succeeded }
}
