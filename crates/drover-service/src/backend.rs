//! [`Backend`] for [`Service`]: what each API call does (see the [crate docs](crate)).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use drover_api::backend::{
    Backend, BackendError, BoxFuture, EventStream, JobQuery, SchemaLookupError, Submission,
    Submitted,
};
use drover_proto::api::{
    AuditEvent, Check, DriverHealth, DriverList, EstimateRequest, EstimateResponse, Job, JobList,
    OfferSummary, Readiness,
};
use drover_proto::{ActionName, DriverName, JobId, ParamsSchema};
use drover_provision::AcquireError;
use drover_store::{Idempotency, JobFilter, NewJob, Store};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::{
    ProviderKind, SIMULATOR_NOTICE, Service, SimulatorLedger, is_terminal_event, metrics,
    new_job_id, now_ms, phase_name, store_error,
};

impl<S: Store> Backend for Service<S> {
    fn submit(&self, submission: Submission) -> BoxFuture<'_, Result<Submitted, BackendError>> {
        Box::pin(async move {
            if !self.accepting.load(Ordering::SeqCst) {
                return Err(BackendError::Unavailable("the supervisor is shutting down"));
            }
            self.check_free_space()?;
            let new = NewJob {
                id: new_job_id().map_err(BackendError::internal)?,
                spec: submission.spec,
                submitted_by: submission.actor,
                at_unix_ms: now_ms(),
                idempotency: submission
                    .idempotency
                    .map(|(key, request_sha256)| Idempotency { key, request_sha256 }),
            };
            // The commit and the handoff to the dispatcher run in their own task: a client
            // that hangs up drops the request's future, and a job committed as queued must
            // still be dispatched (issue 17), not wait for the next restart.
            let me =
                self.me.upgrade().ok_or(BackendError::Unavailable("the service has stopped"))?;
            let accepted = tokio::spawn(async move {
                let done = me.store.submit_job(new).await.map_err(store_error)?;
                if !done.replayed {
                    me.spawn(done.job.clone());
                    let mut metadata = Map::new();
                    metadata
                        .insert("driver".to_owned(), Value::from(done.job.spec.driver.as_str()));
                    metadata.insert("budget_usd".to_owned(), json!(done.job.spec.budget_usd));
                    me.audit_internal("job.dispatch", &done.job.id, "queued", metadata).await;
                }
                Ok(Submitted { job: done.job, replayed: done.replayed })
            });
            accepted.await.map_err(BackendError::internal)?
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
        actor: &'a str,
    ) -> BoxFuture<'a, Result<Job, BackendError>> {
        Box::pin(async move {
            let job =
                self.store.get_job(id).await.map_err(store_error)?.ok_or(BackendError::NotFound)?;
            if job.state.is_terminal() {
                return Err(BackendError::Conflict("the job has already ended"));
            }
            let reason = format!("cancelled through the API by {actor}");
            let mut metadata = Map::new();
            metadata.insert("state_before".to_owned(), Value::from(phase_name(job.state)));
            let event = AuditEvent {
                timestamp: drover_proto::text::rfc3339_ms(now_ms()),
                request_id: None,
                actor: actor.to_owned(),
                action: "job.cancel".to_owned(),
                resource: format!("job:{id}"),
                result: "requested".to_owned(),
                metadata,
            };
            if let Err(error) = self.store.append_audit(&event).await {
                tracing::warn!(%error, "audit event could not be stored");
            }
            if self.runs_here(id) || self.store.owns_job(id).await.map_err(store_error)? {
                self.cancel_here(id, reason).await;
            } else {
                // Another replica runs it (or will take it over): leave the request for its
                // owner, which acts on it within crate::fleet::FLEET_POLL.
                self.store.request_cancel(id, &reason).await.map_err(store_error)?;
            }
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
            let mut history = Vec::new();
            let mut last = after;
            loop {
                let page = self.store.events_after(id, last, 1000).await.map_err(store_error)?;
                let full = page.len() == 1000;
                if let Some(event) = page.last() {
                    last = event.seq;
                }
                history.extend(page);
                if !full {
                    break;
                }
            }
            let ended = job.state.is_terminal() || history.iter().any(is_terminal_event);
            let (tx, rx) = mpsc::channel(64);
            let id = id.clone();
            let store = self.store.clone();
            let me = self.me.clone();
            if !ended {
                tokio::spawn(async move {
                    loop {
                        // A job another replica runs sends nothing here: read the store
                        // whenever nothing arrived for a while (crate::fleet).
                        let received =
                            tokio::time::timeout(crate::fleet::REMOTE_EVENTS_POLL, live.recv())
                                .await;
                        let batch = match received {
                            Err(_elapsed) => {
                                if me.upgrade().is_some_and(|service| service.runs_here(&id)) {
                                    continue;
                                }
                                match store.events_after(&id, last, 1000).await {
                                    Ok(events) => events,
                                    Err(_) => return,
                                }
                            }
                            Ok(Ok(event)) if event.event.job_id() == &id && event.seq > last => {
                                vec![event]
                            }
                            Ok(Ok(_)) => continue,
                            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                                // Fell behind: the store has everything.
                                match store.events_after(&id, last, 1000).await {
                                    Ok(events) => events,
                                    Err(_) => return,
                                }
                            }
                            Ok(Err(broadcast::error::RecvError::Closed)) => return,
                        };
                        for event in batch {
                            last = event.seq;
                            let terminal = is_terminal_event(&event);
                            if tx.send(event).await.is_err() || terminal {
                                return;
                            }
                        }
                    }
                });
            }
            let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
            let stream: EventStream = Box::pin(futures_util::stream::iter(history).chain(rest));
            Ok(stream)
        })
    }

    fn drivers(&self) -> BoxFuture<'_, Result<DriverList, BackendError>> {
        Box::pin(async move { Ok(self.runner.drivers().await) })
    }

    fn params_schema(
        &self,
        driver: &DriverName,
        action: &ActionName,
    ) -> Result<Arc<ParamsSchema>, SchemaLookupError> {
        self.runner.params_schema(driver, action)
    }

    fn estimate(
        &self,
        request: EstimateRequest,
    ) -> BoxFuture<'_, Result<EstimateResponse, BackendError>> {
        Box::pin(async move {
            let dry = self
                .provisioner
                .dry_run(
                    &request.gpu,
                    request.max_runtime_s,
                    request.disk_gib,
                    request.bandwidth_gib,
                    request.budget_usd,
                    "api",
                )
                .await;
            let dry = match dry {
                Ok(dry) => dry,
                Err(AcquireError::NoOffers) => {
                    return Ok(EstimateResponse {
                        allowed: false,
                        estimate: None,
                        confidence_floor: self.config.confidence_floor,
                        reason: Some("no offer matches the GPU request".to_owned()),
                        offer: None,
                    });
                }
                Err(AcquireError::Provider(error)) => {
                    tracing::warn!(%error, "estimate: the provider did not answer");
                    return Err(BackendError::Unavailable("the GPU provider cannot be reached"));
                }
                Err(other) => return Err(BackendError::internal(other)),
            };
            let offer = dry.offer.and_then(|(model, count, rate)| {
                Some(OfferSummary {
                    gpu_model: model.chars().take(64).collect(),
                    gpu_count: u8::try_from(count).ok()?,
                    usd_per_hour: rate.is_finite().then_some(rate)?,
                })
            });
            Ok(match dry.decision {
                Ok(estimate) => EstimateResponse {
                    allowed: true,
                    estimate: Some(estimate.to_proto()),
                    confidence_floor: dry.floor,
                    reason: None,
                    offer,
                },
                Err(rejection) => EstimateResponse {
                    allowed: false,
                    estimate: rejection.estimate.as_ref().map(|e| e.to_proto()),
                    confidence_floor: dry.floor,
                    reason: Some(rejection.reason.to_string().chars().take(1000).collect()),
                    offer,
                },
            })
        })
    }

    fn readiness(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async move {
            let mut checks = BTreeMap::new();
            let message = if self.store.ping().await.is_err() {
                Some("the store does not answer".to_owned())
            } else if let Err(low) = self.check_free_space() {
                Some(low.to_string())
            } else if self.store.writable().await.is_err() {
                Some("the store cannot write (a full disk or an I/O error)".to_owned())
            } else {
                None
            };
            checks.insert("store".to_owned(), Check { ok: message.is_none(), message });
            let drivers = self.runner.drivers().await;
            let not_ready: Vec<String> = drivers
                .drivers
                .iter()
                .filter(|d| d.ready_sessions == 0 || d.health == DriverHealth::Failed)
                .map(|d| d.name.to_string())
                .collect();
            let drivers_ok = !drivers.drivers.is_empty() && not_ready.is_empty();
            let message = if drivers.drivers.is_empty() {
                Some("no drivers are configured".to_owned())
            } else if !not_ready.is_empty() {
                Some(format!("not ready: {}", not_ready.join(", ")).chars().take(256).collect())
            } else {
                None
            };
            checks.insert("drivers".to_owned(), Check { ok: drivers_ok, message });
            let provider = match self.config.provider {
                ProviderKind::Simulator => SIMULATOR_NOTICE.to_owned(),
                ProviderKind::Vastai => "vast.ai: rentals cost real money".to_owned(),
            };
            checks.insert("provider".to_owned(), Check { ok: true, message: Some(provider) });
            if !self.config.accepted_risks.is_empty() {
                let risks = self.config.accepted_risks.join(", ");
                let message = format!("running with accepted risks: {risks}");
                checks.insert("sandbox".to_owned(), Check { ok: true, message: Some(message) });
            }
            let accepting = self.accepting.load(Ordering::SeqCst);
            checks.insert(
                "accepting".to_owned(),
                Check { ok: accepting, message: (!accepting).then(|| "shutting down".to_owned()) },
            );
            let ready = checks.values().all(|c| c.ok);
            Readiness { ready, checks }
        })
    }

    fn audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.store.append_audit_batch(&events).await.map_err(store_error) })
    }

    fn refresh_metrics(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let ledger = match self.store.ledger_report().await {
                Ok(report) => {
                    Some((report.open, drover_store::micros_to_usd(report.ledger_micros)))
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics: the ledger could not be read");
                    None
                }
            };
            let simulator =
                self.config.simulator_ledger.as_ref().map(|SimulatorLedger(read)| read());
            self.metrics.set(metrics::Snapshot {
                jobs_active: self.running_jobs(),
                ledger,
                simulator,
            });
        })
    }
}
