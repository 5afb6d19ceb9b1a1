//! The session task: handshake, then one loop that owns the connection.
//!
//! Everything that writes to the transport goes through this task, in the order it happens:
//! the loop answers `ping` at once, acknowledges `run_job` and `cancel_job` at once, sends a
//! job's `running` state before the job's code starts, and for a finished job sends its last
//! log lines and progress, then `job_result`, then the terminal `job_state`. Job code talks to
//! the loop over a channel, so a slow job never delays a heartbeat (as long as it does not
//! block the runtime's thread).

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::limits::{LOG_LINES_PER_FRAME, MESSAGE_LEN, NEGOTIABLE_MAX_FRAME_BYTES};
use drover_proto::{
    Ack, ActionName, Capability, DriverInfo, ErrorCode, Hello, JobId, JobLog, JobPhase, JobResult,
    JobState, LogStream, Message, MsgId, Outcome, Party, Pong, RunJob, WireError,
};
use drover_transport::{Connection, ConnectionError, Inbound};
use futures_util::FutureExt as _;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::{Buffers, JobContext, Outgoing, RequestError, stream_index};
use crate::{Driver, DriverError, Ended, FLUSH_INTERVAL, HELLO_REPLY_TIMEOUT, Job, JobError};

/// Most frames handled back to back, answers buffered, before the answers are written.
const BURST: usize = 64;

/// Bytes kept free in a `job_log` frame for the envelope and the other fields.
const LOG_FRAME_OVERHEAD: usize = 512;

struct Running {
    token: CancellationToken,
    buffers: Arc<Mutex<Buffers>>,
    task: AbortHandle,
}

struct Session<T, D> {
    conn: Connection<T>,
    driver: Arc<D>,
    actions: BTreeMap<ActionName, ()>,
    jobs: HashMap<JobId, Running>,
    pending: HashMap<MsgId, oneshot::Sender<Result<Message, RequestError>>>,
    tx: mpsc::UnboundedSender<Outgoing>,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    /// Set by `shutdown`: (when to cancel the remaining jobs, when to give up on them).
    draining: Option<(Instant, Instant)>,
    /// A reply sits in the write buffer.
    unflushed: bool,
}

pub(crate) async fn serve<D, T>(driver: D, io: T) -> Result<Ended, DriverError>
where
    D: Driver,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let hello = hello::<D>(&driver)?;
    let actions = hello.actions.keys().map(|name| (name.clone(), ())).collect();
    let mut conn = Connection::new(io, Party::Driver);
    let hello_id = conn.request(hello).await.map_err(DriverError::Transport)?;

    // Handshake: wait for welcome, answering pings meanwhile.
    let give_up = Instant::now() + HELLO_REPLY_TIMEOUT;
    loop {
        let inbound = tokio::time::timeout_at(give_up, conn.recv())
            .await
            .map_err(|_| DriverError::NoWelcome { after: HELLO_REPLY_TIMEOUT })?
            .map_err(DriverError::Transport)?;
        match inbound {
            None => return Ok(Ended::TransportClosed),
            Some(Inbound::Reply { re, msg: Message::Welcome(welcome), .. }) if re == hello_id => {
                if !drover_proto::PROTOCOL_VERSIONS.contains(&welcome.protocol_version) {
                    return Err(DriverError::VersionMismatch {
                        offered: format!("{:?}", drover_proto::PROTOCOL_VERSIONS),
                        supported: format!("[{}] (chosen in welcome)", welcome.protocol_version),
                    });
                }
                conn.set_max_frame_bytes(welcome.max_frame_bytes);
                break;
            }
            Some(Inbound::Reply { re, msg: Message::Error(error), .. }) if re == hello_id => {
                return Err(refused_hello(error));
            }
            Some(Inbound::Request { id, msg: Message::Ping(_) }) => {
                conn.reply(id, Pong {}).await.map_err(DriverError::Transport)?;
            }
            Some(Inbound::Request { id, .. }) => {
                let error = wire(ErrorCode::NotReady, "the handshake has not finished");
                conn.reply(id, error).await.map_err(DriverError::Transport)?;
            }
            Some(_) => {}
        }
    }

    let (tx, rx) = mpsc::unbounded_channel();
    let mut session = Session {
        conn,
        driver: Arc::new(driver),
        actions,
        jobs: HashMap::new(),
        pending: HashMap::new(),
        tx,
        rx,
        draining: None,
        unflushed: false,
    };
    let ended = session.run().await;
    for job in session.jobs.values() {
        job.token.cancel();
        job.task.abort();
    }
    ended
}

fn hello<D: Driver>(driver: &D) -> Result<Hello, DriverError> {
    let name = D::NAME.parse().map_err(|e| DriverError::Declaration {
        what: format!("driver name {:?}: {e}", D::NAME),
    })?;
    let mut actions = BTreeMap::new();
    for action in driver.actions() {
        let (name, schema) = action.into_parts()?;
        if actions.insert(name.clone(), schema).is_some() {
            return Err(DriverError::Declaration {
                what: format!("action {:?} is declared twice", name.as_str()),
            });
        }
    }
    if actions.is_empty() {
        return Err(DriverError::Declaration { what: "no actions are declared".to_owned() });
    }
    let capabilities = ["cancel", "progress", "logs", "shutdown"]
        .iter()
        .filter_map(|c| c.parse::<Capability>().ok())
        .collect();
    Ok(Hello {
        protocol_versions: drover_proto::PROTOCOL_VERSIONS.to_vec(),
        driver: DriverInfo { name, version: D::VERSION.to_owned() },
        capabilities,
        actions,
        schema_sha256: drover_proto::schema::schema_set_sha256().to_owned(),
        max_frame_bytes: None,
    })
}

fn refused_hello(error: WireError) -> DriverError {
    if error.code == ErrorCode::VersionMismatch {
        let supported = error
            .details
            .as_ref()
            .and_then(|d| d.get("supported"))
            .map(Value::to_string)
            .unwrap_or_else(|| "(not said)".to_owned());
        DriverError::VersionMismatch {
            offered: format!("{:?}", drover_proto::PROTOCOL_VERSIONS),
            supported,
        }
    } else {
        DriverError::HelloRefused { code: error.code, message: error.message }
    }
}

fn wire(code: ErrorCode, message: &str) -> WireError {
    WireError { code, message: message.to_owned(), violations: Vec::new(), details: None }
}

fn cut(text: &str) -> String {
    drover_proto::text::truncate(text, MESSAGE_LEN)
}

impl<T: AsyncRead + AsyncWrite + Unpin, D: Driver> Session<T, D> {
    async fn run(&mut self) -> Result<Ended, DriverError> {
        // One timer, re-armed after it fires, rather than a new one per loop turn.
        let flush = tokio::time::sleep(FLUSH_INTERVAL);
        tokio::pin!(flush);
        let mut cancelled_all = false;
        let mut burst = 0;
        loop {
            if self.unflushed {
                // Answer the requests that have already arrived before writing: a burst of
                // pings costs one write. At most BURST in a row, so nothing else starves.
                let ready = if burst < BURST { self.conn.recv().now_or_never() } else { None };
                burst += 1;
                if let Some(inbound) = ready {
                    match inbound {
                        Ok(Some(inbound)) => self.on_inbound(inbound).await?,
                        Ok(None) => return Ok(Ended::TransportClosed),
                        Err(error) => return Err(DriverError::Transport(error)),
                    }
                    continue;
                }
                self.conn.flush().await.map_err(DriverError::Transport)?;
                self.unflushed = false;
                burst = 0;
            }
            if self.draining.is_some() && self.jobs.is_empty() {
                self.flush_all().await?;
                let _ = self.conn.close().await;
                return Ok(Ended::Shutdown);
            }
            let cancel_at = self.draining.filter(|_| !cancelled_all).map(|(cancel, _)| cancel);
            let give_up = self.draining.map(|(_, give_up)| give_up);
            tokio::select! {
                inbound = self.conn.recv() => match inbound {
                    Ok(Some(inbound)) => self.on_inbound(inbound).await?,
                    Ok(None) => return Ok(Ended::TransportClosed),
                    Err(error) => return Err(DriverError::Transport(error)),
                },
                Some(outgoing) = self.rx.recv() => self.on_outgoing(outgoing).await?,
                () = &mut flush => {
                    self.flush_all().await?;
                    flush.as_mut().reset(Instant::now() + FLUSH_INTERVAL);
                }
                () = sleep_opt(cancel_at) => {
                    for job in self.jobs.values() {
                        job.token.cancel();
                    }
                    cancelled_all = true;
                }
                () = sleep_opt(give_up) => self.abandon_jobs().await?,
            }
        }
    }

    async fn on_inbound(&mut self, inbound: Inbound) -> Result<(), DriverError> {
        match inbound {
            Inbound::Request { id, msg } => self.on_request(id, msg).await,
            Inbound::Reply { re, msg, .. } => {
                if let Some(waiter) = self.pending.remove(&re) {
                    let _ = waiter.send(Ok(msg));
                }
                Ok(())
            }
            // Events from the supervisor (`error` without `re`) and rejected frames (already
            // answered by the connection) need nothing more.
            Inbound::Event(_) | Inbound::Rejected(_) => Ok(()),
        }
    }

    async fn on_request(&mut self, id: MsgId, msg: Message) -> Result<(), DriverError> {
        let mut started = None;
        let answer: Message = match msg {
            Message::Ping(_) => Pong {}.into(),
            Message::RunJob(run) => match self.start_job(run) {
                Ok(job_id) => {
                    started = Some(job_id);
                    Ack {}.into()
                }
                Err(error) => error.into(),
            },
            Message::CancelJob(cancel) => match self.jobs.get(&cancel.job_id) {
                Some(job) => {
                    job.token.cancel();
                    Ack {}.into()
                }
                None => wire(ErrorCode::UnknownJob, "no such job is running on this driver").into(),
            },
            Message::Shutdown(shutdown) => {
                let grace = Duration::from_millis(u64::from(shutdown.grace_ms));
                let now = Instant::now();
                if self.draining.is_none() {
                    self.draining = Some((now + grace / 2, now + grace));
                }
                Ack {}.into()
            }
            other => wire(
                ErrorCode::UnexpectedMessage,
                &format!("a driver does not answer {}", other.message_type()),
            )
            .into(),
        };
        if matches!(answer, Message::Pong(_)) {
            self.conn.reply_buffered(id, answer).await.map_err(DriverError::Transport)?;
            self.unflushed = true;
        } else {
            self.conn.reply(id, answer).await.map_err(DriverError::Transport)?;
        }
        // A job's first state follows its ack. Its code may already be running, but anything
        // it sends goes through this task, after this.
        if let Some(job_id) = started {
            self.send_state(job_id, JobPhase::Running, None).await?;
        }
        Ok(())
    }

    fn start_job(&mut self, run: RunJob) -> Result<JobId, WireError> {
        if self.draining.is_some() {
            return Err(wire(ErrorCode::NotReady, "the driver is shutting down"));
        }
        if !self.actions.contains_key(&run.action) {
            return Err(wire(ErrorCode::UnknownAction, "this driver declared no such action"));
        }
        if self.jobs.contains_key(&run.job_id) {
            return Err(wire(
                ErrorCode::UnexpectedMessage,
                "a job with this id is already running",
            ));
        }
        let token = CancellationToken::new();
        let buffers = Arc::new(Mutex::new(Buffers::default()));
        let ctx =
            JobContext::new(run.job_id.clone(), token.clone(), buffers.clone(), self.tx.clone());
        let job = Job {
            id: run.job_id.clone(),
            action: run.action,
            params: run.params,
            gpu: run.gpu,
            deadline_unix_ms: run.deadline_unix_ms,
        };
        let driver = Arc::clone(&self.driver);
        let inner = tokio::spawn(async move { driver.run(ctx, job).await });
        let task = inner.abort_handle();
        let tx = self.tx.clone();
        let job_id = run.job_id.clone();
        tokio::spawn(async move {
            let outcome = match inner.await {
                Ok(outcome) => outcome,
                Err(e) if e.is_cancelled() => Err(JobError::Cancelled),
                Err(_) => Err(JobError::Failed("the job's code panicked".to_owned())),
            };
            let _ = tx.send(Outgoing::Finished { job_id, outcome });
        });
        self.jobs.insert(run.job_id.clone(), Running { token, buffers, task });
        Ok(run.job_id)
    }

    async fn on_outgoing(&mut self, outgoing: Outgoing) -> Result<(), DriverError> {
        match outgoing {
            Outgoing::Request { msg, reply } => match self.conn.request(msg).await {
                Ok(id) => {
                    self.pending.insert(id, reply);
                    Ok(())
                }
                Err(ConnectionError::Outgoing(invalid)) => {
                    let _ = reply.send(Err(RequestError::NotSent {
                        request: "request",
                        reason: invalid.to_string(),
                    }));
                    Ok(())
                }
                Err(error) => Err(DriverError::Transport(error)),
            },
            Outgoing::Finished { job_id, outcome } => {
                let Some(job) = self.jobs.remove(&job_id) else { return Ok(()) };
                self.flush_job(&job_id, &job.buffers).await?;
                let (outcome, output, message) = match outcome {
                    Ok(output) => (Outcome::Succeeded, output.filter(|v| !v.is_null()), None),
                    Err(JobError::Cancelled) => {
                        (Outcome::Cancelled, None, Some("cancelled".to_owned()))
                    }
                    Err(JobError::Failed(message)) => (Outcome::Failed, None, Some(cut(&message))),
                };
                self.finish(job_id, outcome, output, message).await
            }
        }
    }

    /// Sends a job's result and its terminal state.
    async fn finish(
        &mut self,
        job_id: JobId,
        outcome: Outcome,
        output: Option<Value>,
        message: Option<String>,
    ) -> Result<(), DriverError> {
        let state = match outcome {
            Outcome::Succeeded => JobPhase::Succeeded,
            Outcome::Failed => JobPhase::Failed,
            Outcome::Cancelled => JobPhase::Cancelled,
        };
        let result =
            JobResult { job_id: job_id.clone(), outcome, output, message: message.clone() };
        match self.conn.event(result).await {
            Ok(()) => {}
            // An output the schema refuses (too large, say) must not lose the job's end.
            Err(ConnectionError::Outgoing(_)) => {
                let result = JobResult {
                    job_id: job_id.clone(),
                    outcome: Outcome::Failed,
                    output: None,
                    message: Some("the job's output could not be sent".to_owned()),
                };
                self.conn.event(result).await.map_err(DriverError::Transport)?;
                return self
                    .send_state(job_id, JobPhase::Failed, Some("output not sendable".to_owned()))
                    .await;
            }
            Err(error) => return Err(DriverError::Transport(error)),
        }
        self.send_state(job_id, state, message).await
    }

    async fn send_state(
        &mut self,
        job_id: JobId,
        state: JobPhase,
        message: Option<String>,
    ) -> Result<(), DriverError> {
        self.conn.event(JobState { job_id, state, message }).await.map_err(DriverError::Transport)
    }

    /// After the shutdown grace: every job still running is reported cancelled and dropped.
    async fn abandon_jobs(&mut self) -> Result<(), DriverError> {
        let jobs: Vec<_> = self.jobs.drain().collect();
        for (job_id, job) in jobs {
            job.token.cancel();
            job.task.abort();
            self.flush_job(&job_id, &job.buffers).await?;
            let message = Some("the shutdown grace period ended".to_owned());
            self.finish(job_id, Outcome::Cancelled, None, message).await?;
        }
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<(), DriverError> {
        let jobs: Vec<_> =
            self.jobs.iter().map(|(id, job)| (id.clone(), Arc::clone(&job.buffers))).collect();
        for (job_id, buffers) in jobs {
            self.flush_job(&job_id, &buffers).await?;
        }
        Ok(())
    }

    /// Sends a job's buffered log lines (in frames that fit) and its latest progress.
    async fn flush_job(
        &mut self,
        job_id: &JobId,
        buffers: &Mutex<Buffers>,
    ) -> Result<(), DriverError> {
        let (lines, mut dropped, progress) = {
            let mut b = buffers.lock();
            (std::mem::take(&mut b.lines), std::mem::take(&mut b.dropped), b.progress.take())
        };
        let budget = (self.conn.max_frame_bytes().min(NEGOTIABLE_MAX_FRAME_BYTES) as usize)
            .saturating_sub(LOG_FRAME_OVERHEAD);
        let mut batch: Vec<String> = Vec::new();
        let mut batch_stream = LogStream::Stdout;
        let mut size = 0;
        for (stream, line) in lines {
            let cost = serde_json::to_string(&line).map_or(line.len() * 6, |s| s.len()) + 1;
            let full = batch.len() >= LOG_LINES_PER_FRAME as usize || size + cost > budget;
            if !batch.is_empty() && (stream != batch_stream || full) {
                let lines = std::mem::take(&mut batch);
                self.send_log(job_id, batch_stream, lines, &mut dropped).await?;
                size = 0;
            }
            batch_stream = stream;
            size += cost;
            batch.push(line);
        }
        if !batch.is_empty() {
            self.send_log(job_id, batch_stream, batch, &mut dropped).await?;
        }
        // Drops with no line left to carry them go in a frame of their own.
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            if dropped[stream_index(stream)] > 0 {
                let marker = format!("[{} line(s) dropped]", dropped[stream_index(stream)]);
                self.send_log(job_id, stream, vec![marker], &mut dropped).await?;
            }
        }
        if let Some(progress) = progress {
            self.conn.event(progress).await.map_err(DriverError::Transport)?;
        }
        Ok(())
    }

    async fn send_log(
        &mut self,
        job_id: &JobId,
        stream: LogStream,
        lines: Vec<String>,
        dropped: &mut [u64; 2],
    ) -> Result<(), DriverError> {
        let count = std::mem::take(&mut dropped[stream_index(stream)]);
        let log = JobLog { job_id: job_id.clone(), stream, lines, dropped: count };
        self.conn.event(log).await.map_err(DriverError::Transport)
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
