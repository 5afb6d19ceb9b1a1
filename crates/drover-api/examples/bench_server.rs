//! The two servers `benches/api.sh` loads, in one process so they share the machine alike:
//!
//! - **api**: the real router ([`drover_api::router`]): token authentication, rate limiting,
//!   content-type and size checks, strict JSON, the `JobSpec` schema, the driver's params
//!   schema, the job made durable in a real SQLite store (WAL, `synchronous = FULL`) in the
//!   directory given (tmpfs in the benchmark), audit events written in batches to the same
//!   store;
//! - **volatile**: the same router and checks over a backend whose `submit` keeps nothing (it
//!   answers with the job as the store would, without writing it). It is not a product
//!   configuration: it separates what the API layer costs from what durability costs;
//! - **bare**: axum with one handler that echoes the body of `POST /v1/jobs`.
//!
//! Usage: `bench_server DIR`. Writes `DIR/token` (mode 0600; the token never goes to stdout),
//! prints `api=ADDR volatile=ADDR bare=ADDR` on stdout, and serves until stdin closes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use drover_api::backend::{
    Backend, BackendError, BoxFuture, EventStream, JobQuery, SchemaLookupError, Submission,
    Submitted,
};
use drover_api::{ApiState, Auditor, serve};
use drover_proto::api::{
    AuditEvent, DriverList, EstimateRequest, EstimateResponse, Job, JobList, Readiness,
};
use drover_proto::config::RateLimitConfig;
use drover_proto::{ActionName, DriverName, JobId, JobPhase, ParamsSchema};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncReadExt as _;

#[tokio::main]
async fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: bench_server DIR"));
    let backend = Arc::new(common::StoreBackend::open(&dir.join("data")).await);
    let tokens = common::tokens();
    let config =
        common::config(&tokens, RateLimitConfig { per_second: 1_000_000, burst: 1_000_000 });
    let auditor = Auditor::start(backend.clone(), None);
    let state = ApiState::new(&config, false, backend.clone(), auditor).unwrap();
    let volatile_backend = Arc::new(Volatile { inner: backend, next: AtomicU64::new(1) });
    let volatile_auditor = Auditor::start(volatile_backend.clone(), None);
    let volatile_state = ApiState::new(&config, false, volatile_backend, volatile_auditor).unwrap();

    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(dir.join("token"))
        .unwrap();
    file.write_all(tokens.admin.expose().as_bytes()).unwrap();

    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let volatile = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = Router::new().route("/v1/jobs", post(|body: Bytes| async move { body }));
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "api={} volatile={} bare={}",
        api.local_addr().unwrap(),
        volatile.local_addr().unwrap(),
        bare.local_addr().unwrap()
    )
    .unwrap();
    stdout.flush().unwrap();
    drop(stdout);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api_server = tokio::spawn(serve(api, state, until_stop(stopped.clone())));
    let volatile_server =
        tokio::spawn(serve(volatile, volatile_state, until_stop(stopped.clone())));
    let bare_server = tokio::spawn(async move {
        axum::serve(bare, echo).with_graceful_shutdown(until_stop(stopped)).await
    });
    // Serve until the benchmark closes our stdin.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let _ = stop.send(true);
    let _ = api_server.await;
    let _ = volatile_server.await;
    let _ = bare_server.await;
}

/// The store-backed backend with a `submit` that writes nothing, and audit events dropped.
struct Volatile {
    inner: Arc<common::StoreBackend>,
    next: AtomicU64,
}

impl Backend for Volatile {
    fn submit(&self, submission: Submission) -> BoxFuture<'_, Result<Submitted, BackendError>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let now = common::now_ms();
        let job = Job {
            id: format!("job-{n}").parse().unwrap(),
            state: JobPhase::Queued,
            spec: submission.spec,
            submitted_by: submission.actor,
            created_unix_ms: now,
            updated_unix_ms: now,
            message: None,
            output: None,
        };
        Box::pin(async move { Ok(Submitted { job, replayed: false }) })
    }
    fn job<'a>(&'a self, id: &'a JobId) -> BoxFuture<'a, Result<Option<Job>, BackendError>> {
        self.inner.job(id)
    }
    fn jobs(&self, query: JobQuery) -> BoxFuture<'_, Result<JobList, BackendError>> {
        self.inner.jobs(query)
    }
    fn cancel<'a>(
        &'a self,
        id: &'a JobId,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<Job, BackendError>> {
        self.inner.cancel(id, actor)
    }
    fn events<'a>(
        &'a self,
        id: &'a JobId,
        after: u64,
    ) -> BoxFuture<'a, Result<EventStream, BackendError>> {
        self.inner.events(id, after)
    }
    fn drivers(&self) -> BoxFuture<'_, Result<DriverList, BackendError>> {
        self.inner.drivers()
    }
    fn params_schema(
        &self,
        driver: &DriverName,
        action: &ActionName,
    ) -> Result<Arc<ParamsSchema>, SchemaLookupError> {
        self.inner.params_schema(driver, action)
    }
    fn estimate(
        &self,
        request: EstimateRequest,
    ) -> BoxFuture<'_, Result<EstimateResponse, BackendError>> {
        self.inner.estimate(request)
    }
    fn readiness(&self) -> BoxFuture<'_, Readiness> {
        self.inner.readiness()
    }
    fn audit(&self, _events: Vec<AuditEvent>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
}
