//! [`Supervisor`]: the handle over the registry of drivers (kept in the `registry` module,
//! which the sessions share), job dispatch and cancellation, and the keepers that restart dead
//! driver processes.
//!
//! Each configured driver gets `pool_size` keepers. A keeper runs one session after another:
//! spawn a process, handshake, serve jobs, and when the process dies record its
//! [`DeathReport`], wait the backoff (doubling from [`Options::restart_backoff`] up to
//! [`Options::restart_backoff_max`]) and start again. More than `max_restarts` deaths within
//! [`Options::crash_loop_window`] stop the keeper; a driver whose keepers have all stopped is
//! `failed` and refuses jobs. A session that lived longer than the window resets the count
//! and the backoff.
//!
//! A process that could not even be started because the machine was out of a resource
//! (descriptors: `EMFILE`, `ENFILE`; processes or threads: `EAGAIN`; memory: `ENOMEM`) is
//! not the driver's fault: such a start is retried with the same doubling backoff, forever,
//! and never counts toward `max_restarts` (issue 21: a connection flood that exhausted the
//! supervisor's descriptors used to mark drivers failed for good, so the service did not
//! heal when the flood stopped). The API keeps descriptors in reserve for exactly this
//! (`api.limits.fd_reserve`).

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use drover_proto::{ActionName, DriverName, JobId};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::broker::GpuBroker;
use crate::job::{CancelError, Dispatch, DispatchError, JobRun, JobSink};
use crate::registry::{Command, Driver, DriverState, Inner};
use crate::session;
use crate::spec::{DriverSpec, Options};
use crate::status::{DeathReport, DriverStatus};

/// Why the supervisor did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Two drivers have the same name.
    #[error("drivers[{index}].name: {name} is configured twice")]
    DuplicateDriver {
        /// The position of the second one.
        index: usize,
        /// The name.
        name: DriverName,
    },
    /// A driver's command is empty.
    #[error("drivers[{index}].command: empty (driver {name})")]
    EmptyCommand {
        /// The driver's position.
        index: usize,
        /// Its name.
        name: DriverName,
    },
}

/// A cheap, cloneable handle to the running supervisor. See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct Supervisor {
    pub(crate) inner: Arc<Inner>,
}

impl Supervisor {
    /// Starts `pool_size` processes of every driver (in the background: this returns before
    /// their handshakes; [`Supervisor::dispatch`] waits for a ready session) and returns the
    /// handle. Must run inside a tokio runtime, after Phase A (see [`Options::dropped`]).
    pub async fn start(
        drivers: Vec<DriverSpec>,
        broker: Arc<dyn GpuBroker>,
        options: Options,
    ) -> Result<Supervisor, StartError> {
        let mut registry = BTreeMap::new();
        let mut seen = HashSet::new();
        for (index, spec) in drivers.into_iter().enumerate() {
            let name = spec.config.name.clone();
            if !seen.insert(name.clone()) {
                return Err(StartError::DuplicateDriver { index, name });
            }
            if spec.config.command.is_empty() {
                return Err(StartError::EmptyCommand { index, name });
            }
            let driver = Driver {
                spec,
                state: Mutex::new(DriverState::default()),
                changed: watch::channel(0).0,
                leases: Mutex::new(HashMap::new()),
                checkers: Mutex::new(HashMap::new()),
            };
            registry.insert(name, Arc::new(driver));
        }
        let inner = Arc::new(Inner {
            drivers: registry,
            broker,
            options,
            jobs: Mutex::new(HashMap::new()),
            shutdown: watch::channel(None).0,
            keepers: Mutex::new(Vec::new()),
            stopped: watch::channel(false).0,
            deaths: Default::default(),
        });
        let mut keepers = Vec::new();
        for driver in inner.drivers.values() {
            for slot in 0..driver.spec.config.pool_size {
                keepers.push(tokio::spawn(keep(Arc::clone(&inner), Arc::clone(driver), slot)));
            }
        }
        *inner.keepers.lock() = keepers;
        Ok(Supervisor { inner })
    }

    /// A snapshot of every configured driver, by name.
    pub fn drivers(&self) -> Vec<DriverStatus> {
        self.inner.drivers.values().map(|d| d.status()).collect()
    }

    /// The params schema `driver` declared for `action` in its latest `hello`; `None` before
    /// the first handshake or when there is no such driver or action.
    pub fn params_schema(
        &self,
        driver: &DriverName,
        action: &ActionName,
    ) -> Option<serde_json::Value> {
        let driver = self.inner.drivers.get(driver)?;
        driver.state.lock().actions.get(action).cloned()
    }

    /// Validates `job.params` against the schema its driver declared for the action, then
    /// sends `run_job` to the driver's least busy ready session. Waits up to
    /// [`Options::ready_timeout`] for a ready session. See [`crate::job`] for the events.
    pub async fn dispatch(&self, job: Dispatch) -> Result<JobRun, DispatchError> {
        let inner = &self.inner;
        let driver = inner
            .drivers
            .get(&job.driver)
            .ok_or_else(|| DispatchError::UnknownDriver { driver: job.driver.clone() })?;
        let waited_from = Instant::now();
        let deadline = session::later(inner.options.ready_timeout);
        let max = inner.options.max_jobs_per_session;
        loop {
            if inner.shutdown.borrow().is_some() {
                return Err(DispatchError::ShuttingDown);
            }
            let mut changed = driver.changed.subscribe();
            let picked = {
                let state = driver.state.lock();
                if state.failed_keepers >= usize::from(driver.spec.config.pool_size) {
                    let cause = state
                        .last_death
                        .as_ref()
                        .map_or_else(|| "no cause recorded".to_owned(), DeathReport::summary);
                    return Err(DispatchError::DriverFailed { driver: job.driver.clone(), cause });
                }
                let least = state.sessions.iter().min_by_key(|s| s.jobs.load(Ordering::Relaxed));
                match least {
                    Some(s) if s.jobs.load(Ordering::Relaxed) >= max => {
                        return Err(DispatchError::Busy { driver: job.driver.clone(), max });
                    }
                    Some(s) => {
                        s.jobs.fetch_add(1, Ordering::Relaxed);
                        Some(s.clone())
                    }
                    None => None,
                }
            };
            let Some(session) = picked else {
                if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                    return Err(DispatchError::NotReady {
                        driver: job.driver.clone(),
                        waited: waited_from.elapsed(),
                    });
                }
                continue;
            };
            let release = || {
                session.jobs.fetch_sub(1, Ordering::Relaxed);
            };
            let Some(checker) = session.checkers.get(&job.action) else {
                release();
                return Err(DispatchError::UnknownAction {
                    driver: job.driver.clone(),
                    action: job.action.clone(),
                });
            };
            if let Err(violations) = checker.check(&serde_json::Value::Object(job.params.clone())) {
                release();
                return Err(DispatchError::InvalidParams {
                    driver: job.driver.clone(),
                    action: job.action.clone(),
                    violations: violations.list,
                });
            }
            {
                let mut jobs = inner.jobs.lock();
                if jobs.contains_key(&job.job_id) {
                    release();
                    return Err(DispatchError::DuplicateJob { job_id: job.job_id.clone() });
                }
                jobs.insert(job.job_id.clone(), session.commands.clone());
            }
            let (sink, run) = JobSink::new(inner.options.job_log_bytes);
            let job_id = job.job_id.clone();
            let command = Command::Run { dispatch: Box::new(job.clone()), sink };
            if session.commands.send(command).await.is_ok() {
                return Ok(run);
            }
            // The session ended between the pick and the send: try another.
            release();
            inner.jobs.lock().remove(&job_id);
        }
    }

    /// Asks the driver running `job_id` to stop it. Returns once `cancel_job` is on its way;
    /// the outcome arrives as the job's terminal state (which may be `succeeded` if the job
    /// won the race). A job that has not ended [`Options::cancel_grace`] later gets its
    /// driver killed, and ends `cancelled` with the cause.
    pub async fn cancel(&self, job_id: &JobId, reason: &str) -> Result<(), CancelError> {
        let route = self.inner.jobs.lock().get(job_id).cloned();
        let Some(route) = route else {
            return Err(CancelError::UnknownJob { job_id: job_id.clone() });
        };
        let command = Command::Cancel { job_id: job_id.clone(), reason: reason.to_owned() };
        route.send(command).await.map_err(|_| CancelError::UnknownJob { job_id: job_id.clone() })
    }

    /// Stops every driver: each session sends `shutdown {grace_ms}` and lets its jobs finish;
    /// after `grace` it closes the transport, then sends SIGTERM, then SIGKILL, waiting
    /// [`Options::stop_step`] between rungs. Returns when every driver process has died. Jobs
    /// still running end `failed` (or `cancelled`) with the cause. Dispatch is refused from
    /// the first moment. A second call (from any clone) waits for the first to finish; its
    /// `grace` is ignored.
    ///
    /// Dropping every handle without calling this leaves the drivers running.
    pub async fn shutdown(&self, grace: Duration) {
        let first = self.inner.shutdown.send_if_modified(|state| {
            let first = state.is_none();
            if first {
                *state = Some(grace);
            }
            first
        });
        if first {
            let keepers = std::mem::take(&mut *self.inner.keepers.lock());
            for keeper in keepers {
                let _ = keeper.await;
            }
            self.inner.stopped.send_replace(true);
        } else {
            let mut stopped = self.inner.stopped.subscribe();
            let _ = stopped.wait_for(|done| *done).await;
        }
    }
}

/// Runs sessions of one pool slot of `driver` until shutdown or a crash loop.
async fn keep(inner: Arc<Inner>, driver: Arc<Driver>, slot: u16) {
    let options = &inner.options;
    let max_restarts = usize::try_from(driver.spec.config.max_restarts).unwrap_or(usize::MAX);
    let mut deaths: VecDeque<Instant> = VecDeque::new();
    let mut backoff = options.restart_backoff;
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        if shutdown.borrow().is_some() {
            break;
        }
        let started = Instant::now();
        let report = session::run(&inner, &driver, slot).await;
        let now = Instant::now();
        if now.duration_since(started) > options.crash_loop_window {
            deaths.clear();
            backoff = options.restart_backoff;
        }
        if !resources_exhausted(&report) {
            deaths.push_back(now);
        }
        while deaths.front().is_some_and(|t| now.duration_since(*t) > options.crash_loop_window) {
            deaths.pop_front();
        }
        let stopping = shutdown.borrow().is_some();
        let crash_loop = !stopping && deaths.len() > max_restarts;
        if !stopping {
            tracing::warn!(driver = %driver.name(), slot, death = %crate::output::Escaped(&report.summary()), crash_loop, "driver process died");
        }
        inner.deaths.record(driver.name(), &report);
        {
            let mut state = driver.state.lock();
            state.last_death = Some(report);
            if crash_loop {
                state.failed_keepers += 1;
            }
        }
        driver.notify();
        if stopping {
            break;
        }
        if crash_loop {
            tracing::error!(driver = %driver.name(), slot, deaths = deaths.len(), window = ?options.crash_loop_window, "driver crash-looped; not restarting it");
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(Option::is_some) => break,
        }
        backoff = backoff.saturating_mul(2).min(options.restart_backoff_max);
        driver.state.lock().restarts += 1;
    }
}

/// Whether the process could not be started for lack of a machine resource (descriptors,
/// processes or threads, memory), as the start error's text says: the sandbox reports its
/// errors as text, so the errno is recognised in either spelling.
fn resources_exhausted(report: &DeathReport) -> bool {
    const SIGNS: [&str; 9] = [
        "os error 24",
        "os error 23",
        "os error 11",
        "os error 12",
        "EMFILE",
        "ENFILE",
        "EAGAIN",
        "ENOMEM",
        "Too many open files",
    ];
    report.cause.is_none()
        && report.session_end.as_deref().is_some_and(|end| {
            end.starts_with("could not start") && SIGNS.iter().any(|s| end.contains(s))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn driver() -> Driver {
        let config = serde_json::from_value(json!({"name": "d", "command": ["d"]})).unwrap();
        Driver {
            spec: DriverSpec::new(config, drover_sandbox::Policy::default()),
            state: Mutex::new(DriverState::default()),
            changed: watch::channel(0).0,
            leases: Mutex::new(HashMap::new()),
            checkers: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn starts_that_failed_for_lack_of_resources_are_not_deaths() {
        let report = |cause: Option<drover_sandbox::Cause>, end: &str| DeathReport {
            cause,
            session_end: Some(end.to_owned()),
            at: std::time::SystemTime::now(),
            stdout_tail: Vec::new(),
            stderr_tail: Vec::new(),
        };
        for end in [
            "could not start: driver d: transport: Too many open files (os error 24)",
            "could not start: driver d: sandbox: pipe2: EMFILE: Too many open files",
            "could not start: driver d: sandbox: fork: EAGAIN: Try again",
            "could not start: driver d: stderr pipe: File table overflow (os error 23)",
        ] {
            assert!(resources_exhausted(&report(None, end)), "{end}");
        }
        for end in [
            "could not start: driver d: command is empty",
            "could not start: driver d: sandbox: exec: No such file or directory (os error 2)",
            "no hello within 5000 ms",
        ] {
            assert!(!resources_exhausted(&report(None, end)), "{end}");
        }
    }

    #[test]
    fn sessions_declaring_the_same_schema_share_one_compiled_checker() {
        let driver = driver();
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let reordered: serde_json::Value =
            serde_json::from_str(r#"{"properties": {"n": {"type": "integer"}}, "type": "object"}"#)
                .unwrap();
        let first = driver.checker(&schema).unwrap();
        let second = driver.checker(&reordered).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let other = driver.checker(&json!({"type": "object"})).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        // The shared checker still checks.
        assert!(first.check(&json!({"n": 1})).is_ok());
        assert!(first.check(&json!({"n": "one"})).is_err());
        assert!(other.check(&json!({"n": "one"})).is_ok());
        // Freed with the last session that declared it; the next one compiles it again.
        drop((first, second));
        let again = driver.checker(&schema).unwrap();
        assert!(again.check(&json!({"n": "one"})).is_err());
        assert_eq!(driver.checkers.lock().len(), 2);
        // A schema that does not compile is refused and not remembered.
        assert!(driver.checker(&json!({"type": 5})).is_err());
        assert_eq!(driver.checkers.lock().len(), 2);
    }
}
