//! A [`Backend`] for the API tests and the benchmark: jobs go to a real `SqliteStore` (so
//! "acknowledged only once durable" is the store's real behaviour), drivers are a fixed
//! registry, estimates are computed by a fixed rule, and two labels inject faults:
//! `drover-test/fault=internal` makes `submit` fail with an error whose text is full of
//! internals (a path, SQL), `drover-test/fault=panic` makes it panic with such a message.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use drover_api::backend::{
    Backend, BackendError, BoxFuture, EventStream, JobQuery, SchemaLookupError, Submission,
    Submitted,
};
use drover_proto::api::{
    AuditEvent, Check, DriverHealth, DriverList, DriverView, EstimateRequest, EstimateResponse,
    Job, JobEventKind, JobList, Readiness,
};
use drover_proto::config::{
    ApiConfig, ApiLimitsConfig, RateLimitConfig, Scope, TokenEntry, TokenFormat,
};
use drover_proto::{ActionName, CostEstimate, DriverName, JobId, JobPhase, JobState, ParamsSchema};
use drover_store::{Idempotency, JobFilter, NewJob, SqliteStore, Store, StoreError};
use futures_util::StreamExt;
use tokio::sync::broadcast;

/// The internals a forced error carries; no response may show any of them.
pub const INTERNAL_TEXT: &str = "/home/drover/crates/drover-store/src/sqlite.rs:42: SQL error: no such table: jobs_v2 (INSERT INTO jobs_v2 ...)";
/// What a forced panic says.
pub const PANIC_TEXT: &str =
    "index out of bounds at /home/drover/crates/drover-api/src/routes.rs:99";

pub const FAULT_LABEL: &str = "drover-test/fault";

#[derive(Debug)]
pub struct StoreBackend {
    pub store: SqliteStore,
    drivers: BTreeMap<DriverName, BTreeMap<ActionName, Arc<ParamsSchema>>>,
    live: broadcast::Sender<drover_proto::api::JobEvent>,
    next_id: AtomicU64,
    pub audit: Mutex<Vec<AuditEvent>>,
    /// `drover_jobs`: jobs in the store (up to 100), set by `refresh_metrics`.
    pub jobs_gauge: prometheus_client::metrics::gauge::Gauge,
}

pub fn echo_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 0, "maximum": 10},
            "text": {"type": "string", "maxLength": 64}
        },
        "required": ["n"],
        "additionalProperties": false
    })
}

impl StoreBackend {
    pub fn new(store: SqliteStore) -> Self {
        let mut echo = BTreeMap::new();
        echo.insert("run".parse().unwrap(), Arc::new(ParamsSchema(echo_schema())));
        let mut drivers = BTreeMap::new();
        drivers.insert("echo".parse().unwrap(), echo);
        let (live, _) = broadcast::channel(1024);
        Self {
            store,
            drivers,
            live,
            next_id: AtomicU64::new(1),
            audit: Mutex::new(Vec::new()),
            jobs_gauge: Default::default(),
        }
    }

    pub async fn open(dir: &std::path::Path) -> Self {
        Self::new(SqliteStore::open_in(dir).await.unwrap())
    }

    /// Records an event as a driver would, and publishes it to live streams.
    pub async fn push(&self, id: &JobId, event: JobEventKind) {
        let stored = self.store.append_event(id, now_ms(), event).await.unwrap();
        let _ = self.live.send(stored);
    }

    fn new_id(&self) -> JobId {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).unwrap();
        format!("job-{n}-{}", hex::encode(random)).parse().unwrap()
    }
}

pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
    )
    .unwrap()
}

fn store_error(error: StoreError) -> BackendError {
    match error {
        StoreError::IdempotencyConflict => BackendError::IdempotencyConflict,
        StoreError::JobNotFound(_) => BackendError::NotFound,
        StoreError::JobFinished { .. } => BackendError::Conflict("the job has already ended"),
        other => BackendError::internal(other),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Leaky(&'static str);

impl Backend for StoreBackend {
    fn submit(&self, submission: Submission) -> BoxFuture<'_, Result<Submitted, BackendError>> {
        Box::pin(async move {
            match submission.spec.labels.get(FAULT_LABEL).map(String::as_str) {
                Some("internal") => {
                    return Err(BackendError::Internal(Box::new(std::io::Error::other(Leaky(
                        INTERNAL_TEXT,
                    )))));
                }
                Some("panic") => panic!("{PANIC_TEXT}"),
                _ => {}
            }
            let new = NewJob {
                id: self.new_id(),
                spec: submission.spec,
                submitted_by: submission.actor,
                at_unix_ms: now_ms(),
                idempotency: submission
                    .idempotency
                    .map(|(key, request_sha256)| Idempotency { key, request_sha256 }),
            };
            let done = self.store.submit_job(new).await.map_err(store_error)?;
            Ok(Submitted { job: done.job, replayed: done.replayed })
        })
    }

    fn job<'a>(&'a self, id: &'a JobId) -> BoxFuture<'a, Result<Option<Job>, BackendError>> {
        Box::pin(async move { self.store.get_job(id).await.map_err(store_error) })
    }

    fn jobs(&self, query: JobQuery) -> BoxFuture<'_, Result<JobList, BackendError>> {
        Box::pin(async move {
            let filter = JobFilter {
                state: query.state,
                driver: query.driver.map(|d| d.to_string()),
                label: query.label,
                before: query.cursor.map(|c| i64::try_from(c).unwrap_or(i64::MAX)),
                limit: query.limit,
                submitted_by: query.submitted_by,
            };
            let page = self.store.list_jobs(&filter).await.map_err(store_error)?;
            Ok(JobList { jobs: page.jobs, next_cursor: page.next_cursor.map(|c| c.to_string()) })
        })
    }

    fn cancel<'a>(
        &'a self,
        id: &'a JobId,
        _actor: &'a str,
    ) -> BoxFuture<'a, Result<Job, BackendError>> {
        Box::pin(async move {
            let event = JobEventKind::JobState(JobState {
                job_id: id.clone(),
                state: JobPhase::Cancelled,
                message: Some("cancelled through the API".to_owned()),
            });
            let stored = self.store.append_event(id, now_ms(), event).await.map_err(store_error)?;
            let _ = self.live.send(stored);
            self.store.get_job(id).await.map_err(store_error)?.ok_or(BackendError::NotFound)
        })
    }

    fn events<'a>(
        &'a self,
        id: &'a JobId,
        after: u64,
    ) -> BoxFuture<'a, Result<EventStream, BackendError>> {
        Box::pin(async move {
            // Subscribe first, then read history, so nothing falls between the two.
            let mut live = self.live.subscribe();
            let job =
                self.store.get_job(id).await.map_err(store_error)?.ok_or(BackendError::NotFound)?;
            let history = self.store.events_after(id, after, 10_000).await.map_err(store_error)?;
            let mut last = history.last().map_or(after, |e| e.seq);
            let ended = job.state.is_terminal()
                || history.iter().any(
                    |e| matches!(&e.event, JobEventKind::JobState(s) if s.state.is_terminal()),
                );
            let id = id.clone();
            let stream = async_stream(history, move |tx| async move {
                if ended {
                    return;
                }
                while let Ok(event) = live.recv().await {
                    if event.event.job_id() != &id || event.seq <= last {
                        continue;
                    }
                    last = event.seq;
                    let terminal =
                        matches!(&event.event, JobEventKind::JobState(s) if s.state.is_terminal());
                    if tx.send(event).await.is_err() || terminal {
                        return;
                    }
                }
            });
            Ok(stream)
        })
    }

    fn drivers(&self) -> BoxFuture<'_, Result<DriverList, BackendError>> {
        Box::pin(async move {
            Ok(DriverList {
                drivers: self
                    .drivers
                    .iter()
                    .map(|(name, actions)| DriverView {
                        name: name.clone(),
                        version: Some("0.1.0".to_owned()),
                        health: DriverHealth::Ready,
                        ready_sessions: 1,
                        actions: actions.iter().map(|(a, s)| (a.clone(), (**s).clone())).collect(),
                        gpus: Vec::new(),
                    })
                    .collect(),
            })
        })
    }

    fn params_schema(
        &self,
        driver: &DriverName,
        action: &ActionName,
    ) -> Result<Arc<ParamsSchema>, SchemaLookupError> {
        let actions = self.drivers.get(driver).ok_or(SchemaLookupError::UnknownDriver)?;
        actions.get(action).cloned().ok_or(SchemaLookupError::UnknownAction)
    }

    fn estimate(
        &self,
        request: EstimateRequest,
    ) -> BoxFuture<'_, Result<EstimateResponse, BackendError>> {
        Box::pin(async move {
            let hours = f64::from(request.max_runtime_s) / 3600.0;
            let rate = request.gpu.max_usd_per_hour.unwrap_or(0.5);
            let worst = hours * rate;
            let confidence = if worst <= request.budget_usd { 0.99 } else { 0.2 };
            Ok(EstimateResponse {
                allowed: confidence >= 0.95,
                estimate: Some(CostEstimate {
                    expected_usd: worst * 0.7,
                    p95_usd: worst * 0.9,
                    worst_usd: worst,
                    confidence,
                }),
                confidence_floor: 0.95,
                reason: (confidence < 0.95)
                    .then(|| "the budget does not cover the runtime cap".to_owned()),
                offer: None,
            })
        })
    }

    fn readiness(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async move {
            let store = self.store.ping().await.is_ok();
            let mut checks = BTreeMap::new();
            checks.insert("store".to_owned(), Check { ok: store, message: None });
            Readiness { ready: store, checks }
        })
    }

    fn audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.store.append_audit_batch(&events).await.map_err(store_error)?;
            self.audit.lock().extend(events);
            Ok(())
        })
    }

    fn refresh_metrics(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            let filter = JobFilter { limit: 100, ..JobFilter::default() };
            if let Ok(page) = self.store.list_jobs(&filter).await {
                self.jobs_gauge.set(page.jobs.len() as i64);
            }
        })
    }
}

/// A stream of `first` followed by what `producer` sends.
fn async_stream<F, Fut>(first: Vec<drover_proto::api::JobEvent>, producer: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<drover_proto::api::JobEvent>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(producer(tx));
    let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
    Box::pin(futures_util::stream::iter(first).chain(rest))
}

// --- tokens and state ---------------------------------------------------------------------------

pub struct Tokens {
    pub admin: drover_api::token::ApiToken,
    pub reader: drover_api::token::ApiToken,
    /// `jobs:read` and `jobs:write`, no `jobs:admin`: a tenant that sees only its own jobs.
    pub tenant: drover_api::token::ApiToken,
    pub metrics: drover_api::token::ApiToken,
    pub revoked: drover_api::token::ApiToken,
    pub unknown: drover_api::token::ApiToken,
}

pub fn tokens() -> Tokens {
    use drover_api::token::ApiToken;
    Tokens {
        admin: ApiToken::generate().unwrap(),
        reader: ApiToken::generate().unwrap(),
        tenant: ApiToken::generate().unwrap(),
        metrics: ApiToken::generate().unwrap(),
        revoked: ApiToken::generate().unwrap(),
        unknown: ApiToken::generate().unwrap(),
    }
}

pub fn entry(
    name: &str,
    token: &drover_api::token::ApiToken,
    scopes: &[Scope],
    revoked: bool,
) -> TokenEntry {
    TokenEntry {
        name: name.to_owned(),
        sha256: token.sha256_hex(),
        scopes: scopes.to_vec(),
        format: TokenFormat::DroverV1,
        revoked,
    }
}

pub fn config(tokens: &Tokens, rate: RateLimitConfig) -> ApiConfig {
    ApiConfig {
        max_body_bytes: 4096,
        tokens: vec![
            entry("admin", &tokens.admin, Scope::ALL, false),
            entry("reader", &tokens.reader, &[Scope::JobsRead], false),
            entry("tenant", &tokens.tenant, &[Scope::JobsRead, Scope::JobsWrite], false),
            entry("prometheus", &tokens.metrics, &[Scope::MetricsRead], false),
            entry("retired", &tokens.revoked, Scope::ALL, true),
        ],
        rate_limit: rate,
        // Most tests send many requests without a token from one (absent) peer.
        limits: ApiLimitsConfig {
            unauthenticated_per_second: 100_000,
            unauthenticated_burst: 100_000,
            ..ApiLimitsConfig::default()
        },
        ..ApiConfig::default()
    }
}

pub fn generous() -> RateLimitConfig {
    RateLimitConfig { per_second: 100_000, burst: 100_000 }
}
