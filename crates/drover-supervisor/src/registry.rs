//! What the supervisor's handle, its keepers and its sessions share: the registry of drivers
//! ([`Inner`]), each configured [`Driver`] with what its sessions have told about it, the
//! handle of a session that takes jobs, and the [`Command`]s it takes.
//!
//! A module of its own so that the handle (`supervisor`) and the sessions (`session`) both
//! depend on it and not on each other's internals: `supervisor -> session -> registry`, and
//! `supervisor -> registry`, with no way back.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Weak};
use std::time::Duration;

use drover_proto::api::DriverHealth;
use drover_proto::{ActionName, DriverName, JobId, LeaseId};
use drover_transport::SchemaChecker;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::GpuBroker;
use crate::job::{Dispatch, JobSink};
use crate::spec::{DriverSpec, Options};
use crate::status::{DeathReport, DriverStatus};

/// What the supervisor asks of a ready session.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send `run_job`; events go to `sink`.
    Run {
        /// The job (boxed: the command queue's blocks are sized by its largest item).
        dispatch: Box<Dispatch>,
        /// Where its events go.
        sink: JobSink,
    },
    /// Send `cancel_job`.
    Cancel {
        /// The job.
        job_id: JobId,
        /// Why.
        reason: String,
    },
}

pub(crate) struct Inner {
    pub(crate) drivers: BTreeMap<DriverName, Arc<Driver>>,
    pub(crate) broker: Arc<dyn GpuBroker>,
    pub(crate) options: Options,
    /// Running jobs, by id: where their commands go.
    pub(crate) jobs: Mutex<HashMap<JobId, mpsc::Sender<Command>>>,
    /// `Some(grace)` once shutdown began.
    pub(crate) shutdown: watch::Sender<Option<Duration>>,
    pub(crate) keepers: Mutex<Vec<JoinHandle<()>>>,
    /// Set once every keeper has stopped after a shutdown.
    pub(crate) stopped: watch::Sender<bool>,
    /// Deaths counted for `/metrics` ([`crate::deaths`]).
    pub(crate) deaths: crate::deaths::DeathCounters,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("drivers", &self.drivers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One configured driver and what its sessions have told about it.
pub(crate) struct Driver {
    pub(crate) spec: DriverSpec,
    pub(crate) state: Mutex<DriverState>,
    /// Bumped on every change a waiting `dispatch` may care about.
    pub(crate) changed: watch::Sender<u64>,
    /// Leases this driver acquired, with the job each is for. Kept across restarts.
    pub(crate) leases: Mutex<HashMap<LeaseId, JobId>>,
    /// Compiled params schemas, by the schema's canonical JSON: sessions that declare the
    /// same schema share one compiled checker. Weak, so a schema no session declares any more
    /// is freed with its last session.
    pub(crate) checkers: Mutex<HashMap<String, Weak<SchemaChecker>>>,
}

#[derive(Default)]
pub(crate) struct DriverState {
    pub(crate) version: Option<String>,
    pub(crate) actions: BTreeMap<ActionName, serde_json::Value>,
    pub(crate) sessions: Vec<SessionHandle>,
    pub(crate) ever_ready: bool,
    pub(crate) failed_keepers: usize,
    pub(crate) restarts: u32,
    pub(crate) protocol_violations: u64,
    pub(crate) last_death: Option<DeathReport>,
}

/// A session that finished its handshake and takes jobs.
#[derive(Clone)]
pub(crate) struct SessionHandle {
    pub(crate) id: u64,
    pub(crate) commands: mpsc::Sender<Command>,
    /// Jobs assigned to it and not yet ended.
    pub(crate) jobs: Arc<AtomicUsize>,
    /// The compiled params schema of each declared action.
    pub(crate) checkers: Arc<BTreeMap<ActionName, Arc<SchemaChecker>>>,
}

impl Driver {
    pub(crate) fn name(&self) -> &DriverName {
        &self.spec.config.name
    }

    /// The compiled checker for `schema`: shared with every other session of this driver
    /// that declared the same schema (same canonical JSON), compiled if none has.
    pub(crate) fn checker(
        &self,
        schema: &serde_json::Value,
    ) -> Result<Arc<SchemaChecker>, drover_transport::SchemaError> {
        // serde_json's maps keep their keys sorted, so equal schemas print equally.
        let key = schema.to_string();
        if let Some(shared) = self.checkers.lock().get(&key).and_then(Weak::upgrade) {
            return Ok(shared);
        }
        // Compiled outside the lock; a session that compiled the same schema meanwhile wins.
        let compiled = Arc::new(SchemaChecker::new(schema)?);
        let mut checkers = self.checkers.lock();
        if let Some(shared) = checkers.get(&key).and_then(Weak::upgrade) {
            return Ok(shared);
        }
        checkers.retain(|_, checker| checker.strong_count() > 0);
        checkers.insert(key, Arc::downgrade(&compiled));
        Ok(compiled)
    }

    pub(crate) fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn status(&self) -> DriverStatus {
        let state = self.state.lock();
        let pool = usize::from(self.spec.config.pool_size);
        let ready = state.sessions.len();
        let health = if state.failed_keepers >= pool {
            DriverHealth::Failed
        } else if ready >= pool {
            DriverHealth::Ready
        } else if !state.ever_ready && state.failed_keepers == 0 {
            DriverHealth::Starting
        } else {
            DriverHealth::Degraded
        };
        DriverStatus {
            name: self.name().clone(),
            health,
            version: state.version.clone(),
            ready_sessions: u16::try_from(ready).unwrap_or(u16::MAX),
            actions: state.actions.clone(),
            restarts: state.restarts,
            protocol_violations: state.protocol_violations,
            last_death: state.last_death.clone(),
            gpus: self.spec.gpus.clone(),
        }
    }
}
