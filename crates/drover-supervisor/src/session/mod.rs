//! One driver process's life: spawn, handshake, serve, stop, and the report of its death.
//!
//! ```text
//! spawn (sandbox, fd 3) ──> hello within hello_timeout_ms ──> welcome ──> ready
//!     │                        │ no hello: kill                 │ heartbeats, jobs, leases
//!     │                        │ no shared version: error        │
//!     │                        │   {version_mismatch}, close      ▼
//!     ▼                        ▼                            end: death, EOF, hung, broken
//! spawn failed            stop ladder                       stream, too many bad frames,
//!                                                           job ignoring cancel, shutdown
//! ```
//!
//! Rules of a ready session:
//!
//! - **Heartbeats.** Every `heartbeat_ms` a `ping`; a ping still unanswered at the next one is
//!   a miss; `heartbeat_misses` misses in a row: the driver is hung and killed.
//! - **Writes are bounded in time.** A frame that cannot be written within one heartbeat
//!   period times the miss limit means the driver has stopped reading: killed as hung.
//! - **Jobs.** States must move forward (`queued` < `starting` < `running` < terminal) and
//!   nothing follows a terminal state; a frame about a job that is not running here is
//!   answered with an `error` event and counted as a violation. At the job's deadline
//!   `cancel_job` is sent; a job that has not ended [`crate::Options::cancel_grace`] after its
//!   cancel gets its driver killed.
//! - **Violations.** Every rejected frame is counted (per session and per driver); more than
//!   [`crate::Options::max_protocol_violations`] in one session kill the driver.
//! - **Backpressure.** Frames are read one at a time and handled without waiting for the
//!   supervisor's caller (see [`crate::job`]): the socket buffer is the only buffer. Reading
//!   stops while the driver is over its read budget ([`crate::Options::read_bytes_per_second`],
//!   see the `metered` module), so a driver that floods blocks in its own `write` and is slowed
//!   to that rate; what it sends is handled within fixed bounds, so the supervisor's memory
//!   stays bounded.
//! - **Leases.** At most [`MAX_BROKER_REQUESTS`] broker calls run at once per session; up to
//!   [`MAX_BROKER_WAITING`] more wait their turn in arrival order (so one job's lease polls
//!   cannot starve another job's `acquire_gpu`), and beyond that a request is refused with
//!   `not_ready`. A waiting request whose job ended meanwhile never reaches the broker. An
//!   `acquire_gpu` is checked against its job's GPU request ([`crate::broker::authorize`]);
//!   a lease is scoped to (session, job): only requests while its job runs on the session that
//!   acquired it reach the broker, and it is forgotten when released or when its job ends.
//!
//! The stop ladder (shutdown, and a driver that must go but may still be polite): `shutdown
//! {grace_ms}` and the grace period (shutdown only), then close the transport and wait
//! [`crate::Options::stop_step`], then SIGTERM and wait again, then SIGKILL. Hung and broken
//! drivers are killed at once.
//!
//! This module runs the loop (`run`: spawn, serve, stop, report) and owns the writes, the
//! heartbeats and the stop ladder; the rest is in rooms of its own: `handshake` (hello,
//! welcome, the ready list), `jobs` (commands, deadlines, job events, failing the jobs of a
//! dead driver) and `leases` (the driver's requests and the broker calls they become).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant as StdInstant;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_proto::{GpuRequest, JobId, Message, MsgId, Party, Ping, Shutdown};
use drover_sandbox::Cause;
use drover_transport::{Connection, ConnectionError, Inbound};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::job::JobSink;
use crate::metered::{Metered, ReadBudget};
use crate::output::{Escaped, Tail, drain};
use crate::process::{self, Process};
use crate::registry::{Command, Driver, Inner, SessionHandle};
use crate::status::DeathReport;

mod handshake;
mod jobs;
mod leases;

use leases::BrokerResult;

/// Broker calls (`acquire_gpu`, `lease_*`) one session may have in flight.
pub const MAX_BROKER_REQUESTS: usize = 16;

/// Broker calls one session may have waiting for a free slot, in arrival order; more are
/// refused with `not_ready`. As many as the jobs a session may run, each with one request.
pub const MAX_BROKER_WAITING: usize = 64;

/// Leases one driver may hold at once (a lease is forgotten when it is released or its job
/// ends); `acquire_gpu` beyond it is refused with `forbidden`.
pub const MAX_LEASES_PER_DRIVER: usize = 4096;

/// This side's requests (`run_job`, `cancel_job`, `shutdown`) remembered while their replies
/// are outstanding; beyond it the oldest is forgotten (its late reply is then rejected), so a
/// driver that never answers cannot grow the map.
pub const MAX_PENDING: usize = 1024;

/// Driver `log` and `error` events written to the supervisor's log per second and session;
/// the rest are counted, and the count is logged.
pub const LOGGED_EVENTS_PER_SECOND: u32 = 50;

/// How long frames already sent by a dead driver are still read, to deliver its last states.
const DRAIN_AFTER_DEATH: Duration = Duration::from_millis(500);

/// How a session ended, decided by the supervisor (the process's own cause comes from the
/// sandbox).
struct End {
    reason: String,
    /// Kill at once instead of climbing the stop ladder.
    kill: bool,
}

impl End {
    fn kill(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), kill: true }
    }
    fn polite(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), kill: false }
    }
}

struct JobEntry {
    sink: JobSink,
    rank: Option<u8>,
    gpu: Option<GpuRequest>,
    budget_usd: f64,
    deadline: Instant,
    cancel: Option<Instant>,
}

/// What one of this side's requests was for.
#[derive(Debug)]
enum Pending {
    Run(JobId),
    Other,
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// Runs one process of `driver` from spawn to death and reports the death.
pub(crate) async fn run(inner: &Arc<Inner>, driver: &Arc<Driver>, slot: u16) -> DeathReport {
    let options = &inner.options;
    let (process, streams) = match process::spawn(&driver.spec, options).await {
        Ok(started) => started,
        Err(error) => {
            return DeathReport {
                cause: None,
                session_end: Some(format!("could not start: {error}")),
                at: SystemTime::now(),
                stdout_tail: Vec::new(),
                stderr_tail: Vec::new(),
            };
        }
    };
    let name = driver.name().to_string();
    let id = SESSIONS.fetch_add(1, Ordering::Relaxed);
    tracing::info!(driver = %name, slot, session = id, pid = process.pid, "driver process started");
    for degradation in &process.degradations {
        tracing::warn!(driver = %name, pid = process.pid, %degradation, "sandbox degraded");
    }
    let (stdout_tail, stderr_tail) = (Tail::default(), Tail::default());
    let (keep, max_line) = (options.output_tail_lines, options.output_line_bytes);
    let mut drains = vec![tokio::spawn(drain(
        streams.stderr,
        stderr_tail.clone(),
        name.clone(),
        "stderr",
        keep,
        max_line,
    ))];
    if let Some(stdout) = streams.stdout {
        let tail = stdout_tail.clone();
        drains.push(tokio::spawn(drain(stdout, tail, name.clone(), "stdout", keep, max_line)));
    }
    let (metered, read_bytes) = Metered::new(streams.transport);
    let mut conn = Connection::new(metered, Party::Supervisor);
    conn.set_max_frame_bytes(options.max_frame_bytes);
    let (commands_tx, commands) = mpsc::channel(options.max_jobs_per_session * 2 + 16);
    let (broker_tx, broker_rx) = mpsc::channel(MAX_BROKER_REQUESTS);
    let config = &driver.spec.config;
    let mut session = Session {
        inner: Arc::clone(inner),
        driver: Arc::clone(driver),
        id,
        conn,
        budget: ReadBudget::new(
            read_bytes,
            options.read_bytes_per_second,
            2 * u64::from(options.max_frame_bytes),
        ),
        process,
        death: None,
        commands_tx,
        commands,
        broker_tx,
        broker_rx,
        broker_inflight: 0,
        broker_waiting: std::collections::VecDeque::new(),
        jobs: HashMap::new(),
        pending: BTreeMap::new(),
        logged: (StdInstant::now(), 0, 0),
        pings: std::collections::VecDeque::new(),
        misses: 0,
        violations: 0,
        handle: None,
        note: None,
        write_timeout: Duration::from_millis(u64::from(config.heartbeat_ms))
            * config.heartbeat_misses.max(1),
    };
    let end = session.serve().await;
    session.deregister();
    let death = session.stop(end.as_ref()).await;
    // The pipes close when the last process holding them is gone; the tails are complete
    // then, or soon after.
    for drain in drains {
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
    let (cause, mut session_end) = match death {
        Ok(death) => (Some(death.cause), None),
        Err(reason) => (None, Some(format!("waiting for the process failed: {reason}"))),
    };
    let cause = match (cause, &end) {
        (Some(Cause::KilledBySupervisor { .. }), Some(end)) => {
            Some(Cause::KilledBySupervisor { reason: end.reason.clone() })
        }
        (cause, _) => cause,
    };
    if let Some(end) = end {
        session_end = Some(end.reason);
    } else if session_end.is_none() {
        session_end = session.note.take();
    }
    let report = DeathReport {
        cause,
        session_end,
        at: SystemTime::now(),
        stdout_tail: stdout_tail.snapshot(),
        stderr_tail: stderr_tail.snapshot(),
    };
    session.fail_jobs(&report.summary());
    report
}

struct Session {
    inner: Arc<Inner>,
    driver: Arc<Driver>,
    id: u64,
    conn: Connection<Metered<UnixStream>>,
    /// How fast the driver may send.
    budget: ReadBudget,
    process: Process,
    /// The process's death, once observed.
    death: Option<Result<drover_sandbox::Death, String>>,
    commands_tx: mpsc::Sender<Command>,
    commands: mpsc::Receiver<Command>,
    /// Boxed: the queue's blocks are sized by its item, and a broker answer is large.
    broker_tx: mpsc::Sender<Box<BrokerResult>>,
    broker_rx: mpsc::Receiver<Box<BrokerResult>>,
    broker_inflight: usize,
    /// Broker calls waiting for a free slot, oldest first; at most [`MAX_BROKER_WAITING`].
    broker_waiting: std::collections::VecDeque<leases::Waiting>,
    jobs: HashMap<JobId, JobEntry>,
    /// This side's requests awaiting a reply, oldest first; at most [`MAX_PENDING`].
    pending: BTreeMap<MsgId, Pending>,
    /// Driver `log` and `error` events written to the supervisor's log in this second.
    logged: (StdInstant, u32, u64),
    /// Pings not answered yet, oldest first (at most `heartbeat_misses`). A late `pong` is
    /// still welcome: it proves the driver alive and resets the misses.
    pings: std::collections::VecDeque<MsgId>,
    misses: u32,
    violations: u32,
    /// Set while the session takes jobs.
    handle: Option<SessionHandle>,
    /// What to say about a death that the supervisor did not cause (e.g. after `shutdown`).
    note: Option<String>,
    write_timeout: Duration,
}

fn flatten(
    death: Result<Result<drover_sandbox::Death, String>, tokio::sync::oneshot::error::RecvError>,
) -> Result<drover_sandbox::Death, String> {
    death.unwrap_or_else(|_| Err("the driver's thread ended without a report".to_owned()))
}

/// A century: what an unrepresentably long duration is cut to.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + after`, cut to a century from now (a caller's `Duration::MAX` must not panic).
pub(crate) fn later(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after.min(FAR)).unwrap_or(now)
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .clamp(1, drover_proto::ids::MAX_SAFE_INTEGER)
}

/// Cuts `text` to the protocol's message limit, on a character boundary.
fn bounded(text: &str) -> String {
    drover_proto::text::truncate(text, drover_proto::limits::MESSAGE_LEN)
}

async fn wait_shutdown(rx: &mut tokio::sync::watch::Receiver<Option<Duration>>) -> Duration {
    match rx.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        // The supervisor is gone: stop at once.
        Err(_) => Duration::ZERO,
    }
}

impl Session {
    fn name(&self) -> &drover_proto::DriverName {
        self.driver.name()
    }

    /// Handshake, then serve until the session must end. `None`: the process died by itself.
    async fn serve(&mut self) -> Option<End> {
        let mut shutdown = self.inner.shutdown.subscribe();
        let checkers = match self.handshake(&mut shutdown).await {
            Ok(checkers) => checkers,
            Err(end) => return end,
        };
        self.register(checkers);
        let config = &self.driver.spec.config;
        let period = Duration::from_millis(u64::from(config.heartbeat_ms));
        let miss_limit = config.heartbeat_misses.max(1);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(Duration::from_millis(100));
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stopping_until: Option<Instant> = None;
        loop {
            let throttled = self.budget.resume_at();
            tokio::select! {
                () = tokio::time::sleep_until(throttled.unwrap_or_else(Instant::now)), if throttled.is_some() => {}
                inbound = self.conn.recv(), if throttled.is_none() => match inbound {
                    Ok(Some(inbound)) => {
                        if let Some(end) = self.on_inbound(inbound).await {
                            return Some(end);
                        }
                    }
                    Ok(None) => {
                        // A driver that is exiting closes its transport first: give it a
                        // moment, so that an orderly exit is not reported as a problem.
                        let step = self.inner.options.stop_step;
                        if let Ok(death) = tokio::time::timeout(step, &mut self.process.death).await {
                            self.death = Some(flatten(death));
                            return None;
                        }
                        return Some(End::polite("the driver closed its transport"));
                    }
                    Err(error) => return Some(End::kill(format!("broken transport: {error}"))),
                },
                Some(command) = self.commands.recv() => {
                    if let Some(end) = self.on_command(command, stopping_until.is_some()).await {
                        return Some(end);
                    }
                }
                Some(result) = self.broker_rx.recv() => {
                    if let Some(end) = self.on_broker(result).await {
                        return Some(end);
                    }
                }
                _ = heartbeat.tick() => {
                    if !self.pings.is_empty() {
                        self.misses += 1;
                        if self.misses >= miss_limit {
                            return Some(End::kill(format!(
                                "hung: {} heartbeats in a row unanswered (every {} ms)",
                                self.misses, period.as_millis()
                            )));
                        }
                    }
                    match self.request(Ping {}).await {
                        Ok(id) => self.pings.push_back(id),
                        Err(end) => return Some(end),
                    }
                    while self.pings.len() > miss_limit as usize {
                        if let Some(old) = self.pings.pop_front() {
                            self.conn.forget(old);
                        }
                    }
                }
                _ = housekeeping.tick() => {
                    if let Some(end) = self.housekeeping(stopping_until).await {
                        return Some(end);
                    }
                }
                grace = wait_shutdown(&mut shutdown), if stopping_until.is_none() => {
                    self.deregister();
                    self.note = Some("stopped by supervisor shutdown".to_owned());
                    let grace_ms = u32::try_from(grace.as_millis())
                        .unwrap_or(u32::MAX)
                        .min(drover_proto::limits::MAX_GRACE_MS);
                    stopping_until = Some(later(grace));
                    match self.request(Shutdown { grace_ms }).await {
                        Ok(id) => self.remember(id, Pending::Other),
                        Err(end) => return Some(end),
                    }
                }
                death = &mut self.process.death => {
                    self.death = Some(flatten(death));
                    self.read_last_frames().await;
                    return None;
                }
            }
        }
    }

    fn count_violation(&mut self, what: &str) -> Result<(), End> {
        self.violations += 1;
        self.driver.state.lock().protocol_violations += 1;
        tracing::info!(driver = %self.name(), session = self.id, violations = self.violations, %what, "frame rejected");
        if self.violations > self.inner.options.max_protocol_violations {
            return Err(End::kill(format!(
                "protocol violation: {} frames rejected (last: {})",
                self.violations,
                bounded(what)
            )));
        }
        Ok(())
    }

    async fn timed<T>(
        &mut self,
        op: impl AsyncFnOnce(&mut Connection<Metered<UnixStream>>) -> Result<T, ConnectionError>,
    ) -> Result<Result<T, ConnectionError>, End> {
        let limit = self.write_timeout;
        match tokio::time::timeout(limit, op(&mut self.conn)).await {
            Ok(result) => Ok(result),
            Err(_) => Err(End::kill(format!(
                "hung: the driver did not read its transport for {} ms",
                limit.as_millis()
            ))),
        }
    }

    fn outgoing(result: Result<(), ConnectionError>, what: &str) -> Result<(), End> {
        match result {
            Ok(()) => Ok(()),
            Err(ConnectionError::Codec(error)) => {
                Err(End::kill(format!("broken transport while sending {what}: {error}")))
            }
            Err(ConnectionError::Outgoing(invalid)) => {
                // A bug on this side; the frame was not sent and the session goes on.
                tracing::error!(%invalid, what, "refused to send an invalid frame");
                Ok(())
            }
        }
    }

    async fn reply(&mut self, re: MsgId, msg: impl Into<Message>) -> Result<(), End> {
        let msg = msg.into();
        let what = msg.message_type();
        let result = self.timed(async |conn| conn.reply(re, msg).await).await?;
        Self::outgoing(result, what.as_str())
    }

    async fn send_event(&mut self, msg: impl Into<Message>) -> Result<(), End> {
        let msg = msg.into();
        let result = self.timed(async |conn| conn.event(msg).await).await?;
        Self::outgoing(result, "an event")
    }

    async fn request(&mut self, msg: impl Into<Message>) -> Result<MsgId, End> {
        let msg = msg.into();
        match self.timed(async |conn| conn.request(msg).await).await? {
            Ok(id) => Ok(id),
            Err(ConnectionError::Codec(error)) => {
                Err(End::kill(format!("broken transport: {error}")))
            }
            Err(ConnectionError::Outgoing(invalid)) => {
                Err(End::kill(format!("internal: refused to send an invalid request: {invalid}")))
            }
        }
    }

    /// Remembers one of this side's requests until its reply.
    fn remember(&mut self, id: MsgId, pending: Pending) {
        self.pending.insert(id, pending);
        while self.pending.len() > MAX_PENDING {
            if let Some((old, _)) = self.pending.pop_first() {
                self.conn.forget(old);
            }
        }
    }

    /// Whether a driver `log` or `error` event may go to the supervisor's log now.
    fn may_log(&mut self) -> bool {
        let (since, logged, unlogged) = &mut self.logged;
        if since.elapsed() >= Duration::from_secs(1) {
            if *unlogged > 0 {
                tracing::warn!(driver = %self.driver.name(), session = self.id, events = *unlogged, "driver log events not logged (rate limit)");
            }
            (*since, *logged, *unlogged) = (StdInstant::now(), 0, 0);
        }
        if *logged < LOGGED_EVENTS_PER_SECOND {
            *logged += 1;
            true
        } else {
            *unlogged += 1;
            false
        }
    }

    async fn on_inbound(&mut self, inbound: Inbound) -> Option<End> {
        match inbound {
            Inbound::Request { id, msg } => self.on_request(id, msg).await.err(),
            Inbound::Reply { re, msg, .. } => {
                if let Some(at) = self.pings.iter().position(|&p| p == re) {
                    self.pings.remove(at);
                    self.misses = 0;
                }
                match (self.pending.remove(&re), msg) {
                    (Some(Pending::Run(job_id)), Message::Error(error)) => {
                        if let Some(entry) = self.jobs.get(&job_id) {
                            let sink = entry.sink.clone();
                            let reason = format!(
                                "the driver refused the job: {}: {}",
                                error.code, error.message
                            );
                            self.end_job_early(&job_id, &sink, &reason);
                        }
                    }
                    (_, Message::Error(error)) => {
                        tracing::info!(driver = %self.name(), code = %error.code, text = %Escaped(&error.message), "the driver answered with an error");
                    }
                    _ => {}
                }
                None
            }
            Inbound::Event(msg) => self.on_event(msg).await.err(),
            Inbound::Rejected(invalid) => self.count_violation(&invalid.to_string()).err(),
        }
    }

    /// Makes sure the process is dead and returns its death: at once for `kill`, else the
    /// ladder (close, SIGTERM, SIGKILL).
    async fn stop(&mut self, end: Option<&End>) -> Result<drover_sandbox::Death, String> {
        if let Some(death) = self.death.take() {
            return death;
        }
        let step = self.inner.options.stop_step;
        if end.is_some_and(|e| !e.kill) {
            let _ = tokio::time::timeout(step, self.conn.close()).await;
            if let Ok(death) = tokio::time::timeout(step, &mut self.process.death).await {
                return flatten(death);
            }
            self.process.terminator.terminate();
            if let Ok(death) = tokio::time::timeout(step, &mut self.process.death).await {
                return flatten(death);
            }
        }
        self.process.kill();
        flatten((&mut self.process.death).await)
    }
}
