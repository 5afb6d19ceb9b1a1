//! Running as one replica of several on a shared store: taking over the jobs of replicas that
//! died, and honouring cancels that clients sent to another replica.
//!
//! The service's store handle speaks for this replica (the provisioner's replica id,
//! [`drover_store::JobOwners`]): the jobs it accepts are its own, and it can write events only
//! to jobs it owns. Every [`FLEET_POLL`] (and once at start, [`super::Service::recover`]) it
//!
//! - takes over **orphans**, unfinished jobs whose owner is neither this replica nor live
//!   (its heartbeat in the store expired: killed, hung or partitioned; or it shut down, or the
//!   job predates owners). Exactly one replica wins each. A `queued` orphan is **resumed**:
//!   dispatched here as if it had just been accepted, since nothing of it ran. A `starting` or
//!   `running` orphan is **failed** with the reason: its driver died with its replica, and a
//!   job's work is not known to be repeatable, so drover does not run it twice on its own;
//!   the provisioner's reaper takes over the job's leases and destroys their instances.
//! - collects **cancel requests** that other replicas left on jobs it owns, and cancels them.
//!
//! So a dead replica's jobs end, or run elsewhere, within its heartbeat expiry
//! (`supervisor.replica_expiry_s`, default 30 s) plus [`FLEET_POLL`]. A replica that comes
//! back after its jobs were taken over is fenced off by the store: its writes are refused
//! ([`drover_store::StoreError::JobTakenOver`]) and it cancels its own run of such a job.
//!
//! A client following a job's events on a replica that does not run it is served from the
//! store, polled every [`REMOTE_EVENTS_POLL`] while no local event arrives.

use std::sync::Arc;
use std::time::Duration;

use drover_proto::{JobId, JobPhase};
use drover_store::{OwnedJob, Store, StoreError};
use serde_json::{Map, Value};

use crate::{Service, phase_name, state};

/// How often a replica looks for orphans and cancel requests: 1 s.
pub const FLEET_POLL: Duration = Duration::from_secs(1);

/// How often a stream of a job that runs on another replica reads new events from the store
/// while none arrives here: 500 ms.
pub const REMOTE_EVENTS_POLL: Duration = Duration::from_millis(500);

impl<S: Store> Service<S> {
    /// Takes over every orphan this replica can win: `queued` ones are dispatched here,
    /// `starting`/`running` ones are recorded `failed` with the reason. Returns (resumed,
    /// failed).
    pub async fn take_over_orphans(&self) -> Result<(usize, usize), StoreError> {
        let (mut resumed, mut failed) = (0, 0);
        if !self.accepting.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok((resumed, failed)); // Shutting down: nothing new starts here.
        }
        for OwnedJob { job, owner_replica } in self.store.orphaned_jobs().await? {
            if !self.store.take_over_job(&job.id, owner_replica.as_deref()).await? {
                continue; // Another replica won it.
            }
            let gone = match &owner_replica {
                Some(replica) => format!("replica {replica} stopped"),
                None => "the supervisor restarted".to_owned(),
            };
            if job.state == JobPhase::Queued {
                resumed += 1;
                tracing::info!(job = %job.id, "{gone} with the job queued; running it here");
                self.spawn(job);
            } else {
                failed += 1;
                let message = format!(
                    "{gone} while the job was {}; its driver is gone and the reaper destroys \
                     any instance it rented",
                    phase_name(job.state)
                );
                tracing::warn!(job = %job.id, "{message}");
                self.record(&job.id, state(&job.id, JobPhase::Failed, message)).await;
                let mut metadata = Map::new();
                if let Some(replica) = owner_replica {
                    metadata.insert("previous_owner".to_owned(), Value::from(replica));
                }
                self.audit_internal("job.recover", &job.id, "failed", metadata).await;
            }
        }
        Ok((resumed, failed))
    }

    /// Cancels the jobs this replica owns that a client asked another replica to cancel.
    pub async fn collect_cancel_requests(&self) -> Result<usize, StoreError> {
        let requests = self.store.cancel_requests().await?;
        for (id, reason) in &requests {
            self.cancel_here(id, reason.clone()).await;
        }
        Ok(requests.len())
    }

    /// Ends a job this replica owns: through its run if it has one here, else directly.
    pub(crate) async fn cancel_here(&self, id: &JobId, reason: String) {
        let sender = self.running.lock().get(id).map(|run| run.cancel.clone());
        match sender {
            // The job task passes it to the runner (now, or once dispatched).
            Some(sender) => {
                let _ = sender.send(Some(reason));
            }
            // Not running here (queued, and not dispatched yet): end it directly.
            None => {
                self.record(id, state(id, JobPhase::Cancelled, reason)).await;
            }
        }
    }

    /// The job was taken over by another replica while it ran here: stop this run, which
    /// can no longer write anything to it.
    pub(crate) fn lost(&self, id: &JobId) {
        tracing::warn!(job = %id, "another replica took the job over; stopping its run here");
        if let Some(run) = self.running.lock().get(id) {
            let _ = run.cancel.send(Some("taken over by another replica".to_owned()));
        }
    }

    /// Whether this replica runs the job now.
    pub(crate) fn runs_here(&self, id: &JobId) -> bool {
        self.running.lock().contains_key(id)
    }

    /// Every [`FLEET_POLL`] until the service is dropped: orphans, then cancel requests.
    /// Failures are logged and tried again at the next tick.
    pub fn watch_fleet(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLEET_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(service) = me.upgrade() else { return };
                if let Err(error) = service.take_over_orphans().await {
                    tracing::warn!(%error, "looking for orphaned jobs failed; trying again");
                }
                if let Err(error) = service.collect_cancel_requests().await {
                    tracing::warn!(%error, "collecting cancel requests failed; trying again");
                }
            }
        })
    }
}
