//! drover's API backend: the real [`drover_api::Backend`], over the store, the job runner
//! (the supervisor) and the gated provisioner.
//!
//! ```text
//! POST /v1/jobs ─> Service::submit ─> Store::submit_job (durable) ─> 201
//!                                         └─> job task: dispatch (retried while the driver is
//!                                             starting or busy) ─> events ─> Store::append_event
//!                                                                          └─> live SSE streams
//! DELETE /v1/jobs/{id} ─> runner.cancel (running) or a `cancelled` state (still queued)
//! POST /v1/estimates  ─> Provisioner::dry_run: quote, estimate, gate; nothing rented
//! ```
//!
//! Rules this module keeps:
//!
//! - A job is acknowledged only once the store has committed it ([`Store::submit_job`]); an
//!   `Idempotency-Key` replay returns the earlier job and dispatches nothing.
//! - Every event of a running job is stored before it is streamed; streams read the stored
//!   history first and then live events, so a client sees every event once, in order, and
//!   resumes with `Last-Event-ID`. The store refuses anything after a terminal state.
//! - A job always ends: when the runner's channel closes without a terminal state, or the
//!   dispatch is refused, or the job's deadline passes while it waits for a driver, the
//!   service records `failed` with the reason.
//! - At start ([`Service::recover`]) jobs a previous run left `queued` are dispatched again;
//!   jobs it left `starting` or `running` are recorded `failed` (their driver is gone, and the
//!   provisioner's start-up reaper has destroyed any instance they rented).
//! - [`Service::shutdown`] stops accepting jobs (503), then cancels every running job and
//!   waits for them to end (up to a grace period, default 10 s), or, in `drain` mode, lets
//!   them finish within the grace period and cancels the rest; the caller then shuts the
//!   supervisor down and releases every lease.
//! - A job's leases end with the job: any lease of an ended job still open (its driver died
//!   holding it, say) is released.
//! - Readiness says loudly when the provider is the embedded simulator, and says "not ready"
//!   while the store cannot write (its last write failed and a probe write fails too).
//!
//! - A job's log lines are stored up to its log quota ([`ServiceConfig::log_quota_bytes`],
//!   default 16 MiB of line text per job); lines beyond it are dropped and counted, and one
//!   `job_log` event recorded just before the job's terminal state says how many lines and
//!   bytes were dropped (its `dropped` field is the line count). One chatty job cannot fill
//!   the store's volume.
//!
//! - Below a disk-space watermark on the store's volume ([`ServiceConfig::min_free_bytes`],
//!   default 64 MiB free, measured with `statvfs` on [`ServiceConfig::data_volume`]) new
//!   jobs are refused with 503 `storage_low` and `Retry-After` before the store fails, and
//!   readiness is not ready with the reason; once space returns submits succeed again.
//!
//! Defaults ([`ServiceConfig::default`]): dispatch retried every 500 ms while a driver is
//! starting or busy, shutdown mode `cancel` with a 10 s grace period, no webhooks, a 16 MiB
//! log quota per job.

#![forbid(unsafe_code)]

mod backend;
pub mod broker;
mod config;
pub mod fleet;
pub mod metrics;
mod quota;
pub mod runner;
pub mod supervisor;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use drover_api::backend::BackendError;
use drover_proto::api::{AuditEvent, Job, JobEvent, JobEventKind, WebhookEvent, WebhookKind};
use drover_proto::{JobId, JobPhase, JobState};
use drover_provision::Provisioner;
use drover_store::{Store, StoreError};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, watch};

pub use broker::ProvisionerBroker;
pub use config::{
    DEFAULT_LOG_QUOTA_BYTES, DEFAULT_MIN_FREE_BYTES, ProviderKind, SIMULATOR_NOTICE, ServiceConfig,
    SimulatorLedger,
};
pub use drover_supervisor::Dispatch;
use quota::LogQuota;
pub use runner::{JobRunner, RunError};
pub use supervisor::SupervisorRunner;

/// A job the service is running (waiting for a driver, or on one).
#[derive(Debug)]
struct Running {
    cancel: watch::Sender<Option<String>>,
    done: watch::Receiver<bool>,
}

/// The API backend. See the [module docs](self).
pub struct Service<S: Store> {
    store: S,
    provisioner: Arc<Provisioner<S>>,
    runner: Arc<dyn JobRunner>,
    config: ServiceConfig,
    live: broadcast::Sender<JobEvent>,
    running: Mutex<HashMap<JobId, Running>>,
    accepting: AtomicBool,
    metrics: metrics::ServiceMetrics,
    me: Weak<Self>,
}

impl<S: Store> std::fmt::Debug for Service<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("provider", &self.config.provider).finish_non_exhaustive()
    }
}

/// Unix time in milliseconds, never 0 (the API's timestamps have a minimum of 1).
pub fn now_ms() -> u64 {
    drover_proto::text::now_unix_ms().max(1)
}

fn new_job_id() -> Result<JobId, drover_proto::IdError> {
    let mut random = [0u8; 6];
    // Ids are not secrets; if the CSPRNG fails the clock still makes them unique enough.
    if getrandom::fill(&mut random).is_err() {
        random.copy_from_slice(&now_ms().to_le_bytes()[..6]);
    }
    JobId::new(format!("job-{:x}-{}", now_ms(), hex::encode(random)))
}

fn store_error(error: StoreError) -> BackendError {
    match error {
        StoreError::IdempotencyConflict => BackendError::IdempotencyConflict,
        StoreError::JobNotFound(_) => BackendError::NotFound,
        StoreError::JobFinished { .. } => BackendError::Conflict("the job has already ended"),
        other => BackendError::internal(other),
    }
}

fn state(job_id: &JobId, phase: JobPhase, message: impl Into<String>) -> JobEventKind {
    let mut message: String = message.into();
    let max = usize::try_from(drover_proto::limits::MESSAGE_LEN).unwrap_or(1024);
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    JobEventKind::JobState(JobState {
        job_id: job_id.clone(),
        state: phase,
        message: Some(message),
    })
}

impl<S: Store> Service<S> {
    /// A service over `store`, `runner` and `provisioner`. Call [`Service::recover`] before
    /// serving.
    pub fn new(
        store: S,
        runner: Arc<dyn JobRunner>,
        provisioner: Arc<Provisioner<S>>,
        config: ServiceConfig,
    ) -> Arc<Self> {
        let (live, _) = broadcast::channel(4096);
        // This replica's handle: the jobs it accepts are its own, and it writes only to
        // those (crate::fleet).
        let store = store.with_replica(provisioner.replica_id());
        Arc::new_cyclic(|me| Self {
            store,
            provisioner,
            runner,
            config,
            live,
            running: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            metrics: metrics::ServiceMetrics::default(),
            me: me.clone(),
        })
    }

    /// Adds the service's metrics to the shared registry (see [`metrics`]).
    pub fn register_metrics(&self, registry: &mut drover_api::metrics::Registry) {
        self.metrics.register(registry);
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The provisioner.
    pub fn provisioner(&self) -> &Arc<Provisioner<S>> {
        &self.provisioner
    }

    /// Jobs waiting for a driver or running on one.
    pub fn running_jobs(&self) -> usize {
        self.running.lock().len()
    }

    /// Takes over what a previous run, or a replica that died, left unfinished: `queued`
    /// jobs are dispatched again, `starting`/`running` ones are recorded `failed`
    /// ([`Service::take_over_orphans`]; a replica killed without retiring is taken over once
    /// its heartbeat expires, by [`Service::watch_fleet`]). Returns (resumed, failed).
    pub async fn recover(&self) -> Result<(usize, usize), StoreError> {
        self.take_over_orphans().await
    }

    /// Stops accepting jobs (new submissions get 503), then ends the running ones as
    /// `config.on_shutdown` says: `cancel` cancels them all at once and waits up to the grace
    /// period for them to end; `drain` lets them run for up to the grace period and cancels
    /// what is left (waiting a further grace period for those). Returns how many had not
    /// ended in the end.
    pub async fn shutdown(&self) -> usize {
        self.accepting.store(false, Ordering::SeqCst);
        let grace = self.config.shutdown_grace;
        if self.config.on_shutdown == drover_proto::config::ShutdownMode::Drain {
            tracing::info!(jobs = self.running_jobs(), ?grace, "draining: running jobs may finish");
            if tokio::time::timeout(grace, self.wait_all()).await.is_ok() {
                return 0;
            }
            tracing::warn!(left = self.running_jobs(), "drain period over: cancelling the rest");
        }
        let ids: Vec<JobId> = {
            let running = self.running.lock();
            running
                .iter()
                .map(|(id, run)| {
                    let _ = run.cancel.send(Some("the supervisor is shutting down".to_owned()));
                    id.clone()
                })
                .collect()
        };
        for id in &ids {
            self.runner.cancel(id, "the supervisor is shutting down").await;
        }
        if tokio::time::timeout(grace, self.wait_all()).await.is_err() {
            let left = self.running_jobs();
            tracing::warn!(left, "jobs did not end within the shutdown grace period");
            return left;
        }
        0
    }

    /// [`BackendError::StorageLow`] when the store's volume has less than the watermark
    /// free; a volume that cannot be measured is not refused (the store's own errors show).
    fn check_free_space(&self) -> Result<(), BackendError> {
        let Some(dir) = &self.config.data_volume else { return Ok(()) };
        let stat = match nix::sys::statvfs::statvfs(dir.as_path()) {
            Ok(stat) => stat,
            Err(error) => {
                tracing::warn!(%error, "the data directory's free space cannot be measured");
                return Ok(());
            }
        };
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        let free_bytes =
            u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
        let min_free_bytes = self.config.min_free_bytes;
        if free_bytes < min_free_bytes {
            return Err(BackendError::StorageLow { free_bytes, min_free_bytes });
        }
        Ok(())
    }

    /// Waits until no job is running.
    async fn wait_all(&self) {
        let waiting: Vec<watch::Receiver<bool>> =
            self.running.lock().values().map(|run| run.done.clone()).collect();
        for mut done in waiting {
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// Stores an event and publishes it to live streams. An event after the job's terminal
    /// state is dropped (the store refuses it).
    async fn record(&self, id: &JobId, event: JobEventKind) -> bool {
        match self.store.append_event(id, now_ms(), event).await {
            Ok(stored) => {
                let _ = self.live.send(stored);
                true
            }
            Err(StoreError::JobFinished { .. }) => false,
            Err(StoreError::JobTakenOver(_)) => {
                self.lost(id);
                false
            }
            Err(error) => {
                tracing::error!(job = %id, %error, "a job event could not be stored");
                false
            }
        }
    }

    async fn audit_internal(
        &self,
        action: &str,
        id: &JobId,
        result: &str,
        metadata: Map<String, Value>,
    ) {
        let event = AuditEvent {
            timestamp: drover_proto::text::rfc3339_ms(now_ms()),
            request_id: None,
            actor: "supervisor".to_owned(),
            action: action.to_owned(),
            resource: format!("job:{id}"),
            result: result.to_owned(),
            metadata,
        };
        if let Err(error) = self.store.append_audit(&event).await {
            tracing::warn!(%error, action, "audit event could not be stored");
        }
    }

    fn spawn(&self, job: Job) {
        let Some(me) = self.me.upgrade() else { return };
        let (cancel, cancelled) = watch::channel(None);
        let (done_tx, done) = watch::channel(false);
        self.running.lock().insert(job.id.clone(), Running { cancel, done });
        tokio::spawn(async move {
            let id = job.id.clone();
            me.run(job, cancelled).await;
            me.running.lock().remove(&id);
            let _ = done_tx.send(true);
        });
    }

    /// One job's life: dispatch (retried while the driver is not ready), events, the end.
    async fn run(&self, job: Job, mut cancelled: watch::Receiver<Option<String>>) {
        let id = job.id.clone();
        let max_runtime = Duration::from_secs(u64::from(job.spec.max_runtime_s));
        let deadline = tokio::time::Instant::now() + max_runtime;
        let request = Dispatch {
            job_id: id.clone(),
            driver: job.spec.driver.clone(),
            action: job.spec.action.clone(),
            params: job.spec.params.clone(),
            gpu: job.spec.gpu.clone(),
            max_runtime,
            budget_usd: job.spec.budget_usd,
        };
        let mut events = loop {
            let reason = cancelled.borrow().clone();
            if let Some(reason) = reason {
                self.record(&id, state(&id, JobPhase::Cancelled, reason)).await;
                return self.finished(&id).await;
            }
            let mut request = request.clone();
            request.max_runtime = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.runner.dispatch(request).await {
                Ok(events) => break events,
                Err(RunError::Retry(why)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(job = %id, %why, "driver not ready; dispatch retried");
                    tokio::select! {
                        () = tokio::time::sleep(self.config.dispatch_retry) => {}
                        _ = cancelled.changed() => {}
                    }
                }
                Err(error) => {
                    let message = match error {
                        RunError::Retry(why) => {
                            format!("no driver took the job before its deadline: {why}")
                        }
                        RunError::Refused(why) => format!("dispatch refused: {why}"),
                    };
                    self.record(&id, state(&id, JobPhase::Failed, message)).await;
                    return self.finished(&id).await;
                }
            }
        };
        // A cancel that arrived while dispatching reaches the runner now.
        let reason = cancelled.borrow().clone();
        if let Some(reason) = reason {
            self.runner.cancel(&id, &reason).await;
        }
        let mut ended = false;
        let mut watching_cancel = true;
        let mut quota = LogQuota::default();
        let quota_bytes = self.config.log_quota_bytes;
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    match event {
                        drover_supervisor::JobEvent::Job(kind) => {
                            if kind.job_id() != &id {
                                tracing::warn!(job = %id, other = %kind.job_id(), "runner sent another job's event; dropped");
                                continue;
                            }
                            let terminal = matches!(&kind, JobEventKind::JobState(s) if s.state.is_terminal());
                            let kind = match kind {
                                JobEventKind::JobLog(log) => match quota.admit(log, quota_bytes) {
                                    Some(log) => JobEventKind::JobLog(log),
                                    None => continue,
                                },
                                other => other,
                            };
                            if terminal && let Some(summary) = quota.summary(&id, quota_bytes) {
                                self.record(&id, summary).await;
                            }
                            self.record(&id, kind).await;
                            if terminal {
                                ended = true;
                            }
                        }
                        drover_supervisor::JobEvent::DriverDied { cause } => {
                            tracing::warn!(job = %id, %cause, "the driver died with the job running");
                            let mut metadata = Map::new();
                            metadata.insert("cause".to_owned(), Value::from(cause));
                            self.audit_internal("job.driver_died", &id, "error", metadata).await;
                        }
                    }
                }
                changed = cancelled.changed(), if watching_cancel => {
                    if changed.is_err() {
                        watching_cancel = false;
                        continue;
                    }
                    let reason = cancelled.borrow().clone();
                    if let Some(reason) = reason {
                        self.runner.cancel(&id, &reason).await;
                    }
                }
            }
        }
        if !ended {
            if let Some(summary) = quota.summary(&id, quota_bytes) {
                self.record(&id, summary).await;
            }
            let message = "the supervisor lost the job's driver session before the job ended";
            self.record(&id, state(&id, JobPhase::Failed, message)).await;
        }
        self.finished(&id).await;
    }

    /// Releases every lease of `id` that is still open: a job's rentals end with the job,
    /// even when its driver died holding them. A lease still being acquired is retried every
    /// second for up to a minute; after that the provisioner's lease deadline and reaper are
    /// the backstop.
    fn release_leases_of(&self, id: &JobId) {
        let Some(me) = self.me.upgrade() else { return };
        let id = id.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                let open = match me.store.open_leases().await {
                    Ok(open) => open,
                    Err(error) => {
                        tracing::warn!(job = %id, %error, "listing leases after the job ended");
                        return;
                    }
                };
                let mine: Vec<_> = open.into_iter().filter(|l| l.job_id == id).collect();
                if mine.is_empty() {
                    return;
                }
                let mut busy = false;
                for lease in mine {
                    match me.provisioner.release(&lease.lease_id, "supervisor").await {
                        Ok(_) => tracing::warn!(job = %id, lease = %lease.lease_id,
                            "the job ended with a lease still held; released"),
                        Err(drover_provision::LeaseError::Busy(_)) => busy = true,
                        Err(error) => tracing::warn!(job = %id, lease = %lease.lease_id, %error,
                            "releasing a lease of an ended job failed; the reaper will retry"),
                    }
                }
                if !busy {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// After a job's terminal state: its leases, audit, webhook.
    async fn finished(&self, id: &JobId) {
        self.release_leases_of(id);
        let job = match self.store.get_job(id).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(job = %id, %error, "reading a finished job");
                return;
            }
        };
        let mut metadata = Map::new();
        metadata.insert("state".to_owned(), Value::from(phase_name(job.state)));
        self.audit_internal("job.finish", id, phase_name(job.state), metadata).await;
        let Some(url) = job.spec.webhook_url.clone() else { return };
        let Some(sender) = self.config.webhooks.clone() else {
            tracing::warn!(job = %id, "the job has a webhook URL but no webhook secret is configured; nothing sent");
            return;
        };
        let event = WebhookEvent {
            id: format!("evt-{id}-finished"),
            kind: WebhookKind::JobFinished,
            created_unix_ms: now_ms(),
            job,
        };
        let id = id.clone();
        tokio::spawn(async move {
            if let Err(error) = sender.deliver(&url, &event).await {
                tracing::warn!(job = %id, %error, "webhook delivery failed");
            }
        });
    }
}

/// A phase's name as the API spells it.
pub fn phase_name(phase: JobPhase) -> &'static str {
    match phase {
        JobPhase::Queued => "queued",
        JobPhase::Starting => "starting",
        JobPhase::Running => "running",
        JobPhase::Succeeded => "succeeded",
        JobPhase::Failed => "failed",
        JobPhase::Cancelled => "cancelled",
    }
}

fn is_terminal_event(event: &JobEvent) -> bool {
    matches!(&event.event, JobEventKind::JobState(s) if s.state.is_terminal())
}
