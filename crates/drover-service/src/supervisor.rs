//! The real [`JobRunner`]: [`drover_supervisor::Supervisor`].
//!
//! Dispatch errors map to [`RunError::Retry`] when waiting can help (no ready session yet,
//! every session busy) and to [`RunError::Refused`] otherwise. A job's events are the
//! supervisor's own receiver, handed over as it is. Params schemas are cached per driver action and the same `Arc` is returned
//! while the driver declares the same schema, so the API reuses its compiled validator.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use drover_api::BoxFuture;
use drover_api::backend::SchemaLookupError;
use drover_proto::api::{DriverHealth, DriverList};
use drover_proto::{ActionName, DriverName, JobId, ParamsSchema};
use drover_supervisor::{Dispatch, DispatchError, JobEvent, Supervisor};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::runner::{JobRunner, RunError};

type SchemaCache = HashMap<(DriverName, ActionName), (Value, Arc<ParamsSchema>)>;

/// The supervisor as a [`JobRunner`].
pub struct SupervisorRunner {
    supervisor: Arc<Supervisor>,
    schemas: Mutex<SchemaCache>,
}

impl std::fmt::Debug for SupervisorRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorRunner").finish_non_exhaustive()
    }
}

impl SupervisorRunner {
    /// Wraps a started supervisor.
    pub fn new(supervisor: Arc<Supervisor>) -> Self {
        Self { supervisor, schemas: Mutex::new(HashMap::new()) }
    }

    /// The supervisor.
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }
}

fn run_error(error: DispatchError) -> RunError {
    match error {
        DispatchError::NotReady { .. } | DispatchError::Busy { .. } => {
            RunError::Retry(error.to_string())
        }
        other => RunError::Refused(other.to_string()),
    }
}

impl JobRunner for SupervisorRunner {
    fn dispatch(
        &self,
        request: Dispatch,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<JobEvent>, RunError>> {
        Box::pin(async move {
            let run = self.supervisor.dispatch(request).await.map_err(run_error)?;
            Ok(run.events)
        })
    }

    fn cancel<'a>(&'a self, job_id: &'a JobId, reason: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.supervisor.cancel(job_id, reason).await.is_ok() })
    }

    fn drivers(&self) -> BoxFuture<'_, DriverList> {
        Box::pin(async move {
            DriverList { drivers: self.supervisor.drivers().iter().map(|d| d.to_view()).collect() }
        })
    }

    fn params_schema(
        &self,
        driver: &DriverName,
        action: &ActionName,
    ) -> Result<Arc<ParamsSchema>, SchemaLookupError> {
        let status = self
            .supervisor
            .drivers()
            .into_iter()
            .find(|d| &d.name == driver)
            .ok_or(SchemaLookupError::UnknownDriver)?;
        let Some(schema) = status.actions.get(action) else {
            return Err(if status.actions.is_empty() && status.health != DriverHealth::Ready {
                SchemaLookupError::NotReady
            } else {
                SchemaLookupError::UnknownAction
            });
        };
        let mut cache = self.schemas.lock();
        let key = (driver.clone(), action.clone());
        if let Some((seen, shared)) = cache.get(&key)
            && seen == schema
        {
            return Ok(Arc::clone(shared));
        }
        let shared = Arc::new(ParamsSchema(schema.clone()));
        cache.insert(key, (schema.clone(), Arc::clone(&shared)));
        Ok(shared)
    }
}
