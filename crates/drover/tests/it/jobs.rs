//! `drover jobs` and `drover estimate` as a user runs them: the real binary against a real
//! API server (the `drover-api` router on a loopback listener) over the real backend
//! (`drover-service` with a SQLite store and the gated provisioner on the Vast.ai simulator).
//! Only the job runner is a double here, a scripted "driver" that counts steps; the supervisor
//! with real drivers is exercised by the end-to-end tests of `drover serve`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use drover_api::backend::SchemaLookupError;
use drover_api::token::ApiToken;
use drover_api::{ApiState, Auditor, BoxFuture, serve};
use drover_proto::api::{DriverHealth, DriverList, DriverView, JobEventKind};
use drover_proto::config::{ApiConfig, RateLimitConfig, Scope, TokenEntry, TokenFormat};
use drover_proto::{
    ActionName, DriverName, JobId, JobLog, JobPhase, JobProgress, JobResult, JobState, LogStream,
    Outcome, ParamsSchema,
};
use drover_provision::{Clock, Provisioner, ProvisionerConfig};
use drover_service::{Dispatch, JobRunner, RunError, Service, ServiceConfig};
use drover_store::SqliteStore;
use drover_supervisor::JobEvent;
use drover_vast::{RetryPolicy, VastClient};
use drover_vast_sim::{SimConfig, Simulator};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// A driver double: `steps` steps of 100 ms, each with progress and a log line; cancellable.
#[derive(Default)]
struct Counter {
    running: Mutex<BTreeMap<JobId, watch::Sender<bool>>>,
}

fn schema() -> Arc<ParamsSchema> {
    Arc::new(ParamsSchema(json!({
        "type": "object",
        "properties": {"steps": {"type": "integer", "minimum": 1, "maximum": 1000}},
        "required": ["steps"],
        "additionalProperties": false
    })))
}

impl JobRunner for Counter {
    fn dispatch(
        &self,
        request: Dispatch,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<JobEvent>, RunError>> {
        Box::pin(async move {
            if request.driver.as_str() != "counter" {
                return Err(RunError::Refused(format!("no driver named {}", request.driver)));
            }
            let steps = request.params["steps"].as_u64().unwrap();
            let (tx, rx) = mpsc::channel(64);
            let (cancel, mut cancelled) = watch::channel(false);
            self.running.lock().insert(request.job_id.clone(), cancel);
            let id = request.job_id;
            tokio::spawn(async move {
                let send = |kind| {
                    let tx = tx.clone();
                    async move { tx.send(JobEvent::Job(kind)).await.unwrap() }
                };
                let phase = |state| {
                    JobEventKind::JobState(JobState { job_id: id.clone(), state, message: None })
                };
                send(phase(JobPhase::Starting)).await;
                send(phase(JobPhase::Running)).await;
                for step in 1..=steps {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = cancelled.changed() => {
                            send(JobEventKind::JobResult(JobResult { job_id: id.clone(), outcome: Outcome::Cancelled, output: None, message: None })).await;
                            send(phase(JobPhase::Cancelled)).await;
                            return;
                        }
                    }
                    send(JobEventKind::JobProgress(JobProgress {
                        job_id: id.clone(),
                        current: step as f64,
                        total: Some(steps as f64),
                        unit: Some("steps".to_owned()),
                        message: None,
                    }))
                    .await;
                    send(JobEventKind::JobLog(JobLog {
                        job_id: id.clone(),
                        stream: LogStream::Stdout,
                        lines: vec![format!("step {step}")],
                        dropped: 0,
                    }))
                    .await;
                }
                send(JobEventKind::JobResult(JobResult {
                    job_id: id.clone(),
                    outcome: Outcome::Succeeded,
                    output: Some(json!({"steps": steps})),
                    message: None,
                }))
                .await;
                send(phase(JobPhase::Succeeded)).await;
            });
            Ok(rx)
        })
    }

    fn cancel<'a>(&'a self, job_id: &'a JobId, _reason: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match self.running.lock().get(job_id) {
                Some(cancel) => cancel.send(true).is_ok(),
                None => false,
            }
        })
    }

    fn drivers(&self) -> BoxFuture<'_, DriverList> {
        Box::pin(async move {
            let mut actions = BTreeMap::new();
            actions.insert("run".parse().unwrap(), (*schema()).clone());
            DriverList {
                drivers: vec![DriverView {
                    name: "counter".parse().unwrap(),
                    version: Some("1.0.0".to_owned()),
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
        driver: &DriverName,
        action: &ActionName,
    ) -> Result<Arc<ParamsSchema>, SchemaLookupError> {
        if driver.as_str() != "counter" {
            return Err(SchemaLookupError::UnknownDriver);
        }
        if action.as_str() != "run" {
            return Err(SchemaLookupError::UnknownAction);
        }
        Ok(schema())
    }
}

struct Server {
    url: String,
    token: String,
    reader: String,
    _stop: std::sync::mpsc::Sender<()>,
    _dir: tempfile::TempDir,
}

/// Starts the whole server on its own runtime thread.
fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let admin = ApiToken::generate().unwrap();
    let reader = ApiToken::generate().unwrap();
    let entry = |name: &str, token: &ApiToken, scopes: &[Scope]| TokenEntry {
        name: name.to_owned(),
        sha256: token.sha256_hex(),
        scopes: scopes.to_vec(),
        format: TokenFormat::DroverV1,
        revoked: false,
    };
    let config = ApiConfig {
        tokens: vec![
            entry("admin", &admin, Scope::ALL),
            entry("reader", &reader, &[Scope::JobsRead]),
        ],
        rate_limit: RateLimitConfig { per_second: 10_000, burst: 10_000 },
        ..ApiConfig::default()
    };
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let clock = Clock::scaled(100.0);
            let sim = Simulator::start(
                "127.0.0.1:0".parse().unwrap(),
                SimConfig { clock, ..SimConfig::default() },
            )
            .await
            .unwrap();
            let client = VastClient::new(
                sim.base_url(),
                drover_vast::ApiKey::new("sim-key-for-tests").unwrap(),
                RetryPolicy::default(),
            )
            .unwrap();
            let store = SqliteStore::open_in(&path).await.unwrap();
            let provisioner = Arc::new(
                Provisioner::start(client, store.clone(), ProvisionerConfig::new("test"), clock)
                    .await
                    .unwrap(),
            );
            let service = Service::new(
                store,
                Arc::new(Counter::default()),
                provisioner,
                ServiceConfig::default(),
            );
            service.recover().await.unwrap();
            let auditor = Auditor::start(service.clone(), None);
            let state = ApiState::new(&config, false, service.clone(), auditor).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            url_tx.send(format!("http://{}", listener.local_addr().unwrap())).unwrap();
            let stop = tokio::task::spawn_blocking(move || {
                let _ = stopped.recv();
            });
            serve(listener, state, async move {
                let _ = stop.await;
            })
            .await
            .unwrap();
            drop(sim);
        });
    });
    let url = url_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    Server {
        url,
        token: admin.expose().to_owned(),
        reader: reader.expose().to_owned(),
        _stop: stop,
        _dir: dir,
    }
}

fn drover(server: &Server, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
    command.args(args).arg("--url").arg(&server.url).env_remove("DROVER_TOKEN");
    if let Some(token) = token {
        command.env("DROVER_TOKEN", token);
    }
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_jobs_cli_against_a_real_server() {
    let server = server();
    let token = Some(server.token.as_str());
    let job = |steps: u32| {
        json!({"driver": "counter", "action": "run", "params": {"steps": steps},
               "max_runtime_s": 60, "budget_usd": 1.0, "labels": {"suite": "cli"}})
        .to_string()
    };

    // No token: the command cannot run, and says which variable to set.
    let out = drover(&server, None, &["jobs", "list"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("DROVER_TOKEN is not set"), "{}", text(&out.stderr));

    // Submit from stdin: a table line with the id and state.
    let out = drover(&server, token, &["jobs", "submit", "-"], Some(&job(5)));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let id = line.split_whitespace().next().unwrap().to_owned();
    assert!(id.starts_with("job-"), "{line}");
    assert!(line.contains("queued"), "{line}");

    // Follow it to the end, piped: plain lines, in order, exit 0.
    let out = drover(&server, token, &["jobs", "logs", &id, "--follow"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let logs = text(&out.stdout);
    let expected = [
        "[state] queued",
        "[state] starting",
        "[state] running",
        "[progress] 1/5 steps",
        "stdout | step 1",
        "[progress] 5/5 steps",
        "stdout | step 5",
        "[result] succeeded {\"steps\":5}",
        "[state] succeeded",
    ];
    let mut at = 0;
    for want in expected {
        let found = logs[at..].find(want).unwrap_or_else(|| panic!("{want:?} missing in\n{logs}"));
        at += found + want.len();
    }
    assert!(!logs.contains('\r') && !logs.contains('\x1b'), "piped output has no terminal codes");

    // Show, as a table and as JSON.
    let out = drover(&server, token, &["jobs", "show", &id], None);
    assert_eq!(out.status.code(), Some(0));
    let shown = text(&out.stdout);
    assert!(shown.contains("state         succeeded"), "{shown}");
    assert!(shown.contains("output        {\"steps\":5}"), "{shown}");
    let out = drover(&server, token, &["jobs", "show", &id, "--json"], None);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "succeeded");
    assert_eq!(json["submitted_by"], "admin");

    // An invalid job: exit 1, and the error names the field.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), job(0)).unwrap();
    let out = drover(&server, token, &["jobs", "submit", file.path().to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid_request") && stderr.contains("field /params/steps"),
        "{stderr}"
    );
    assert!(!stderr.contains(&server.token), "the token never appears");

    // Idempotent submission: the same key twice is one job.
    let args = ["jobs", "submit", "-", "--idempotency-key", "cli-once"];
    let first = text(&drover(&server, token, &args, Some(&job(1))).stdout);
    let again = text(&drover(&server, token, &args, Some(&job(1))).stdout);
    assert_eq!(first.split_whitespace().next(), again.split_whitespace().next());
    assert!(again.contains("(replayed)"), "{again}");

    // Cancel a long job mid-run; following it then exits 1 (it ended cancelled).
    let out = drover(&server, token, &["jobs", "submit", "-"], Some(&job(600)));
    let long = text(&out.stdout).split_whitespace().next().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = drover(&server, token, &["jobs", "show", &long, "--json"], None);
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        if json["state"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the long job never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = drover(&server, token, &["jobs", "cancel", &long], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = drover(&server, token, &["jobs", "logs", &long, "--follow"], None);
    assert_eq!(out.status.code(), Some(1), "a cancelled job exits 1");
    assert!(text(&out.stdout).contains("[state] cancelled"), "{}", text(&out.stdout));
    let out = drover(&server, token, &["jobs", "cancel", &long], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "cancelling an ended job is a conflict: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("HTTP 409 conflict"), "{}", text(&out.stderr));

    // Lists: a table with a header, filters, JSON.
    let out = drover(&server, token, &["jobs", "list", "--state", "cancelled"], None);
    let table = text(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&long) && !table.contains(&id), "{table}");
    let out = drover(&server, token, &["jobs", "list", "--label", "suite=cli", "--json"], None);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["jobs"].as_array().unwrap().len(), 3);

    // A read-only token cannot submit: 403, exit 1.
    let out = drover(&server, Some(&server.reader), &["jobs", "submit", "-"], Some(&job(1)));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("HTTP 403 forbidden"), "{}", text(&out.stderr));

    // Estimates through the real gate on the simulator's offers: allowed with a generous
    // budget (exit 0), refused with a tiny one (exit 1), numbers shown either way.
    let spec = json!({"driver": "counter", "action": "run", "params": {"steps": 1},
        "gpu": {"count": 1}, "max_runtime_s": 600, "budget_usd": 50.0})
    .to_string();
    let out = drover(&server, token, &["estimate", "-"], Some(&spec));
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}{}", text(&out.stderr));
    assert!(shown.contains("decision    allowed") && shown.contains("worst case"), "{shown}");
    let tiny = spec.replace("50.0", "0.001");
    let out = drover(&server, token, &["estimate", "-", "--json"], Some(&tiny));
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["allowed"], false);
    assert!(json["estimate"]["confidence"].as_f64().unwrap() < 0.95, "{json}");
}
