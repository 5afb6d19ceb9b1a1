//! The service's own rules, with a scripted job runner in place of the supervisor (the real
//! store, and the real provisioner on the in-process simulator): every job ends in a stored
//! terminal state whatever the runner does, cancellation reaches jobs that wait for a driver,
//! a restart takes over what the previous run left, shutdown refuses new work, streams
//! replay history then follow live and resume after a sequence number, estimates go through
//! the gate, and readiness names the simulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drover_api::BoxFuture;
use drover_api::backend::{Backend, BackendError, SchemaLookupError, Submission};
use drover_proto::api::{
    DriverHealth, DriverList, DriverView, EstimateRequest, JobEventKind, JobSpec,
};
use drover_proto::config::ShutdownMode;
use drover_proto::{ActionName, DriverName, GpuRequest, JobId, JobPhase, JobState, ParamsSchema};
use drover_provision::{Clock, Provisioner, ProvisionerConfig};
use drover_service::{Dispatch, JobRunner, RunError, SIMULATOR_NOTICE, Service, ServiceConfig};
use drover_store::{NewJob, SqliteStore, Store};
use drover_supervisor::JobEvent;
use drover_vast::{ApiKey, RetryPolicy, VastClient};
use drover_vast_sim::{SimConfig, Simulator};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// What the scripted runner does, chosen by the job's driver name.
#[derive(Default)]
struct Script {
    cancels: Mutex<BTreeMap<JobId, watch::Sender<bool>>>,
    dispatched: Mutex<Vec<JobId>>,
}

fn state(id: &JobId, phase: JobPhase) -> JobEvent {
    JobEvent::Job(JobEventKind::JobState(JobState {
        job_id: id.clone(),
        state: phase,
        message: None,
    }))
}

impl JobRunner for Script {
    fn dispatch(
        &self,
        request: Dispatch,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<JobEvent>, RunError>> {
        Box::pin(async move {
            let id = request.job_id.clone();
            match request.driver.as_str() {
                "retry" => return Err(RunError::Retry("every session is busy".to_owned())),
                "refuse" => return Err(RunError::Refused("driver refuse has failed".to_owned())),
                _ => {}
            }
            self.dispatched.lock().push(id.clone());
            let (tx, rx) = mpsc::channel(16);
            let (cancel, mut cancelled) = watch::channel(false);
            self.cancels.lock().insert(id.clone(), cancel);
            let kind = request.driver.to_string();
            tokio::spawn(async move {
                tx.send(state(&id, JobPhase::Running)).await.unwrap();
                match kind.as_str() {
                    "ok" => tx.send(state(&id, JobPhase::Succeeded)).await.unwrap(),
                    "slow" => {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(500)) => {
                                tx.send(state(&id, JobPhase::Succeeded)).await.unwrap();
                            }
                            _ = cancelled.changed() => {
                                tx.send(state(&id, JobPhase::Cancelled)).await.unwrap();
                            }
                        }
                    }
                    "vanish" => {}
                    "flood" => {
                        // 100 lines of 1 KiB per batch, 50 batches: 5,000 KiB of log text.
                        for _ in 0..50 {
                            let log = drover_proto::JobLog {
                                job_id: id.clone(),
                                stream: drover_proto::LogStream::Stdout,
                                lines: vec!["y".repeat(1024); 100],
                                dropped: 0,
                            };
                            tx.send(JobEvent::Job(JobEventKind::JobLog(log))).await.unwrap();
                        }
                        tx.send(state(&id, JobPhase::Succeeded)).await.unwrap();
                    }
                    _ => {
                        let _ = cancelled.changed().await;
                        tx.send(state(&id, JobPhase::Cancelled)).await.unwrap();
                    }
                }
            });
            Ok(rx)
        })
    }

    fn cancel<'a>(&'a self, job_id: &'a JobId, _reason: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(
            async move { self.cancels.lock().get(job_id).is_some_and(|c| c.send(true).is_ok()) },
        )
    }

    fn drivers(&self) -> BoxFuture<'_, DriverList> {
        Box::pin(async move {
            let mut actions = BTreeMap::new();
            actions.insert("run".parse().unwrap(), ParamsSchema(json!({"type": "object"})));
            DriverList {
                drivers: vec![DriverView {
                    name: "ok".parse().unwrap(),
                    version: None,
                    health: DriverHealth::Ready,
                    ready_sessions: 1,
                    actions,
                    gpus: Vec::new(),
                }],
            }
        })
    }

    fn params_schema(
        &self,
        _: &DriverName,
        _: &ActionName,
    ) -> Result<Arc<ParamsSchema>, SchemaLookupError> {
        Ok(Arc::new(ParamsSchema(json!({"type": "object"}))))
    }
}

struct Rig {
    service: Arc<Service<SqliteStore>>,
    runner: Arc<Script>,
    _sim: Simulator,
    _dir: tempfile::TempDir,
}

async fn rig_with(dir: tempfile::TempDir, store: SqliteStore) -> Rig {
    rig_mode(dir, store, ShutdownMode::Cancel).await
}

async fn rig_mode(dir: tempfile::TempDir, store: SqliteStore, on_shutdown: ShutdownMode) -> Rig {
    rig_full(dir, store, ServiceConfig { on_shutdown, ..ServiceConfig::default() }).await
}

/// A rig whose service has `config` (with short dispatch retries and grace period).
async fn rig_full(dir: tempfile::TempDir, store: SqliteStore, config: ServiceConfig) -> Rig {
    let clock = Clock::scaled(100.0);
    let sim = Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig { clock, ..SimConfig::default() },
    )
    .await
    .unwrap();
    let client = VastClient::new(
        sim.base_url(),
        ApiKey::new("k-for-tests").unwrap(),
        RetryPolicy::default(),
    )
    .unwrap();
    let provisioner = Arc::new(
        Provisioner::start(client, store.clone(), ProvisionerConfig::new("test"), clock)
            .await
            .unwrap(),
    );
    let runner = Arc::new(Script::default());
    let config = ServiceConfig {
        dispatch_retry: Duration::from_millis(20),
        shutdown_grace: Duration::from_secs(2),
        ..config
    };
    let service = Service::new(store, runner.clone(), provisioner, config);
    Rig { service, runner, _sim: sim, _dir: dir }
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    rig_with(dir, store).await
}

fn spec(driver: &str) -> JobSpec {
    serde_json::from_value(
        json!({"driver": driver, "action": "run", "max_runtime_s": 30, "budget_usd": 1.0}),
    )
    .unwrap()
}

async fn submit(rig: &Rig, driver: &str) -> JobId {
    let submission = Submission {
        spec: spec(driver),
        actor: "t".to_owned(),
        idempotency: None,
        request_id: "req-1".to_owned(),
    };
    rig.service.submit(submission).await.unwrap().job.id
}

/// The job's states, from its complete event stream (which must end).
async fn states(rig: &Rig, id: &JobId, after: u64) -> Vec<JobPhase> {
    let stream = rig.service.events(id, after).await.unwrap();
    let events: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect())
        .await
        .expect("the stream ends");
    events
        .into_iter()
        .filter_map(|e| match e.event {
            JobEventKind::JobState(s) => Some(s.state),
            _ => None,
        })
        .collect()
}

async fn message(rig: &Rig, id: &JobId) -> String {
    rig.service.job(id).await.unwrap().unwrap().message.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_in_a_stored_terminal_state() {
    let rig = rig().await;
    let ok = submit(&rig, "ok").await;
    assert_eq!(
        states(&rig, &ok, 0).await,
        [JobPhase::Queued, JobPhase::Running, JobPhase::Succeeded]
    );
    // Resuming after the first event replays the rest only.
    assert_eq!(states(&rig, &ok, 1).await, [JobPhase::Running, JobPhase::Succeeded]);

    let refused = submit(&rig, "refuse").await;
    assert_eq!(states(&rig, &refused, 0).await, [JobPhase::Queued, JobPhase::Failed]);
    assert!(message(&rig, &refused).await.contains("dispatch refused: driver refuse has failed"));

    let vanished = submit(&rig, "vanish").await;
    assert_eq!(
        states(&rig, &vanished, 0).await,
        [JobPhase::Queued, JobPhase::Running, JobPhase::Failed]
    );
    assert!(message(&rig, &vanished).await.contains("lost the job's driver session"));

    // Cancelling a job that waits for a busy driver ends it without a dispatch.
    let waiting = submit(&rig, "retry").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let job = rig.service.cancel(&waiting, "t").await.unwrap();
    assert!(!job.state.is_terminal() || job.state == JobPhase::Cancelled);
    assert_eq!(states(&rig, &waiting, 0).await, [JobPhase::Queued, JobPhase::Cancelled]);
    assert!(matches!(rig.service.cancel(&waiting, "t").await, Err(BackendError::Conflict(_))));

    // Cancelling a running job goes through the runner.
    let running = submit(&rig, "hang").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rig.service.job(&running).await.unwrap().unwrap().state != JobPhase::Running {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.service.cancel(&running, "t").await.unwrap();
    let audit = rig.service.store().audit_after(0, 1000).await.unwrap();
    assert!(
        audit.iter().any(|(_, e)| e.action == "job.cancel"
            && e.actor == "t"
            && e.resource == format!("job:{running}")),
        "the cancel is audited with its actor"
    );
    assert_eq!(
        states(&rig, &running, 0).await,
        [JobPhase::Queued, JobPhase::Running, JobPhase::Cancelled]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_queued_jobs_and_fails_running_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    let new = |id: &str, driver: &str| NewJob {
        id: id.parse().unwrap(),
        spec: spec(driver),
        submitted_by: "t".to_owned(),
        at_unix_ms: 1_795_305_600_000,
        idempotency: None,
    };
    store.submit_job(new("job-queued", "ok")).await.unwrap();
    let running: JobId = "job-running".parse().unwrap();
    store.submit_job(new("job-running", "ok")).await.unwrap();
    store
        .append_event(
            &running,
            1_795_305_600_001,
            JobEventKind::JobState(JobState {
                job_id: running.clone(),
                state: JobPhase::Running,
                message: None,
            }),
        )
        .await
        .unwrap();
    let rig = rig_with(dir, store).await;
    assert_eq!(rig.service.recover().await.unwrap(), (1, 1));
    let queued: JobId = "job-queued".parse().unwrap();
    assert_eq!(
        states(&rig, &queued, 0).await,
        [JobPhase::Queued, JobPhase::Running, JobPhase::Succeeded]
    );
    assert_eq!(
        states(&rig, &running, 0).await,
        [JobPhase::Queued, JobPhase::Running, JobPhase::Failed]
    );
    assert!(message(&rig, &running).await.contains("restarted while the job was running"));
    assert_eq!(*rig.runner.dispatched.lock(), [queued]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_running_jobs_and_refuses_new_ones() {
    let rig = rig().await;
    let running = submit(&rig, "hang").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rig.service.job(&running).await.unwrap().unwrap().state != JobPhase::Running {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rig.service.shutdown().await, 0, "every job ended within the grace period");
    assert_eq!(rig.service.job(&running).await.unwrap().unwrap().state, JobPhase::Cancelled);
    let submission = Submission {
        spec: spec("ok"),
        actor: "t".to_owned(),
        idempotency: None,
        request_id: "r".to_owned(),
    };
    assert!(matches!(rig.service.submit(submission).await, Err(BackendError::Unavailable(_))));
    let readiness = rig.service.readiness().await;
    assert!(!readiness.ready && !readiness.checks["accepting"].ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_go_through_the_gate_and_readiness_names_the_simulator() {
    let rig = rig().await;
    let request = |budget: f64, models: Vec<String>| EstimateRequest {
        gpu: GpuRequest {
            count: 1,
            models,
            min_gpu_ram_gib: None,
            max_usd_per_hour: None,
            min_reliability: None,
            pricing: Default::default(),
        },
        max_runtime_s: 3600,
        disk_gib: 16,
        bandwidth_gib: 0.0,
        budget_usd: budget,
    };
    let allowed = rig.service.estimate(request(100.0, Vec::new())).await.unwrap();
    assert!(allowed.allowed, "{allowed:?}");
    let estimate = allowed.estimate.unwrap();
    assert!(estimate.confidence >= 0.95 && estimate.worst_usd >= estimate.p95_usd);
    assert!(allowed.offer.is_some());

    let refused = rig.service.estimate(request(0.001, Vec::new())).await.unwrap();
    assert!(!refused.allowed);
    assert!(refused.estimate.unwrap().confidence < 0.95);
    assert!(refused.reason.is_some());

    let none = rig.service.estimate(request(100.0, vec!["No Such GPU".to_owned()])).await.unwrap();
    assert!(!none.allowed);
    assert_eq!(none.reason.as_deref(), Some("no offer matches the GPU request"));

    // Nothing was reserved or rented.
    assert_eq!(rig.service.store().ledger_report().await.unwrap().leases, 0);

    let readiness = rig.service.readiness().await;
    assert!(readiness.ready, "{readiness:?}");
    assert_eq!(readiness.checks["provider"].message.as_deref(), Some(SIMULATOR_NOTICE));
}

async fn wait_running(rig: &Rig, id: &JobId) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rig.service.job(id).await.unwrap().unwrap().state != JobPhase::Running {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mode_cancels_and_drain_mode_lets_jobs_finish() {
    // cancel: the slow job is cancelled although it would have finished.
    let rig = rig().await;
    let slow = submit(&rig, "slow").await;
    wait_running(&rig, &slow).await;
    assert_eq!(rig.service.shutdown().await, 0);
    assert_eq!(rig.service.job(&slow).await.unwrap().unwrap().state, JobPhase::Cancelled);

    // drain: the slow job finishes; the one that never would is cancelled after the grace.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    let rig = rig_mode(dir, store, ShutdownMode::Drain).await;
    let slow = submit(&rig, "slow").await;
    let hang = submit(&rig, "hang").await;
    wait_running(&rig, &slow).await;
    wait_running(&rig, &hang).await;
    assert_eq!(rig.service.shutdown().await, 0);
    assert_eq!(rig.service.job(&slow).await.unwrap().unwrap().state, JobPhase::Succeeded);
    assert_eq!(rig.service.job(&hang).await.unwrap().unwrap().state, JobPhase::Cancelled);
}

/// Accepts one HTTP request on `listener`; returns its headers (lowercased names) and body.
async fn receive_one(listener: tokio::net::TcpListener) -> (Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_end, length) = loop {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the sender hung up");
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            break (end + 4, length);
        }
    };
    while data.len() < head_end + length {
        let n = socket.read(&mut buf).await.unwrap();
        data.extend_from_slice(&buf[..n]);
    }
    socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    (headers, data[head_end..head_end + length].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_reported_to_its_webhook_signed() {
    let secret = b"a webhook secret of at least thirty-two bytes".to_vec();
    let sender = drover_api::webhook::WebhookSender::new(
        drover_api::webhook::WebhookSecret::new(secret.clone()).unwrap(),
        drover_api::webhook::RetryPolicy::default(),
        true,
        drover_api::egress::TargetPolicy::AnyAddress,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    let config = ServiceConfig { webhooks: Some(sender), ..ServiceConfig::default() };
    let rig = rig_full(dir, store, config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = tokio::spawn(receive_one(listener));
    let mut spec = spec("ok");
    spec.webhook_url = Some(url);
    let submission =
        Submission { spec, actor: "t".to_owned(), idempotency: None, request_id: "r".to_owned() };
    let id = rig.service.submit(submission).await.unwrap().job.id;
    let (headers, body) =
        tokio::time::timeout(Duration::from_secs(20), received).await.unwrap().unwrap();
    let signature =
        headers.iter().find(|(k, _)| k == drover_api::webhook::SIGNATURE_HEADER).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    drover_api::webhook::verify(&secret, &signature.1, &body, now).unwrap();
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "job.finished");
    assert_eq!(event["job"]["id"], id.as_str());
    assert_eq!(event["job"]["state"], "succeeded");
}

/// Issue 21: a store whose filesystem fills up makes submits fail and readiness say "not
/// ready"; once space is freed the same service submits again, no restart. Mounts a 4 MiB
/// tmpfs, so it needs root (CI runs as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_is_not_ready_and_recovers_once_space_is_freed() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("fs");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root (CI runs as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let store = SqliteStore::open_in(&mount.join("data")).await.unwrap();
    let rig = rig_with(dir, store).await;
    let big = |n: usize| {
        let mut spec = spec("ok");
        spec.params.insert("blob".to_owned(), json!("x".repeat(200 * 1024 + n)));
        Submission { spec, actor: "t".to_owned(), idempotency: None, request_id: "r".to_owned() }
    };
    // A small job first: a big one would leave a WAL file large enough that, once
    // checkpointed, the next big job fits in its already allocated pages.
    let small = Submission {
        spec: spec("ok"),
        actor: "t".to_owned(),
        idempotency: None,
        request_id: "r".to_owned(),
    };
    rig.service.submit(small).await.unwrap();
    assert!(rig.service.readiness().await.checks["store"].ok);

    let filler = mount.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while file.write(&[0u8; 4096]).is_ok_and(|n| n > 0) {}
    drop(file);
    for n in 1..4 {
        assert!(rig.service.submit(big(n)).await.is_err(), "a submit fails on a full disk");
    }
    let readiness = rig.service.readiness().await;
    assert!(!readiness.ready && !readiness.checks["store"].ok, "{readiness:?}");

    std::fs::remove_file(&filler).unwrap();
    let readiness = rig.service.readiness().await;
    assert!(readiness.checks["store"].ok, "{readiness:?}");
    rig.service.submit(big(4)).await.unwrap();
    rig.service.submit(big(5)).await.unwrap();
}

/// Every job the store holds, newest first.
async fn stored_jobs(rig: &Rig) -> Vec<drover_proto::api::Job> {
    let filter = drover_store::JobFilter { limit: 1000, ..Default::default() };
    rig.service.store().list_jobs(&filter).await.unwrap().jobs
}

/// A client that hangs up right after `POST /v1/jobs` drops the request's future as soon as
/// the job is durable; the job must still be dispatched (issue 17: it used to stay `queued`
/// until the next restart, because the handoff came after another await).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_client_hangs_up_after_the_commit_is_still_dispatched() {
    let rig = rig().await;
    for attempt in 0..10 {
        let before = stored_jobs(&rig).await.len();
        let mut request = rig.service.submit(Submission {
            spec: spec("ok"),
            actor: "t".to_owned(),
            idempotency: None,
            request_id: format!("req-{attempt}"),
        });
        // Poll the request step by step, and drop it the moment its job is committed.
        loop {
            let polled = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(Future::poll(request.as_mut(), cx))
            })
            .await;
            if polled.is_ready() {
                break;
            }
            if stored_jobs(&rig).await.len() > before {
                drop(request);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = stored_jobs(&rig).await;
        assert_eq!(jobs.len(), 10, "every submission was committed");
        let waiting: Vec<_> =
            jobs.iter().filter(|j| !j.state.is_terminal()).map(|j| j.id.to_string()).collect();
        if waiting.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs never dispatched after their client hung up: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dispatched = rig.runner.dispatched.lock().len();
    assert_eq!(dispatched, 10, "every job reached the runner");
}

/// The "Why" of issue 17: one job's log lines filled the store's volume. With a 256 KiB
/// quota, a driver writing 5,000 KiB ends with exactly its quota stored and the rest counted
/// in one event before its terminal state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_flooding_its_log_keeps_its_quota_and_the_rest_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    let config = ServiceConfig { log_quota_bytes: 256 * 1024, ..ServiceConfig::default() };
    let rig = rig_full(dir, store, config).await;
    let id = submit(&rig, "flood").await;
    let stream = rig.service.events(&id, 0).await.unwrap();
    let events: Vec<_> = tokio::time::timeout(Duration::from_secs(30), stream.collect())
        .await
        .expect("the stream ends");
    let logs: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            JobEventKind::JobLog(log) => Some(log),
            _ => None,
        })
        .collect();
    let (summary, stored) = logs.split_last().expect("log events");
    let stored_bytes: usize = stored.iter().flat_map(|l| &l.lines).map(String::len).sum();
    assert_eq!(stored_bytes, 256 * 1024, "exactly the quota is stored");
    assert!(stored.iter().all(|l| l.dropped == 0));
    assert_eq!(summary.dropped, 5_000 - 256, "every other line is counted");
    assert_eq!(summary.lines.len(), 1);
    assert!(
        summary.lines[0].contains(&format!("{} bytes) dropped", (5_000 - 256) * 1024)),
        "{:?}",
        summary.lines
    );
    let last = events.last().unwrap();
    assert!(
        matches!(&last.event, JobEventKind::JobState(s) if s.state == JobPhase::Succeeded),
        "the job still ends normally: {last:?}"
    );
}

/// The "Why" of issue 17: once the store's volume was full every submit got 500. Below the
/// watermark a submit is refused as `storage_low` (503 with Retry-After) before the store
/// fails, readiness says why, and once space returns submits succeed with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_disk_watermark_submits_are_refused_until_space_returns() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("fs");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root (CI runs as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let data = mount.join("data");
    let store = SqliteStore::open_in(&data).await.unwrap();
    let config = ServiceConfig {
        data_volume: Some(data.clone()),
        min_free_bytes: 2 * 1024 * 1024,
        ..ServiceConfig::default()
    };
    let rig = rig_full(dir, store, config).await;
    submit(&rig, "ok").await;
    assert!(rig.service.readiness().await.checks["store"].ok);

    // Leave 1 MiB free: below the 2 MiB watermark, but the store could still write.
    let filler = mount.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while file.write(&[0u8; 4096]).is_ok_and(|n| n > 0) {}
    file.set_len(file.metadata().unwrap().len() - 1024 * 1024).unwrap();
    drop(file);
    for _ in 0..3 {
        let submission = Submission {
            spec: spec("ok"),
            actor: "t".to_owned(),
            idempotency: None,
            request_id: "r".to_owned(),
        };
        let error = rig.service.submit(submission).await.unwrap_err();
        assert!(matches!(error, BackendError::StorageLow { .. }), "{error:?}");
        let api =
            axum::response::IntoResponse::into_response(drover_api::error::ApiError::from(error));
        assert_eq!(api.status(), 503);
        assert!(api.headers().contains_key("retry-after"));
    }
    let readiness = rig.service.readiness().await;
    assert!(!readiness.ready && !readiness.checks["store"].ok, "{readiness:?}");
    let reason = readiness.checks["store"].message.clone().unwrap_or_default();
    assert!(reason.contains("watermark"), "{reason}");

    std::fs::remove_file(&filler).unwrap();
    assert!(rig.service.readiness().await.checks["store"].ok);
    submit(&rig, "ok").await;
}

/// Issue 17: `/metrics` showed `drover_simulator_billed_usd -0` while the simulator had billed
/// nothing (an empty floating-point sum is negative zero). The service's gauges are read at
/// each refresh and a zero is written as `0.0`.
#[tokio::test]
async fn metrics_write_an_empty_bill_as_zero_not_negative_zero() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    let billing = Arc::new(
        Simulator::start("127.0.0.1:0".parse().unwrap(), SimConfig::default()).await.unwrap(),
    );
    let read = Arc::clone(&billing);
    let ledger = drover_service::SimulatorLedger(Arc::new(move || {
        let ledger = read.ledger();
        (ledger.total_usd(), ledger.live().len())
    }));
    assert!(billing.ledger().total_usd().is_sign_negative(), "the cause: an empty sum is -0");
    let config = ServiceConfig { simulator_ledger: Some(ledger), ..ServiceConfig::default() };
    let rig = rig_full(dir, store, config).await;
    let mut registry = drover_api::metrics::Registry::default();
    rig.service.register_metrics(&mut registry);
    let metrics = drover_api::metrics::ApiMetrics::new(registry);
    rig.service.refresh_metrics().await;
    let text = metrics.render();
    for line in ["drover_simulator_billed_usd 0.0\n", "drover_simulator_live_instances 0\n"] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    for line in ["drover_jobs_active 0\n", "drover_leases_open 0\n", "drover_ledger_usd 0.0\n"] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert!(!text.contains(" -0"), "{text}");
    assert!(text.contains("# TYPE drover_ledger_usd gauge"), "{text}");
}

// --- Replicas on one store (drover_service::fleet) --------------------------------------------

/// Two replicas (each its own service, provisioner and replica id) on one SQLite file.
async fn two_replicas() -> (Rig, Rig) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let a = rig_with(dir, SqliteStore::open_in(&path).await.unwrap()).await;
    let b_dir = tempfile::tempdir().unwrap();
    let b = rig_with(b_dir, SqliteStore::open_in(&path).await.unwrap()).await;
    (a, b)
}

async fn wait_for_state(rig: &Rig, id: &JobId, phase: JobPhase) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rig.service.job(id).await.unwrap().unwrap().state != phase {
        assert!(std::time::Instant::now() < deadline, "{id} never reached {phase:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_streams_and_cancels_a_job_another_replica_runs() {
    let (a, b) = two_replicas().await;
    let _watch = a.service.watch_fleet();
    let id = submit(&a, "hang").await;
    wait_for_state(&b, &id, JobPhase::Running).await;
    // Followed on b, which never ran it: the store is polled.
    let follower = {
        let stream = b.service.events(&id, 0).await.unwrap();
        tokio::spawn(tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>()))
    };
    // Cancelled through b: left for a, which owns it and stops it.
    let job = b.service.cancel(&id, "t").await.unwrap();
    assert_eq!(job.state, JobPhase::Running, "the owner acts on it, not b");
    let events = follower.await.unwrap().expect("b's stream ends with the job");
    let phases: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            JobEventKind::JobState(s) => Some(s.state),
            _ => None,
        })
        .collect();
    assert_eq!(phases, [JobPhase::Queued, JobPhase::Running, JobPhase::Cancelled]);
    assert!(b.runner.dispatched.lock().is_empty(), "b never ran it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_jobs_are_taken_over_once_and_it_is_fenced_off() {
    let (a, b) = two_replicas().await;
    let running = submit(&a, "hang").await;
    let queued = submit(&a, "retry").await;
    wait_for_state(&a, &running, JobPhase::Running).await;
    // Nothing is an orphan while a is live.
    assert_eq!(b.service.take_over_orphans().await.unwrap(), (0, 0));

    // a stops counting as live (its row gone, as when its heartbeat expires) while its runs go on.
    let a_replica = a.service.provisioner().replica_id().to_owned();
    a.service.provisioner().retire().await;
    let (won, lost) = tokio::join!(b.service.take_over_orphans(), b.service.take_over_orphans());
    let (won, lost) = (won.unwrap(), lost.unwrap());
    assert_eq!((won.0 + lost.0, won.1 + lost.1), (1, 1), "each orphan taken over exactly once");
    assert!(drover_store::JobOwners::owns_job(b.service.store(), &running).await.unwrap());
    assert!(drover_store::JobOwners::owns_job(b.service.store(), &queued).await.unwrap());
    assert_eq!(b.service.job(&running).await.unwrap().unwrap().state, JobPhase::Failed);
    let why = message(&b, &running).await;
    assert!(
        why.contains(&format!("replica {a_replica} stopped while the job was running")),
        "{why}"
    );
    // The queued one now waits on b (its driver is still busy there).
    assert_eq!(b.service.running_jobs(), 1);

    // a comes back and its run ends (its driver reports `cancelled`): fenced off, nothing of
    // it is stored.
    assert!(a.runner.cancel(&running, "t").await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        states(&b, &running, 0).await,
        [JobPhase::Queued, JobPhase::Running, JobPhase::Failed]
    );
    assert_eq!(message(&b, &running).await, why, "the old owner's cancel was refused");
}
