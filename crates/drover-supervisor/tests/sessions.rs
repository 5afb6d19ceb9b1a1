//! The supervisor with real, sandboxed driver processes: a well-behaved Python driver and one
//! for each way a driver can misbehave (`tests/drivers/scripted.py`), all in one supervisor,
//! which must detect each with the right cause and keep serving the good ones.
//!
//! Phase A drops this whole test process to uid 65534 and must run while it has one thread,
//! so this test has no harness (`harness = false`): `main` drops, then runs the cases one
//! after another and prints `N passed, N failed`. It needs root (CI) or an empty capability
//! bounding set, and says why when it cannot run. The drivers run under the default profile
//! (`sandbox/default.toml` and `sandbox/seccomp/base.toml`), with the script's directory
//! added to the readable paths.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_proto::api::{DriverHealth, JobEventKind};
use drover_proto::config::DriverConfig;
use drover_proto::{
    AcquireGpu, ErrorCode, GpuRequest, JobPhase, Lease, LeaseId, LeaseLog, LeasePhase, WireError,
};
use drover_sandbox::{Cause, DropConfig, LinuxSys, Policy, SeccompPolicy, drop_privileges};
use drover_supervisor::{
    BrokerFuture, DeathReport, Dispatch, DispatchError, DriverSpec, GpuBroker, JobEvent,
    LeaseOwner, Options, Supervisor,
};
use serde_json::{Value, json};

const SCRIPT: &str = include_str!("drivers/scripted.py");

// ---------------------------------------------------------------------------------------------
// The default profile, read from the repository's sandbox/ files.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn strings(value: &toml::Value, key: &str) -> Vec<String> {
    value
        .get(key)
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// `sandbox/default.toml` with its include, as the `drover` binary would load it (the loader
/// lives in the binary; this reads the same fields), plus `extra_read`.
fn default_policy(extra_read: &Path) -> Policy {
    let read = |file: &str| -> toml::Value {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        toml::Value::Table(toml::from_str::<toml::Table>(&text).unwrap())
    };
    let (profile, base) = (read("sandbox/default.toml"), read("sandbox/seccomp/base.toml"));
    let seccomp = base.get("seccomp").unwrap();
    let mut policy = Policy {
        env: profile
            .get("env")
            .and_then(toml::Value::as_table)
            .unwrap()
            .iter()
            .map(|(k, v)| (k.into(), v.as_str().unwrap().into()))
            .collect(),
        read: strings(profile.get("filesystem").unwrap(), "read")
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        write: strings(profile.get("filesystem").unwrap(), "write")
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        seccomp: SeccompPolicy { allow: strings(seccomp, "allow"), ..SeccompPolicy::default() },
        ..Policy::default()
    };
    for (name, errno) in seccomp.get("errno").and_then(toml::Value::as_table).unwrap() {
        assert_eq!(errno.as_str(), Some("ENOSYS"), "only ENOSYS is mapped here");
        policy.seccomp.errno.insert(name.clone(), 38);
    }
    policy.read.push(extra_read.to_path_buf());
    policy
}

// ---------------------------------------------------------------------------------------------
// A test double of the provisioner: leases in memory, owners checked, calls recorded.

#[derive(Default)]
struct DoubleBroker {
    owners: Mutex<HashMap<LeaseId, LeaseOwner>>,
    calls: Mutex<Vec<String>>,
    next: AtomicU64,
}

impl DoubleBroker {
    fn lease(&self, lease_id: LeaseId, owner: &LeaseOwner, state: LeasePhase) -> Lease {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        Lease {
            lease_id,
            job_id: owner.job_id.clone(),
            state,
            deadline_unix_ms: now + 600_000,
            gpu_model: Some("RTX 4090".into()),
            gpu_count: Some(1),
            usd_per_hour: Some(0.4),
            estimate: None,
            cost_usd: None,
            status_message: None,
        }
    }

    fn owned(&self, owner: &LeaseOwner, lease_id: &LeaseId) -> Result<(), WireError> {
        match self.owners.lock().get(lease_id) {
            Some(o) if o.driver == owner.driver => Ok(()),
            _ => Err(drover_supervisor::broker::unknown_lease(lease_id)),
        }
    }

    fn record(&self, call: String) {
        self.calls.lock().push(call);
    }
}

impl GpuBroker for DoubleBroker {
    fn acquire<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        budget_usd: f64,
        req: AcquireGpu,
    ) -> BrokerFuture<'a, Lease> {
        Box::pin(async move {
            self.record(format!("acquire {} {} {budget_usd}", owner.driver, owner.job_id));
            assert_eq!(req.job_id, owner.job_id);
            if req.image == "example/slow:1" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
            let lease_id: LeaseId = format!("lease-{n}").parse().unwrap();
            self.owners.lock().insert(lease_id.clone(), owner.clone());
            Ok(self.lease(lease_id, owner, LeasePhase::Running))
        })
    }

    fn status<'a>(&'a self, owner: &'a LeaseOwner, lease_id: LeaseId) -> BrokerFuture<'a, Lease> {
        Box::pin(async move {
            self.record(format!("status {} {lease_id}", owner.driver));
            self.owned(owner, &lease_id)?;
            Ok(self.lease(lease_id, owner, LeasePhase::Running))
        })
    }

    fn logs<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        lease_id: LeaseId,
        _tail: u32,
    ) -> BrokerFuture<'a, LeaseLog> {
        Box::pin(async move {
            self.owned(owner, &lease_id)?;
            Ok(LeaseLog { lease_id, lines: vec!["booted".into()], truncated: false })
        })
    }

    fn release<'a>(&'a self, owner: &'a LeaseOwner, lease_id: LeaseId) -> BrokerFuture<'a, Lease> {
        Box::pin(async move {
            self.record(format!("release {} {lease_id}", owner.driver));
            self.owned(owner, &lease_id)?;
            Ok(self.lease(lease_id, owner, LeasePhase::Released))
        })
    }

    fn refused<'a>(
        &'a self,
        owner: &'a LeaseOwner,
        error: &'a WireError,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let field = error.details.as_ref().and_then(|d| d.get("field")).cloned();
            self.record(format!(
                "refused {} {} {} {field:?}",
                owner.driver, owner.job_id, error.code
            ));
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up

struct World {
    supervisor: Supervisor,
    broker: Arc<DoubleBroker>,
}

fn config(name: &str, mode: &str, script: &Path) -> DriverConfig {
    serde_json::from_value(json!({
        "name": name,
        "command": ["/usr/bin/python3", script.to_str().unwrap(), mode, name],
        "hello_timeout_ms": 20000,
        "heartbeat_ms": 1000,
        "heartbeat_misses": 5,
        "shutdown_grace_ms": 1000,
        "max_restarts": 5,
    }))
    .unwrap()
}

async fn start(dropped: drover_sandbox::Dropped, dir: &Path, sdk: &[(String, String)]) -> World {
    let script = dir.join("scripted.py");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::create_dir_all(dir.join("drover_driver")).unwrap();
    for (name, text) in sdk {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let example: DriverConfig = serde_json::from_value(json!({
        "name": "python-example",
        "command": ["/usr/bin/python3", dir.join("example_driver.py").to_str().unwrap()],
    }))
    .unwrap();
    let policy = default_policy(dir);
    let spec = |config: DriverConfig| DriverSpec::new(config, policy.clone());
    let mut good = config("good", "good", &script);
    good.pool_size = 2;
    let mut silent = config("silent", "silent", &script);
    silent.hello_timeout_ms = 1000;
    let mut stdio = config("stdio", "good", &script);
    stdio.transport = drover_proto::config::TransportKind::Stdio;
    let mut crash_loop = config("crash-loop", "crash-at-start", &script);
    crash_loop.max_restarts = 2;
    let mut freezer = config("freezer", "good", &script);
    (freezer.heartbeat_ms, freezer.heartbeat_misses) = (200, 3);
    let mut slowpoke = config("slowpoke", "slow-pong", &script);
    (slowpoke.heartbeat_ms, slowpoke.heartbeat_misses) = (200, 8);
    let mut hang = config("hang", "hang", &script);
    (hang.heartbeat_ms, hang.heartbeat_misses) = (200, 3);
    let mut drivers = vec![
        spec(good),
        spec(config("crashy", "good", &script)),
        spec(config("stubborn", "good", &script)),
        spec(config("flooder", "good", &script)),
        spec(config("thief", "good", &script)),
        spec(config("ignore-shutdown", "ignore-shutdown", &script)),
        spec(config("term-only", "term-only", &script)),
        spec(config("stdout-garbage", "stdout-garbage", &script)),
        spec(config("picky", "some-bad-frames", &script)),
        spec(config("sneaky", "good", &script)),
        spec(stdio),
        spec(example),
        spec(freezer),
        spec(slowpoke),
    ];
    for mut bad in [
        silent,
        config("wrong-version", "wrong-version", &script),
        config("bad-schema", "bad-schema", &script),
        config("garbage-frames", "garbage-frames", &script),
        config("unframed", "unframed", &script),
        hang,
    ] {
        bad.max_restarts = 0;
        drivers.push(spec(bad));
    }
    drivers.push(spec(crash_loop));
    let mut missing = config("missing", "good", &script);
    (missing.command, missing.max_restarts) = (vec!["/nonexistent/driver".into()], 0);
    drivers.push(spec(missing));
    let mut options = Options::new(dropped);
    options.restart_backoff = Duration::from_millis(100);
    options.cancel_grace = Duration::from_secs(1);
    options.stop_step = Duration::from_secs(1);
    options.job_log_bytes = 64 * 1024;
    options.read_bytes_per_second = 4 << 20;
    options.ready_timeout = Duration::from_secs(20);
    options.scratch_dir = dir.to_path_buf();
    let broker = Arc::new(DoubleBroker::default());
    let supervisor = Supervisor::start(drivers, broker.clone(), options).await.unwrap();
    World { supervisor, broker }
}

fn job(driver: &str, action: &str, params: Value) -> Dispatch {
    static N: AtomicU64 = AtomicU64::new(0);
    Dispatch {
        job_id: format!("job-{}", N.fetch_add(1, Ordering::Relaxed)).parse().unwrap(),
        driver: driver.parse().unwrap(),
        action: action.parse().unwrap(),
        params: params.as_object().unwrap().clone(),
        gpu: None,
        max_runtime: Duration::from_secs(60),
        budget_usd: 5.0,
    }
}

/// Every event until the stream closes (bounded in time).
async fn all_events(run: &mut drover_supervisor::JobRun) -> Vec<JobEvent> {
    let mut events = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(event)) = tokio::time::timeout_at(until, run.events.recv()).await {
        events.push(event);
    }
    assert!(tokio::time::Instant::now() < until, "stream did not end: {events:?}");
    events
}

fn states(events: &[JobEvent]) -> Vec<JobPhase> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Job(JobEventKind::JobState(s)) => Some(s.state),
            _ => None,
        })
        .collect()
}

fn output(events: &[JobEvent]) -> Value {
    events
        .iter()
        .find_map(|e| match e {
            JobEvent::Job(JobEventKind::JobResult(r)) => r.output.clone(),
            _ => None,
        })
        .unwrap_or(Value::Null)
}

async fn wait_for_state(run: &mut drover_supervisor::JobRun, phase: JobPhase) -> Vec<JobEvent> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), run.events.recv())
            .await
            .expect("timed out")
            .expect("stream ended");
        let hit = matches!(&event, JobEvent::Job(JobEventKind::JobState(s)) if s.state == phase);
        seen.push(event);
        if hit {
            return seen;
        }
    }
}

/// The driver's status once `check` holds (bounded in time).
async fn eventually(
    world: &World,
    name: &str,
    check: impl Fn(&drover_supervisor::DriverStatus) -> bool,
) -> drover_supervisor::DriverStatus {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status =
            world.supervisor.drivers().into_iter().find(|d| d.name.as_str() == name).unwrap();
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < until, "{name}: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The driver's status once it has a recorded death.
async fn death_of(world: &World, name: &str) -> (drover_supervisor::DriverStatus, DeathReport) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status =
            world.supervisor.drivers().into_iter().find(|d| d.name.as_str() == name).unwrap();
        if let Some(death) = status.last_death.clone() {
            return (status, death);
        }
        assert!(Instant::now() < until, "{name} never died: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn a_good_job_runs_with_ordered_states(world: &World) {
    let mut run =
        world.supervisor.dispatch(job("good", "echo", json!({"text": "hi"}))).await.unwrap();
    let events = all_events(&mut run).await;
    assert_eq!(states(&events), [JobPhase::Starting, JobPhase::Running, JobPhase::Succeeded]);
    assert_eq!(output(&events), json!({"echo": "hi"}));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, JobEvent::Job(JobEventKind::JobLog(l)) if l.lines == ["echo hi"]))
    );
    assert!(
        matches!(events.last(), Some(JobEvent::Job(JobEventKind::JobState(s))) if s.state.is_terminal())
    );
    // No deadline worth the name is no problem either.
    let mut endless = job("good", "echo", json!({"text": "forever"}));
    endless.max_runtime = Duration::MAX;
    let mut run = world.supervisor.dispatch(endless).await.unwrap();
    assert_eq!(output(&all_events(&mut run).await), json!({"echo": "forever"}));
    // Round trips of a small job through supervisor, transport and a Python driver.
    let mut took = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let mut run =
            world.supervisor.dispatch(job("good", "echo", json!({"text": "t"}))).await.unwrap();
        assert_eq!(states(&all_events(&mut run).await).last(), Some(&JobPhase::Succeeded));
        took.push(started.elapsed());
    }
    took.sort();
    println!(
        "  echo job, dispatch to terminal state: p50 {} us, max {} us (20 jobs)",
        took[10].as_micros(),
        took[19].as_micros()
    );
    // Both pooled processes come up (the first job may have run on the first one alone).
    let good = eventually(world, "good", |d| d.ready_sessions == 2).await;
    assert_eq!(good.health, DriverHealth::Ready);
    assert_eq!(good.version.as_deref(), Some("0.1.0"));
    assert!(good.actions.contains_key(&"echo".parse().unwrap()));
    assert_eq!(
        world.supervisor.params_schema(&good.name, &"echo".parse().unwrap()).unwrap()["required"],
        json!(["text"])
    );
}

async fn params_are_checked_against_the_declared_schema(world: &World) {
    let err = world
        .supervisor
        .dispatch(job("good", "echo", json!({"text": 5, "extra": true})))
        .await
        .unwrap_err();
    let DispatchError::InvalidParams { violations, .. } = err else { panic!("{err:?}") };
    let paths: Vec<&str> = violations.iter().map(|v| v.instance_path.as_str()).collect();
    assert!(paths.contains(&"/text"), "{violations:?}");
    assert!(paths.contains(&""), "additionalProperties at the root: {violations:?}");
    let err = world.supervisor.dispatch(job("good", "nope", json!({}))).await.unwrap_err();
    assert!(matches!(err, DispatchError::UnknownAction { .. }), "{err:?}");
    let err = world.supervisor.dispatch(job("nobody", "echo", json!({}))).await.unwrap_err();
    assert!(matches!(err, DispatchError::UnknownDriver { .. }), "{err:?}");
}

async fn cancel_is_acknowledged_and_ends_the_job(world: &World) {
    let dispatch = job("good", "sleep", json!({"seconds": 30}));
    let job_id = dispatch.job_id.clone();
    let mut run = world.supervisor.dispatch(dispatch).await.unwrap();
    wait_for_state(&mut run, JobPhase::Running).await;
    let asked = Instant::now();
    world.supervisor.cancel(&job_id, "test").await.unwrap();
    let events = all_events(&mut run).await;
    assert_eq!(states(&events), [JobPhase::Cancelled]);
    assert!(asked.elapsed() < Duration::from_secs(5));
    let err = world.supervisor.cancel(&job_id, "again").await.unwrap_err();
    assert!(err.to_string().contains("no running job"));
}

async fn the_deadline_cancels_a_job(world: &World) {
    let mut dispatch = job("good", "sleep", json!({"seconds": 30}));
    dispatch.max_runtime = Duration::from_secs(1);
    let started = Instant::now();
    let mut run = world.supervisor.dispatch(dispatch).await.unwrap();
    let events = all_events(&mut run).await;
    assert_eq!(states(&events), [JobPhase::Running, JobPhase::Cancelled]);
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn lease_requests_reach_the_broker_and_stay_with_their_driver(world: &World) {
    let mut dispatch = job("good", "gpu", json!({}));
    dispatch.gpu = Some(GpuRequest {
        count: 1,
        models: vec![],
        min_gpu_ram_gib: None,
        max_usd_per_hour: None,
        min_reliability: None,
        pricing: Default::default(),
    });
    let job_id = dispatch.job_id.clone();
    let mut run = world.supervisor.dispatch(dispatch).await.unwrap();
    let out = output(&all_events(&mut run).await);
    assert_eq!(out["acquire"]["type"], "lease", "{out}");
    assert_eq!(out["acquire"]["job_id"], job_id.as_str());
    assert_eq!(out["status"]["state"], "running", "{out}");
    assert_eq!(out["release"]["state"], "released", "{out}");
    let lease_id = out["acquire"]["lease_id"].as_str().unwrap().to_owned();
    let calls = world.broker.calls.lock().clone();
    assert!(calls.contains(&format!("acquire good {job_id} 5")), "{calls:?}");
    assert!(calls.contains(&format!("release good {lease_id}")), "{calls:?}");

    // Another driver cannot release it; the request never reaches the broker.
    let mut run = world
        .supervisor
        .dispatch(job("thief", "steal", json!({"lease_id": lease_id})))
        .await
        .unwrap();
    let out = output(&all_events(&mut run).await);
    assert_eq!(out["type"], "error", "{out}");
    assert_eq!(out["code"], ErrorCode::UnknownLease.as_str());
    assert!(!world.broker.calls.lock().iter().any(|c| c.starts_with("release thief")));

    // A job without a GPU grant may not rent.
    let mut run = world.supervisor.dispatch(job("good", "gpu", json!({}))).await.unwrap();
    let out = output(&all_events(&mut run).await);
    assert_eq!(out["acquire"]["code"], "forbidden", "{out}");
}

fn gpu_grant(models: &[&str], max_usd_per_hour: Option<f64>) -> GpuRequest {
    GpuRequest {
        count: 1,
        models: models.iter().map(|m| m.to_string()).collect(),
        min_gpu_ram_gib: None,
        max_usd_per_hour,
        min_reliability: None,
        pricing: Default::default(),
    }
}

/// Issue 15: a job asking for one RTX 3060 at $0.20/h ran a driver that rented an H100 SXM.
async fn a_driver_asking_outside_its_jobs_gpu_request_is_refused_and_audited(world: &World) {
    let cases = [
        (json!({"count": 1, "models": ["H100 SXM"]}), "gpu.models"),
        (json!({"count": 1, "max_usd_per_hour": 2.5}), "gpu.max_usd_per_hour"),
        (json!({"count": 2}), "gpu.count"),
    ];
    for (asked, field) in cases {
        let mut dispatch = job("good", "gpu", json!({"gpu": asked}));
        dispatch.gpu = Some(gpu_grant(&["RTX 3060"], Some(0.2)));
        let job_id = dispatch.job_id.clone();
        let mut run = world.supervisor.dispatch(dispatch).await.unwrap();
        let out = output(&all_events(&mut run).await);
        assert_eq!(out["acquire"]["code"], "forbidden", "{out}");
        assert_eq!(out["acquire"]["details"]["field"], field, "{out}");
        let calls = world.broker.calls.lock().clone();
        assert!(!calls.contains(&format!("acquire good {job_id} 5")), "{calls:?}");
        eventually(world, "good", |_| {
            world
                .broker
                .calls
                .lock()
                .iter()
                .any(|c| c == &format!("refused good {job_id} forbidden Some(String(\"{field}\"))"))
        })
        .await;
    }
    // Within the grant, with the fields left out taken from the job: rented.
    let mut dispatch = job("good", "gpu", json!({}));
    dispatch.gpu = Some(gpu_grant(&["RTX 3060"], Some(0.2)));
    let mut run = world.supervisor.dispatch(dispatch).await.unwrap();
    let out = output(&all_events(&mut run).await);
    assert_eq!(out["acquire"]["type"], "lease", "{out}");
}

/// Issue 15: a driver could read and release a lease that belongs to another of its jobs.
/// Leases are scoped to (session, job): once the job that rented it is not running on the
/// asking session, the lease is unknown to the driver.
async fn a_lease_of_another_job_of_the_same_driver_is_refused(world: &World) {
    let mut dispatch = job("good", "gpu_keep", json!({}));
    dispatch.gpu = Some(gpu_grant(&[], None));
    let mut run = world.supervisor.dispatch(dispatch).await.unwrap();
    let out = output(&all_events(&mut run).await);
    let lease_id = out["acquire"]["lease_id"].as_str().expect("a lease").to_owned();
    // Other jobs of the same driver (on either of its processes) cannot touch it.
    for _ in 0..4 {
        let steal = job("good", "steal", json!({"lease_id": lease_id}));
        let mut run = world.supervisor.dispatch(steal).await.unwrap();
        let out = output(&all_events(&mut run).await);
        assert_eq!(out["code"], ErrorCode::UnknownLease.as_str(), "{out}");
    }
    let calls = world.broker.calls.lock().clone();
    assert!(!calls.contains(&format!("release good {lease_id}")), "{calls:?}");
}

/// Issue 17: lease maps were never pruned, so the 4,097th rental of a supervisor's life was
/// refused as `forbidden`.
async fn more_rentals_than_the_lease_cap_still_get_leases(world: &World) {
    let n = drover_supervisor::session::MAX_LEASES_PER_DRIVER + 10;
    let mut dispatch = job("good", "gpu_many", json!({"n": n}));
    dispatch.gpu = Some(gpu_grant(&[], None));
    let mut run = world.supervisor.dispatch(dispatch).await.unwrap();
    let out = output(&all_events(&mut run).await);
    assert_eq!(out["leases"], n, "{out}");
    assert_eq!(out["last"]["type"], "lease", "{out}");
}

/// A session runs `MAX_BROKER_REQUESTS` broker calls at once; more wait their turn in order
/// instead of being refused. Refusing them let a job's lease polls starve its neighbours'
/// `acquire_gpu` (the fleet test under load: 98 of 300 jobs failed with "16 lease requests
/// are already in flight").
async fn lease_requests_beyond_the_in_flight_limit_wait_their_turn(world: &World) {
    let n = drover_supervisor::session::MAX_BROKER_REQUESTS * 3;
    let mut dispatch = job("good", "gpu_burst", json!({"n": n}));
    dispatch.gpu = Some(gpu_grant(&[], None));
    let mut run = world.supervisor.dispatch(dispatch).await.unwrap();
    let out = output(&all_events(&mut run).await);
    assert_eq!(out["leases"], n, "{out}");
    assert_eq!(out["refused"], json!([]), "{out}");
}

async fn a_crash_mid_job_fails_the_job_with_the_cause_and_restarts(world: &World) {
    let mut run = world.supervisor.dispatch(job("crashy", "crash", json!({}))).await.unwrap();
    let events = all_events(&mut run).await;
    let died = events
        .iter()
        .find_map(|e| match e {
            JobEvent::DriverDied { cause } => Some(cause.clone()),
            _ => None,
        })
        .expect("a DriverDied event");
    assert!(died.contains("exited with status 3"), "{died}");
    let Some(JobEvent::Job(JobEventKind::JobState(last))) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(last.state, JobPhase::Failed);
    assert!(last.message.as_deref().unwrap().contains("exited with status 3"));
    let (_, death) = death_of(world, "crashy").await;
    assert_eq!(death.cause, Some(Cause::Exited { code: 3 }));
    assert!(death.stderr_tail.iter().any(|l| l == "about to crash"), "{death:?}");
    // Restarted after the backoff, and serving again.
    let mut run =
        world.supervisor.dispatch(job("crashy", "echo", json!({"text": "back"}))).await.unwrap();
    assert_eq!(output(&all_events(&mut run).await), json!({"echo": "back"}));
    let crashy =
        world.supervisor.drivers().into_iter().find(|d| d.name.as_str() == "crashy").unwrap();
    assert_eq!(crashy.restarts, 1);
    assert_eq!(crashy.health, DriverHealth::Ready);
}

async fn a_driver_that_hangs_mid_job_is_killed_and_the_job_fails_with_the_cause(world: &World) {
    let mut run = world.supervisor.dispatch(job("freezer", "freeze", json!({}))).await.unwrap();
    let events = all_events(&mut run).await;
    let Some(JobEvent::Job(JobEventKind::JobState(last))) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(last.state, JobPhase::Failed);
    let message = last.message.clone().unwrap();
    assert!(message.contains("hung: 3 heartbeats in a row unanswered (every 200 ms)"), "{message}");
    assert!(events.iter().any(|e| matches!(e, JobEvent::DriverDied { .. })));
}

async fn late_pongs_keep_a_slow_driver_alive(world: &World) {
    // Every pong comes after the next ping is due: each counts as one miss, then resets.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut run =
        world.supervisor.dispatch(job("slowpoke", "echo", json!({"text": "slow"}))).await.unwrap();
    assert_eq!(output(&all_events(&mut run).await), json!({"echo": "slow"}));
    let status = eventually(world, "slowpoke", |_| true).await;
    assert_eq!((status.protocol_violations, status.restarts), (0, 0), "{status:?}");
    assert!(status.last_death.is_none(), "{status:?}");
}

async fn a_job_that_ignores_cancel_gets_its_driver_killed(world: &World) {
    let dispatch = job("stubborn", "sleep", json!({"seconds": 60, "ignore_cancel": true}));
    let job_id = dispatch.job_id.clone();
    let mut run = world.supervisor.dispatch(dispatch).await.unwrap();
    wait_for_state(&mut run, JobPhase::Running).await;
    world.supervisor.cancel(&job_id, "test").await.unwrap();
    let events = all_events(&mut run).await;
    let Some(JobEvent::Job(JobEventKind::JobState(last))) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(last.state, JobPhase::Cancelled);
    assert!(last.message.as_deref().unwrap().contains("did not end within 1000 ms of its cancel"));
    let (_, death) = death_of(world, "stubborn").await;
    assert!(
        matches!(death.cause, Some(Cause::KilledBySupervisor { ref reason }) if reason.contains("did not end")),
        "{death:?}"
    );
}

async fn a_log_flood_is_slowed_bounded_and_counted(world: &World) {
    let frames = 400u64;
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut run = world
        .supervisor
        .dispatch(job("flooder", "flood", json!({"frames": frames})))
        .await
        .unwrap();
    // Not reading for a while: the supervisor must hold at most its bound and count the rest.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib();
    let events = all_events(&mut run).await;
    let took = started.elapsed();
    let (mut lines, mut dropped) = (0u64, 0u64);
    for event in &events {
        if let JobEvent::Job(JobEventKind::JobLog(log)) = event {
            lines += log.lines.iter().filter(|l| l.starts_with("flood line")).count() as u64;
            dropped += log.dropped;
        }
    }
    assert_eq!(states(&events).last(), Some(&JobPhase::Succeeded));
    assert!(dropped > 0, "nothing was dropped");
    assert_eq!(lines + dropped, frames * 100, "every line is delivered or counted");
    let bytes = frames * 100 * 215;
    let grown = rss_after.saturating_sub(rss_before);
    println!(
        "  flood: {:.1} MiB in {} ms ({:.1} MiB/s, budget 4), {lines} lines delivered, {dropped} counted as dropped, RSS grew {grown} KiB",
        bytes as f64 / f64::from(1 << 20),
        took.as_millis(),
        bytes as f64 / f64::from(1 << 20) / took.as_secs_f64()
    );
    // Slowed to the read budget: 4 MiB/s after a 2 MiB burst.
    let floor = (bytes as f64 - f64::from(2 << 20)) / f64::from(4 << 20);
    assert!(took.as_secs_f64() >= floor * 0.9, "{took:?} for {bytes} bytes");
    // The bound is 64 KiB queued plus 64 events in the channel (about 1.4 MiB here).
    assert!(grown < 12 * 1024, "RSS grew by {grown} KiB");
    let flooder =
        world.supervisor.drivers().into_iter().find(|d| d.name.as_str() == "flooder").unwrap();
    assert!(flooder.last_death.is_none(), "{flooder:?}");
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn invalid_frames_are_answered_and_counted(world: &World) {
    let mut run =
        world.supervisor.dispatch(job("picky", "errors", json!({"wait_for": 4}))).await.unwrap();
    let out = output(&all_events(&mut run).await);
    assert_eq!(out, json!(["invalid_json", "schema_violation", "unknown_type", "frame_too_large"]));
    // States out of order, and states of a job that is not running there, are refused too.
    let mut run = world.supervisor.dispatch(job("picky", "disorder", json!({}))).await.unwrap();
    let events = all_events(&mut run).await;
    assert_eq!(states(&events), [JobPhase::Running, JobPhase::Succeeded]);
    let seen = output(&events);
    let seen = seen.as_array().unwrap();
    assert!(seen.ends_with(&[json!("unexpected_message"), json!("unknown_job")]), "{seen:?}");
    let picky =
        world.supervisor.drivers().into_iter().find(|d| d.name.as_str() == "picky").unwrap();
    assert_eq!(picky.protocol_violations, 6);
    assert_eq!((picky.health, picky.last_death.is_none()), (DriverHealth::Ready, true));
}

async fn a_crash_loop_marks_the_driver_failed(world: &World) {
    let status = eventually(world, "crash-loop", |d| d.health == DriverHealth::Failed).await;
    assert_eq!(status.restarts, 2);
    let death = status.last_death.unwrap();
    assert_eq!(death.cause, Some(Cause::Exited { code: 2 }));
    assert_eq!(death.session_end.as_deref(), Some("died before hello"));
    let err = world.supervisor.dispatch(job("crash-loop", "echo", json!({}))).await.unwrap_err();
    assert!(err.to_string().contains("exited with status 2"), "{err}");
}

async fn a_refused_system_call_is_the_recorded_cause(world: &World) {
    let mut run = world.supervisor.dispatch(job("sneaky", "syscall", json!({}))).await.unwrap();
    let events = all_events(&mut run).await;
    assert_eq!(states(&events).last(), Some(&JobPhase::Failed));
    let (_, death) = death_of(world, "sneaky").await;
    match &death.cause {
        Some(Cause::SeccompViolation { name, .. }) => assert_eq!(*name, Some("ptrace")),
        Some(Cause::SeccompKill) => {}
        other => panic!("{other:?}"),
    }
    println!("  cause: {}", death.summary());
}

/// Issue 17: nothing on drivers or sandbox deaths reached `/metrics`. After the crash, the
/// crash loop, the seccomp kill and the missing binary above, the series say so.
async fn driver_exits_restarts_and_sandbox_deaths_are_in_the_metrics(world: &World) {
    let mut registry = prometheus_client::registry::Registry::default();
    world.supervisor.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
    for line in [
        "drover_driver_exits_total{driver=\"crashy\",reason=\"exit_error\"} 1",
        "drover_driver_restarts_total{driver=\"crashy\"} 1",
        "drover_driver_exits_total{driver=\"crash-loop\",reason=\"exit_error\"} 3",
        "drover_driver_health{driver=\"crash-loop\",health=\"failed\"} 1",
        "drover_driver_health{driver=\"crash-loop\",health=\"ready\"} 0",
        "drover_driver_exits_total{driver=\"sneaky\",reason=\"seccomp\"} 1",
        "drover_sandbox_deaths_total{driver=\"sneaky\",cause=\"seccomp\"} 1",
        "drover_driver_exits_total{driver=\"missing\",reason=\"start_failed\"} 1",
        "drover_driver_sessions_connected{driver=\"good\"} 2",
        "# TYPE drover_driver_exits_total counter",
        "# TYPE drover_sandbox_deaths_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
    assert!(!text.contains("driver=\"crashy\",cause="), "a plain exit is no sandbox death");
}

async fn a_stdio_driver_is_served_like_any_other(world: &World) {
    let mut run =
        world.supervisor.dispatch(job("stdio", "echo", json!({"text": "io"}))).await.unwrap();
    assert_eq!(output(&all_events(&mut run).await), json!({"echo": "io"}));
}

async fn the_python_sdk_example_is_served(world: &World) {
    let mut run = world
        .supervisor
        .dispatch(job("python-example", "echo", json!({"a": [1, 2]})))
        .await
        .unwrap();
    let events = all_events(&mut run).await;
    assert_eq!(output(&events), json!({"a": [1, 2]}));
    assert_eq!(states(&events).last(), Some(&JobPhase::Succeeded));

    let dispatch = job("python-example", "sleep", json!({"seconds": 30}));
    let job_id = dispatch.job_id.clone();
    let mut run = world.supervisor.dispatch(dispatch).await.unwrap();
    wait_for_state(&mut run, JobPhase::Running).await;
    world.supervisor.cancel(&job_id, "test").await.unwrap();
    let events = all_events(&mut run).await;
    assert_eq!(states(&events).last(), Some(&JobPhase::Cancelled), "{events:?}");
    assert!(output(&events)["ticks"].is_u64(), "{events:?}");
    let err = world
        .supervisor
        .dispatch(job("python-example", "sleep", json!({"seconds": -1})))
        .await
        .unwrap_err();
    let DispatchError::InvalidParams { violations, .. } = err else { panic!("{err:?}") };
    assert_eq!(violations[0].instance_path, "/seconds");
}

async fn misbehaving_drivers_are_diagnosed(world: &World) {
    let (status, death) = death_of(world, "silent").await;
    assert_eq!(status.health, DriverHealth::Failed);
    assert_eq!(death.session_end.as_deref(), Some("no hello within 1000 ms"));
    assert!(matches!(death.cause, Some(Cause::KilledBySupervisor { .. })), "{death:?}");

    let (status, death) = death_of(world, "wrong-version").await;
    assert_eq!(status.health, DriverHealth::Failed);
    let end = death.session_end.clone().unwrap();
    assert!(end.contains("version mismatch") && end.contains("[99]"), "{end}");
    assert_eq!(death.cause, Some(Cause::Exited { code: 1 }));
    // The driver was told, with data: its stderr shows the structured refusal.
    let said = death.stderr_tail.join("\n");
    assert!(said.contains("version_mismatch") && said.contains("\"supported\": [1]"), "{said}");

    let (_, death) = death_of(world, "bad-schema").await;
    let end = death.session_end.clone().unwrap();
    assert!(end.starts_with("invalid hello: action echo"), "{end}");

    let (status, death) = death_of(world, "garbage-frames").await;
    let end = death.session_end.clone().unwrap();
    assert!(end.starts_with("protocol violation: 65 frames rejected"), "{end}");
    assert!(status.protocol_violations >= 65);

    let (status, death) = death_of(world, "missing").await;
    assert_eq!(status.health, DriverHealth::Failed);
    assert_eq!(death.cause, None, "it never started");
    let end = death.session_end.clone().unwrap();
    assert!(end.starts_with("could not start: ") && end.contains("/nonexistent/driver"), "{end}");

    let (_, death) = death_of(world, "unframed").await;
    let end = death.session_end.clone().unwrap();
    assert!(end.starts_with("broken transport before hello"), "{end}");
    assert!(end.contains("HTTP/1.1 200"), "the diagnostic shows the first bytes: {end}");
    assert!(matches!(death.cause, Some(Cause::KilledBySupervisor { .. })));

    let (_, death) = death_of(world, "hang").await;
    let end = death.session_end.clone().unwrap();
    assert!(end.starts_with("hung: 3 heartbeats"), "{end}");
    assert!(matches!(death.cause, Some(Cause::KilledBySupervisor { .. })));

    // None of it touched the good drivers.
    let mut run =
        world.supervisor.dispatch(job("good", "echo", json!({"text": "ok"}))).await.unwrap();
    assert_eq!(output(&all_events(&mut run).await), json!({"echo": "ok"}));
    let mut run = world
        .supervisor
        .dispatch(job("stdout-garbage", "echo", json!({"text": "ok"})))
        .await
        .unwrap();
    assert_eq!(output(&all_events(&mut run).await), json!({"echo": "ok"}));
    let good = world.supervisor.drivers().into_iter().find(|d| d.name.as_str() == "good").unwrap();
    assert_eq!((good.restarts, good.last_death.is_none()), (0, true), "{good:?}");
    let err = world.supervisor.dispatch(job("silent", "echo", json!({}))).await.unwrap_err();
    assert!(matches!(err, DispatchError::DriverFailed { .. }), "{err:?}");
}

async fn shutdown_climbs_the_ladder(world: &World) {
    let started = Instant::now();
    let other = world.supervisor.clone();
    let (took, second) = tokio::join!(
        async {
            world.supervisor.shutdown(Duration::from_secs(1)).await;
            started.elapsed()
        },
        async {
            // A second caller waits for the first shutdown; its longer grace is ignored.
            tokio::time::sleep(Duration::from_millis(100)).await;
            other.shutdown(Duration::from_secs(30)).await;
            started.elapsed()
        }
    );
    assert!(second >= took && second < took + Duration::from_secs(1), "{second:?} vs {took:?}");
    println!("  shutdown took {} ms", took.as_millis());
    // 1 s grace, 1 s after close, 1 s after SIGTERM, then SIGKILL.
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(12), "{took:?}");
    let (_, death) = death_of(world, "ignore-shutdown").await;
    assert!(
        matches!(&death.cause, Some(Cause::KilledBySupervisor { reason }) if reason.contains("shutdown grace")),
        "{death:?}"
    );
    // The SIGTERM rung reaches a driver that handles it (even as its pid namespace's init).
    let (_, death) = death_of(world, "term-only").await;
    assert_eq!(death.cause, Some(Cause::Exited { code: 7 }), "{death:?}");
    let end = death.session_end.clone().unwrap();
    assert!(end.contains("shutdown grace"), "{end}");
    let (_, death) = death_of(world, "good").await;
    assert_eq!(death.cause, Some(Cause::Exited { code: 0 }));
    assert_eq!(death.session_end.as_deref(), Some("stopped by supervisor shutdown"));
    let (_, death) = death_of(world, "stdout-garbage").await;
    let out = death.stdout_tail.join("\n");
    assert!(out.contains("garbage") && out.contains("[cut]"), "{out}");
    assert!(death.stdout_tail.iter().all(|l| l.len() <= 4096 + 6));
    let err =
        world.supervisor.dispatch(job("good", "echo", json!({"text": "x"}))).await.unwrap_err();
    assert!(matches!(err, DispatchError::ShuttingDown), "{err:?}");
}

// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    if let Some(reason) = drover_testkit::privileged::sandbox_unavailable() {
        // Phase A: without the privilege drop none of the cases below can run.
        drover_testkit::privileged::cannot_run(&reason, cfg!(feature = "privileged-tests"));
        return ExitCode::SUCCESS;
    }
    // The Python SDK package and its example driver (drivers/python), read while this process may
    // still read the checkout, and written below where the drivers' uid can read them.
    // The package goes beside the example, where Python finds it first.
    let mut sdk = vec![(
        "example_driver.py".to_owned(),
        std::fs::read_to_string(repo().join("drivers/python/example_driver.py")).unwrap(),
    )];
    for entry in std::fs::read_dir(repo().join("drivers/python/src/drover_driver")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            sdk.push((format!("drover_driver/{name}"), std::fs::read_to_string(&path).unwrap()));
        }
    }
    let dropped = drop_privileges(&DropConfig::default(), &LinuxSys).unwrap();
    // Created after the drop, so it belongs to the drivers' uid; /tmp is world-traversable.
    let dir = tempfile::tempdir().unwrap();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let world = runtime.block_on(async {
        let world = start(dropped, dir.path(), &sdk).await;
        eventually(&world, "good", |d| d.ready_sessions == 2).await;
        world
    });
    println!(
        "{} drivers started; both processes of `good` ready (spawn, Python start-up, handshake) after {} ms",
        world.supervisor.drivers().len(),
        started.elapsed().as_millis()
    );

    type Case = for<'a> fn(&'a World) -> std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>;
    let cases: Vec<(&str, Case)> = vec![
        ("a_good_job_runs_with_ordered_states", |w| {
            Box::pin(a_good_job_runs_with_ordered_states(w))
        }),
        ("params_are_checked_against_the_declared_schema", |w| {
            Box::pin(params_are_checked_against_the_declared_schema(w))
        }),
        ("cancel_is_acknowledged_and_ends_the_job", |w| {
            Box::pin(cancel_is_acknowledged_and_ends_the_job(w))
        }),
        ("the_deadline_cancels_a_job", |w| Box::pin(the_deadline_cancels_a_job(w))),
        ("lease_requests_reach_the_broker_and_stay_with_their_driver", |w| {
            Box::pin(lease_requests_reach_the_broker_and_stay_with_their_driver(w))
        }),
        ("a_driver_asking_outside_its_jobs_gpu_request_is_refused_and_audited", |w| {
            Box::pin(a_driver_asking_outside_its_jobs_gpu_request_is_refused_and_audited(w))
        }),
        ("a_lease_of_another_job_of_the_same_driver_is_refused", |w| {
            Box::pin(a_lease_of_another_job_of_the_same_driver_is_refused(w))
        }),
        ("more_rentals_than_the_lease_cap_still_get_leases", |w| {
            Box::pin(more_rentals_than_the_lease_cap_still_get_leases(w))
        }),
        ("lease_requests_beyond_the_in_flight_limit_wait_their_turn", |w| {
            Box::pin(lease_requests_beyond_the_in_flight_limit_wait_their_turn(w))
        }),
        ("a_crash_mid_job_fails_the_job_with_the_cause_and_restarts", |w| {
            Box::pin(a_crash_mid_job_fails_the_job_with_the_cause_and_restarts(w))
        }),
        ("a_driver_that_hangs_mid_job_is_killed_and_the_job_fails_with_the_cause", |w| {
            Box::pin(a_driver_that_hangs_mid_job_is_killed_and_the_job_fails_with_the_cause(w))
        }),
        ("late_pongs_keep_a_slow_driver_alive", |w| {
            Box::pin(late_pongs_keep_a_slow_driver_alive(w))
        }),
        ("a_job_that_ignores_cancel_gets_its_driver_killed", |w| {
            Box::pin(a_job_that_ignores_cancel_gets_its_driver_killed(w))
        }),
        ("a_log_flood_is_slowed_bounded_and_counted", |w| {
            Box::pin(a_log_flood_is_slowed_bounded_and_counted(w))
        }),
        ("invalid_frames_are_answered_and_counted", |w| {
            Box::pin(invalid_frames_are_answered_and_counted(w))
        }),
        ("a_crash_loop_marks_the_driver_failed", |w| {
            Box::pin(a_crash_loop_marks_the_driver_failed(w))
        }),
        ("a_refused_system_call_is_the_recorded_cause", |w| {
            Box::pin(a_refused_system_call_is_the_recorded_cause(w))
        }),
        ("driver_exits_restarts_and_sandbox_deaths_are_in_the_metrics", |w| {
            Box::pin(driver_exits_restarts_and_sandbox_deaths_are_in_the_metrics(w))
        }),
        ("a_stdio_driver_is_served_like_any_other", |w| {
            Box::pin(a_stdio_driver_is_served_like_any_other(w))
        }),
        ("the_python_sdk_example_is_served", |w| Box::pin(the_python_sdk_example_is_served(w))),
        ("misbehaving_drivers_are_diagnosed", |w| Box::pin(misbehaving_drivers_are_diagnosed(w))),
        ("shutdown_climbs_the_ladder", |w| Box::pin(shutdown_climbs_the_ladder(w))),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        let started = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(case(&world))
        })) {
            Ok(()) => {
                println!("test {name} ... ok ({} ms)", started.elapsed().as_millis());
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
