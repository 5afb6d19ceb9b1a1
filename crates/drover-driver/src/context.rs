//! What a running job gets: its cancellation token, progress and log helpers, and the GPU
//! lease requests.
//!
//! Progress is coalesced (only the latest value is sent, at the next flush). Log lines are
//! buffered per job, at most [`MAX_PENDING_LINES`] of them; beyond that, lines are dropped and
//! counted, and the count travels in the next `job_log` frame's `dropped` for that stream.
//! Lines longer than [`drover_proto::limits::LOG_LINE_LEN`] characters are split. The session
//! flushes every [`crate::FLUSH_INTERVAL`] and once more before the job's result, so a job's
//! last lines always come before its `job_result`.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

use drover_proto::limits::LOG_LINE_LEN;
use drover_proto::{
    AcquireGpu, JobId, JobProgress, Lease, LeaseId, LeaseLog, LeaseLogs, LeaseStatus, LogStream,
    Message, ReleaseGpu, WireError,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Most log lines buffered per job between flushes; more are dropped and counted.
pub const MAX_PENDING_LINES: usize = 10_000;

/// Longest progress `message`, in characters (the schema's bound).
const PROGRESS_MESSAGE_LEN: usize = 256;
/// Largest progress value the schema accepts.
const PROGRESS_MAX: f64 = 1e15;

/// Why a request to the supervisor (`acquire_gpu`, `lease_status`, `lease_logs`,
/// `release_gpu`) did not get the answer it wanted.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The supervisor answered with an `error` (a refused rental, an unknown lease).
    #[error("the supervisor refused {request}: {} ({})", .error.message, .error.code)]
    Refused {
        /// The request's type.
        request: &'static str,
        /// The supervisor's error.
        error: WireError,
    },
    /// The session ended before the answer came.
    #[error("the session ended before the supervisor answered {request}")]
    SessionClosed {
        /// The request's type.
        request: &'static str,
    },
    /// The SDK could not send the request (a bug in the request's values, e.g. a field over
    /// its schema's bound).
    #[error("{request} could not be sent: {reason}")]
    NotSent {
        /// The request's type.
        request: &'static str,
        /// Why.
        reason: String,
    },
    /// The answer was of a type that does not answer this request.
    #[error("the supervisor answered {request} with {got}")]
    UnexpectedReply {
        /// The request's type.
        request: &'static str,
        /// The type of the answer.
        got: &'static str,
    },
}

/// What job tasks and contexts hand to the session task.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Send a request; the reply (or the error) goes back on `reply`.
    Request { msg: Message, reply: oneshot::Sender<Result<Message, RequestError>> },
    /// The job's `run` returned: flush its buffers, send its result and terminal state.
    Finished { job_id: JobId, outcome: crate::JobOutcome },
}

/// Log lines and the latest progress of one job, waiting for the next flush.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    pub(crate) lines: VecDeque<(LogStream, String)>,
    /// Lines dropped since the last `job_log`, per stream: `[stdout, stderr]`.
    pub(crate) dropped: [u64; 2],
    pub(crate) progress: Option<JobProgress>,
}

pub(crate) fn stream_index(stream: LogStream) -> usize {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

/// The job's handle on the session. Cheap to clone; every clone talks about the same job.
#[derive(Clone, Debug)]
pub struct JobContext {
    job_id: JobId,
    token: CancellationToken,
    buffers: Arc<Mutex<Buffers>>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

impl JobContext {
    pub(crate) fn new(
        job_id: JobId,
        token: CancellationToken,
        buffers: Arc<Mutex<Buffers>>,
        outgoing: mpsc::UnboundedSender<Outgoing>,
    ) -> Self {
        Self { job_id, token, buffers, outgoing }
    }

    /// The job's id.
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// True once the supervisor asked to cancel the job (or the session is ending).
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the job is cancelled; use it in `tokio::select!` next to the work.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The job's cancellation token, for handing to sub-tasks.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Reports progress: `current` of `total` (when known), with an optional short status
    /// line. Values are clamped into what the schema accepts (negative or NaN becomes 0, a
    /// non-positive total is dropped, the message is cut to 256 characters). Only the latest
    /// report before a flush is sent.
    pub fn progress(&self, current: f64, total: Option<f64>, message: Option<&str>) {
        let clamp = |v: f64| if v.is_nan() { 0.0 } else { v.clamp(0.0, PROGRESS_MAX) };
        let progress = JobProgress {
            job_id: self.job_id.clone(),
            current: clamp(current),
            total: total.map(clamp).filter(|t| *t > 0.0),
            unit: None,
            message: message.map(|m| m.chars().take(PROGRESS_MESSAGE_LEN).collect()),
        };
        self.lock().progress = Some(progress);
    }

    /// Logs `text` as the job's standard output. Each line of `text` is one log line.
    pub fn log(&self, text: &str) {
        self.log_to(LogStream::Stdout, text);
    }

    /// Logs `text` as the job's standard error.
    pub fn log_stderr(&self, text: &str) {
        self.log_to(LogStream::Stderr, text);
    }

    /// Logs `text` on `stream`, one log line per line of `text` (a final newline adds no
    /// empty line). Lines over the length limit are split; lines beyond the buffer bound are
    /// dropped and counted.
    pub fn log_to(&self, stream: LogStream, text: &str) {
        let mut buffers = self.lock();
        let text = text.strip_suffix('\n').unwrap_or(text);
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            for piece in split_line(line) {
                if buffers.lines.len() >= MAX_PENDING_LINES {
                    buffers.dropped[stream_index(stream)] += 1;
                } else {
                    buffers.lines.push_back((stream, piece.to_owned()));
                }
            }
        }
    }

    /// Asks the supervisor to rent GPUs for this job (`acquire_gpu`). The request's `job_id`
    /// is set to this job's. The answer can take minutes: the supervisor estimates, gates,
    /// reserves budget and rents before it replies.
    pub async fn acquire_gpu(&self, mut request: AcquireGpu) -> Result<Lease, RequestError> {
        request.job_id = self.job_id.clone();
        match self.request("acquire_gpu", request.into()).await? {
            Message::Lease(lease) => Ok(lease),
            other => Err(unexpected("acquire_gpu", &other)),
        }
    }

    /// The current state of one of this driver's leases (`lease_status`).
    pub async fn lease_status(&self, lease_id: &LeaseId) -> Result<Lease, RequestError> {
        let request = LeaseStatus { lease_id: lease_id.clone() };
        match self.request("lease_status", request.into()).await? {
            Message::Lease(lease) => Ok(lease),
            other => Err(unexpected("lease_status", &other)),
        }
    }

    /// The last `tail` log lines of a lease's instance (`lease_logs`).
    pub async fn lease_logs(
        &self,
        lease_id: &LeaseId,
        tail: u32,
    ) -> Result<LeaseLog, RequestError> {
        let request = LeaseLogs { lease_id: lease_id.clone(), tail };
        match self.request("lease_logs", request.into()).await? {
            Message::LeaseLog(log) => Ok(log),
            other => Err(unexpected("lease_logs", &other)),
        }
    }

    /// Gives a lease back (`release_gpu`); the answer is the final `lease`. Releasing twice is
    /// harmless.
    pub async fn release_gpu(&self, lease_id: &LeaseId) -> Result<Lease, RequestError> {
        let request = ReleaseGpu { lease_id: lease_id.clone() };
        match self.request("release_gpu", request.into()).await? {
            Message::Lease(lease) => Ok(lease),
            other => Err(unexpected("release_gpu", &other)),
        }
    }

    async fn request(&self, request: &'static str, msg: Message) -> Result<Message, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.outgoing
            .send(Outgoing::Request { msg, reply })
            .map_err(|_| RequestError::SessionClosed { request })?;
        match answer.await {
            Ok(Ok(Message::Error(error))) => Err(RequestError::Refused { request, error }),
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(RequestError::NotSent { reason, .. })) => {
                Err(RequestError::NotSent { request, reason })
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(RequestError::SessionClosed { request }),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Buffers> {
        self.buffers.lock()
    }
}

fn unexpected(request: &'static str, got: &Message) -> RequestError {
    RequestError::UnexpectedReply { request, got: got.message_type().as_str() }
}

/// Splits a line into pieces of at most `LOG_LINE_LEN` characters (at least one piece).
fn split_line(line: &str) -> impl Iterator<Item = &str> {
    let max = LOG_LINE_LEN as usize;
    let mut rest = Some(line);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.char_indices().nth(max) {
            Some((cut, _)) => {
                rest = Some(&current[cut..]);
                Some(&current[..cut])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_split_by_characters() {
        let max = LOG_LINE_LEN as usize;
        let line = "é".repeat(max * 2 + 3);
        let pieces: Vec<_> = split_line(&line).collect();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0].chars().count(), max);
        assert_eq!(pieces[2].chars().count(), 3);
        assert_eq!(split_line("").collect::<Vec<_>>(), [""]);
    }
}
