//! Jobs as the supervisor's caller sees them: [`Dispatch`] in, a stream of [`JobEvent`]s out.
//!
//! The events of one job arrive in the order the driver sent them. The stream always ends
//! with a [`JobEventKind::JobState`] whose phase is terminal (`succeeded`, `failed` or `cancelled`),
//! and then closes:
//!
//! - normally, the driver's own terminal `job_state`;
//! - when the driver died with the job still running: [`JobEvent::DriverDied`] naming the
//!   cause, then a terminal state made by the supervisor (`cancelled` if a cancel had been
//!   asked for, `failed` otherwise) whose message names the cause;
//! - when the driver refused the `run_job` (an `error` reply): a `failed` state with its
//!   message.
//!
//! States and results are never dropped. Progress is coalesced (only the latest undelivered
//! value is kept). Log lines are held up to [`crate::Options::job_log_bytes`] per job while
//! the caller is not reading (plus what fits in the receiver, [`JOB_CHANNEL_CAPACITY`]
//! events); beyond that they are dropped and the count is added to the `dropped` field of the
//! next delivered `job_log` of the same stream. Lines dropped after the last delivered batch
//! are reported just before the terminal state, in a `job_log` whose one line is
//! `[drover: N log lines dropped]` and whose `dropped` is N, so every line is either delivered
//! or counted. A caller that drops its
//! receiver simply stops the delivery; the job goes on.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::api::JobEventKind;
use drover_proto::{
    ActionName, DriverName, GpuRequest, JobId, JobLog, JobPhase, JobProgress, LogStream, Violation,
};
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc};

/// Events a [`JobRun`] receiver can hold before delivery waits for the caller.
pub const JOB_CHANNEL_CAPACITY: usize = 64;

/// A job to run on a driver.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    /// The job's id (unique among the jobs that are running).
    pub job_id: JobId,
    /// The driver that runs it.
    pub driver: DriverName,
    /// The driver action to run.
    pub action: ActionName,
    /// The action's parameters; validated against the schema the driver declared in `hello`
    /// before anything is sent.
    pub params: Map<String, Value>,
    /// The GPUs the job may rent through `acquire_gpu`; `None`: it may not rent any.
    pub gpu: Option<GpuRequest>,
    /// Hard cap on the job's run time: at the deadline the job is cancelled, and its driver
    /// is killed if the job has not ended [`crate::Options::cancel_grace`] later.
    pub max_runtime: Duration,
    /// What the job may spend on rentals, in USD; every `acquire_gpu` is gated against it.
    pub budget_usd: f64,
}

/// A dispatched job: its events, ending with a terminal state. See the [module docs](self).
#[derive(Debug)]
pub struct JobRun {
    /// The job's events.
    pub events: mpsc::Receiver<JobEvent>,
}

/// Something that happened to a job: a job frame in the API's own vocabulary
/// ([`JobEventKind`], what the service stores and streams), or the supervisor's note that the
/// driver died.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    /// A job frame: a state (a terminal phase is the last event), progress (coalesced), a batch
    /// of log lines, or the result (before the terminal state). A terminal state the supervisor
    /// makes for a job whose driver died or refused it is one too.
    Job(JobEventKind),
    /// The driver process died while the job was running; a terminal state follows.
    DriverDied {
        /// The cause, as [`crate::DeathReport`] describes it.
        cause: String,
    },
}

/// Why a job was not dispatched. Nothing was sent to a driver.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No driver of that name is configured.
    #[error("no driver named {driver} is configured")]
    UnknownDriver {
        /// The name asked for.
        driver: DriverName,
    },
    /// The driver crash-looped and is no longer restarted.
    #[error("driver {driver} has failed: {cause}")]
    DriverFailed {
        /// The driver.
        driver: DriverName,
        /// Its last death.
        cause: String,
    },
    /// No session of the driver finished its handshake within the ready timeout.
    #[error("driver {driver} has no ready session (waited {waited:?})")]
    NotReady {
        /// The driver.
        driver: DriverName,
        /// How long dispatch waited.
        waited: Duration,
    },
    /// Every session of the driver runs its maximum number of jobs.
    #[error("driver {driver} is busy: every session runs {max} jobs")]
    Busy {
        /// The driver.
        driver: DriverName,
        /// Jobs per session.
        max: usize,
    },
    /// The driver declared no such action.
    #[error("driver {driver} has no action {action}")]
    UnknownAction {
        /// The driver.
        driver: DriverName,
        /// The action asked for.
        action: ActionName,
    },
    /// The params break the action's declared schema.
    #[error("params of {driver}/{action} are invalid: {} violation(s), first at {:?}", violations.len(), violations.first().map(|v| v.instance_path.as_str()).unwrap_or(""))]
    InvalidParams {
        /// The driver.
        driver: DriverName,
        /// The action.
        action: ActionName,
        /// Every violation (at most 64), each with the JSON pointer into `params`.
        violations: Vec<Violation>,
    },
    /// A job with this id is already running.
    #[error("job {job_id} is already running")]
    DuplicateJob {
        /// The job.
        job_id: JobId,
    },
    /// The supervisor is shutting down.
    #[error("the supervisor is shutting down")]
    ShuttingDown,
}

impl DispatchError {
    /// Whether the same dispatch may succeed later: the driver is still starting (no ready
    /// session yet) or every session is busy. Every other refusal is final.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::NotReady { .. } | Self::Busy { .. })
    }
}

/// Why a cancel was not sent.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No job with that id is running (it may have ended already).
    #[error("no running job {job_id}")]
    UnknownJob {
        /// The job.
        job_id: JobId,
    },
}

// ---------------------------------------------------------------------------------------------
// Delivery

/// The supervisor's side of one job's event stream: a bounded queue drained into the
/// caller's channel by a small task, so that a slow caller never blocks the driver's session.
#[derive(Clone, Debug)]
pub(crate) struct JobSink {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    notify: Notify,
    /// Bytes of undelivered log lines allowed.
    log_limit: usize,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<JobEvent>,
    /// Bytes of log lines in `events`.
    log_bytes: usize,
    /// Lines dropped and not yet reported, per stream (stdout, stderr).
    dropped: [u64; 2],
    /// No more events will be pushed.
    closed: bool,
    /// The caller dropped its receiver.
    gone: bool,
}

fn stream_index(stream: LogStream) -> usize {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

impl JobSink {
    /// A sink and the receiver the caller gets; `log_bytes` bounds the undelivered log lines.
    pub(crate) fn new(log_bytes: usize) -> (Self, JobRun) {
        let (tx, rx) = mpsc::channel(JOB_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            log_limit: log_bytes,
        });
        tokio::spawn(forward(Arc::clone(&shared), tx));
        (Self { shared }, JobRun { events: rx })
    }

    fn with_queue<R>(&self, f: impl FnOnce(&mut Queue) -> R) -> R {
        let result = {
            let mut queue = self.shared.queue.lock();
            f(&mut queue)
        };
        self.shared.notify.notify_one();
        result
    }

    /// Queues a state or result (never dropped) or a driver-death notice. A terminal state
    /// closes the stream.
    pub(crate) fn push_critical(&self, event: JobEvent) {
        let terminal = match &event {
            JobEvent::Job(JobEventKind::JobState(s)) if s.state.is_terminal() => {
                Some(s.job_id.clone())
            }
            _ => None,
        };
        self.with_queue(|q| {
            if q.closed || q.gone {
                return;
            }
            if let Some(job_id) = &terminal {
                // Dropped lines that no later batch reported: say so before the end.
                for (stream, index) in [(LogStream::Stdout, 0), (LogStream::Stderr, 1)] {
                    let dropped = std::mem::take(&mut q.dropped[index]);
                    if dropped > 0 {
                        q.events.push_back(JobEvent::Job(JobEventKind::JobLog(JobLog {
                            job_id: job_id.clone(),
                            stream,
                            lines: vec![format!("[drover: {dropped} log lines dropped]")],
                            dropped,
                        })));
                    }
                }
            }
            q.events.push_back(event);
            q.closed = terminal.is_some();
        });
    }

    /// Queues progress, replacing undelivered progress.
    pub(crate) fn push_progress(&self, progress: JobProgress) {
        self.with_queue(|q| {
            if q.closed || q.gone {
                return;
            }
            if let Some(slot) = q
                .events
                .iter_mut()
                .rev()
                .find(|e| matches!(e, JobEvent::Job(JobEventKind::JobProgress(_))))
            {
                *slot = JobEvent::Job(JobEventKind::JobProgress(progress));
            } else {
                q.events.push_back(JobEvent::Job(JobEventKind::JobProgress(progress)));
            }
        });
    }

    /// Queues log lines if they fit in the log limit, otherwise counts them as dropped.
    pub(crate) fn push_log(&self, mut log: JobLog) {
        let limit = self.shared.log_limit;
        self.with_queue(|q| {
            if q.closed || q.gone {
                return;
            }
            let index = stream_index(log.stream);
            let bytes: usize = log.lines.iter().map(|l| l.len() + 1).sum();
            if q.log_bytes + bytes > limit {
                q.dropped[index] = q.dropped[index]
                    .saturating_add(log.lines.len() as u64)
                    .saturating_add(log.dropped);
                return;
            }
            log.dropped = log.dropped.saturating_add(std::mem::take(&mut q.dropped[index]));
            q.log_bytes += bytes;
            q.events.push_back(JobEvent::Job(JobEventKind::JobLog(log)));
        });
    }
}

/// Moves queued events into the caller's channel, waiting for room there.
async fn forward(shared: Arc<Shared>, tx: mpsc::Sender<JobEvent>) {
    loop {
        let next = {
            let mut queue = shared.queue.lock();
            match queue.events.pop_front() {
                Some(event) => {
                    if let JobEvent::Job(JobEventKind::JobLog(log)) = &event {
                        let bytes: usize = log.lines.iter().map(|l| l.len() + 1).sum();
                        queue.log_bytes = queue.log_bytes.saturating_sub(bytes);
                    }
                    Some(event)
                }
                None if queue.closed => return,
                None => None,
            }
        };
        match next {
            Some(event) => {
                if tx.send(event).await.is_err() {
                    let mut queue = shared.queue.lock();
                    queue.gone = true;
                    queue.events.clear();
                    queue.log_bytes = 0;
                    return;
                }
            }
            None => shared.notify.notified().await,
        }
    }
}

/// The rank of a phase in a job's life: states must strictly increase.
pub(crate) fn rank(phase: JobPhase) -> u8 {
    match phase {
        JobPhase::Queued => 0,
        JobPhase::Starting => 1,
        JobPhase::Running => 2,
        JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled => 3,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use drover_proto::{JobResult, JobState};

    fn id() -> JobId {
        "job-1".parse().unwrap()
    }

    fn state(phase: JobPhase) -> JobEvent {
        JobEvent::Job(JobEventKind::JobState(JobState {
            job_id: id(),
            state: phase,
            message: None,
        }))
    }

    fn log(lines: usize) -> JobLog {
        JobLog {
            job_id: id(),
            stream: LogStream::Stdout,
            lines: (0..lines).map(|i| format!("line {i:04}")).collect(),
            dropped: 0,
        }
    }

    fn progress(current: f64) -> JobProgress {
        JobProgress { job_id: id(), current, total: None, unit: None, message: None }
    }

    async fn drain(run: &mut JobRun) -> Vec<JobEvent> {
        let mut events = Vec::new();
        while let Some(event) = run.events.recv().await {
            events.push(event);
        }
        events
    }

    #[tokio::test]
    async fn a_slow_reader_gets_every_state_the_latest_progress_and_a_count_of_dropped_lines() {
        // Room for about three 10-line batches ("line 0000\n" is 10 bytes).
        let (sink, mut run) = JobSink::new(300);
        // Fill the receiver's channel first, so the queue itself must hold the rest.
        for _ in 0..JOB_CHANNEL_CAPACITY {
            sink.push_progress(progress(0.0));
            tokio::task::yield_now().await;
        }
        sink.push_critical(state(JobPhase::Running));
        for i in 0..10 {
            sink.push_log(log(10));
            sink.push_progress(progress(f64::from(i)));
        }
        sink.push_critical(JobEvent::Job(JobEventKind::JobResult(JobResult {
            job_id: id(),
            outcome: drover_proto::Outcome::Succeeded,
            output: None,
            message: None,
        })));
        sink.push_critical(state(JobPhase::Succeeded));
        sink.push_critical(state(JobPhase::Failed)); // after the end: ignored
        let events = drain(&mut run).await;
        let tail = &events[JOB_CHANNEL_CAPACITY..];
        assert!(
            matches!(&tail[0], JobEvent::Job(JobEventKind::JobState(s)) if s.state == JobPhase::Running)
        );
        let (mut delivered, mut dropped) = (0, 0);
        let mut progress_seen = Vec::new();
        for event in tail {
            match event {
                JobEvent::Job(JobEventKind::JobLog(l)) if l.lines[0].starts_with("line") => {
                    delivered += l.lines.len() as u64;
                    dropped += l.dropped;
                }
                JobEvent::Job(JobEventKind::JobLog(l)) => {
                    assert_eq!(l.lines, [format!("[drover: {} log lines dropped]", l.dropped)]);
                    dropped += l.dropped;
                }
                JobEvent::Job(JobEventKind::JobProgress(p)) => progress_seen.push(p.current),
                _ => {}
            }
        }
        assert_eq!(delivered, 30, "three batches fit");
        assert_eq!(delivered + dropped, 100, "every line delivered or counted");
        assert_eq!(progress_seen, [9.0], "progress coalesced to the latest");
        assert!(matches!(
            &tail[tail.len() - 2],
            JobEvent::Job(JobEventKind::JobResult(_)) | JobEvent::Job(JobEventKind::JobLog(_))
        ));
        let Some(JobEvent::Job(JobEventKind::JobState(last))) = tail.last() else {
            panic!("{tail:?}")
        };
        assert_eq!(last.state, JobPhase::Succeeded);
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_stops_delivery_without_stopping_the_job() {
        let (sink, run) = JobSink::new(1 << 20);
        drop(run);
        sink.push_critical(state(JobPhase::Running));
        sink.push_log(log(5));
        tokio::task::yield_now().await;
        sink.push_critical(state(JobPhase::Succeeded));
        let queue = sink.shared.queue.lock();
        assert!(queue.events.is_empty() && queue.log_bytes == 0);
    }

    #[test]
    fn states_rank_in_their_order_and_terminal_states_share_the_last_rank() {
        let order = [JobPhase::Queued, JobPhase::Starting, JobPhase::Running, JobPhase::Succeeded];
        assert!(order.windows(2).all(|w| rank(w[0]) < rank(w[1])));
        assert_eq!(rank(JobPhase::Failed), rank(JobPhase::Cancelled));
        assert_eq!(rank(JobPhase::Failed), rank(JobPhase::Succeeded));
    }
}
