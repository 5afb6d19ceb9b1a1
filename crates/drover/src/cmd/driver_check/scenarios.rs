//! The scenarios of `drover driver-check`, played in order against one driver process at a
//! time. See the [parent module](super) for the list and the deadlines.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use drover_proto::limits::DEFAULT_MAX_FRAME_BYTES;
use drover_proto::{
    CancelJob, ErrorCode, Hello, JobId, JobPhase, Message, MsgId, Party, Ping, RunJob, Shutdown,
    Welcome, WireError,
};
use drover_transport::{CodecError, Connection, ConnectionError, Inbound, SchemaChecker};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::process::{Launcher, Output, Process};
use super::{JobSpec, Row, TOTAL_TIME, Verdict};

const HELLO_DEADLINE: Duration = Duration::from_secs(5);
const EXIT_DEADLINE: Duration = Duration::from_secs(5);
const PONG_DEADLINE: Duration = Duration::from_secs(2);
const ACK_DEADLINE: Duration = Duration::from_secs(2);
const JOB_DEADLINE: Duration = Duration::from_secs(10);
/// How long a write to the driver may stall before the kit decides it stopped reading.
const WRITE_DEADLINE: Duration = Duration::from_secs(3);
const CANCEL_DEADLINE: Duration = Duration::from_secs(5);
const SHUTDOWN_GRACE_MS: u32 = 2000;
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);
/// How long the kit keeps listening after a job's terminal state for stray frames about it.
const AFTER_TERMINAL: Duration = Duration::from_millis(300);
/// Before cancelling, how long the kit waits for the job's `running` state.
const CANCEL_AFTER: Duration = Duration::from_millis(500);
/// Protocol versions this kit speaks.
const KIT_VERSIONS: &[u16] = drover_proto::PROTOCOL_VERSIONS;

/// What to play against.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) argv: Vec<OsString>,
    pub(crate) launcher: Launcher,
    pub(crate) job: Option<JobSpec>,
    pub(crate) cancel_job: Option<JobSpec>,
}

/// A driver after its handshake.
struct Live {
    conn: Connection<UnixStream>,
    /// The same socket, for writing frames the connection would refuse to write.
    raw: UnixStream,
    process: Process,
    max_frame_bytes: u32,
}

/// What the transport gave.
enum Got {
    Frame(Inbound),
    Timeout,
    Closed,
    Broken(String),
}

struct Kit {
    plan: Plan,
    deadline: Instant,
    live: Option<Live>,
    hello: Option<Hello>,
    handshake_failed: Option<String>,
    scenario: &'static str,
    bad_frames: Vec<String>,
    frames_seen: u64,
    outputs: Vec<Arc<Mutex<Output>>>,
    sessions: u32,
    jobs: u32,
}

/// Plays every scenario and returns the report's rows.
pub(crate) async fn play(plan: Plan) -> anyhow::Result<Vec<Row>> {
    let mut kit = Kit {
        plan,
        deadline: Instant::now() + TOTAL_TIME,
        live: None,
        hello: None,
        handshake_failed: None,
        scenario: "",
        bad_frames: Vec::new(),
        frames_seen: 0,
        outputs: Vec::new(),
        sessions: 0,
        jobs: 0,
    };
    let mut rows = Vec::new();
    macro_rules! scenario {
        ($name:literal, $required:expr, $body:ident) => {{
            kit.scenario = $name;
            let started = Instant::now();
            let (result, why) = if started >= kit.deadline {
                (
                    Verdict::Fail,
                    format!("out of time: the run is bounded by {} s", TOTAL_TIME.as_secs()),
                )
            } else {
                match tokio::time::timeout_at(kit.deadline, kit.$body()).await.unwrap_or_else(
                    |_| {
                        Err(Failure::Fail(format!(
                            "out of time: the run is bounded by {} s",
                            TOTAL_TIME.as_secs()
                        )))
                    },
                ) {
                    Ok(why) => (Verdict::Pass, why),
                    Err(Failure::Fail(why)) => (Verdict::Fail, why),
                    Err(Failure::Warn(why)) => (Verdict::Warn, why),
                    Err(Failure::Trouble(error)) => return Err(error),
                }
            };
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            rows.push(Row { name: $name, required: $required, result, why, ms });
        }};
    }
    scenario!("handshake", true, handshake_scenario);
    scenario!("action_schemas", true, action_schemas);
    scenario!("heartbeat", true, heartbeat);
    scenario!("job_run", true, job_run);
    scenario!("cancel", true, cancel);
    scenario!("malformed_frames", true, malformed_frames);
    scenario!("oversize_frame", true, oversize_frame);
    scenario!("unknown_type", true, unknown_type);
    scenario!("shutdown", true, shutdown);
    scenario!("version_negotiation", true, version_negotiation);
    scenario!("transport_eof", true, transport_eof);
    scenario!("valid_frames", true, valid_frames);
    scenario!("quiet_stdout", false, quiet_stdout);
    if let Some(mut live) = kit.live.take() {
        live.process.kill().await;
    }
    Ok(rows)
}

/// Why a scenario did not pass.
enum Failure {
    Fail(String),
    Warn(String),
    /// The kit itself could not go on (it could not create a socket, say).
    Trouble(anyhow::Error),
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure::Fail(why)
    }
}

type Outcome = Result<String, Failure>;

/// An error and its sources on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn wire_error(code: ErrorCode, message: &str, details: Option<Value>) -> WireError {
    WireError {
        code,
        message: message.to_owned(),
        violations: Vec::new(),
        details: details.and_then(|d| d.as_object().cloned()),
    }
}

/// Tracks one job's events.
#[derive(Default)]
struct Track {
    states: Vec<JobPhase>,
    result: Option<drover_proto::JobResult>,
    problems: Vec<String>,
    after_terminal: Vec<&'static str>,
}

impl Track {
    fn terminal(&self) -> Option<JobPhase> {
        self.states.last().copied().filter(|s| s.is_terminal())
    }

    fn observe(&mut self, job_id: &JobId, msg: &Message) {
        let (about, what) = match msg {
            Message::JobState(s) => (&s.job_id, "job_state"),
            Message::JobResult(r) => (&r.job_id, "job_result"),
            Message::JobProgress(p) => (&p.job_id, "job_progress"),
            Message::JobLog(l) => (&l.job_id, "job_log"),
            _ => return,
        };
        if about != job_id {
            return;
        }
        if self.terminal().is_some() {
            self.after_terminal.push(what);
            return;
        }
        match msg {
            Message::JobState(s) => {
                let rank = |p: JobPhase| match p {
                    JobPhase::Queued => 0,
                    JobPhase::Starting => 1,
                    JobPhase::Running => 2,
                    _ => 3,
                };
                if let Some(&last) = self.states.last()
                    && rank(s.state) <= rank(last)
                {
                    self.problems.push(format!("state {:?} came after {:?}", s.state, last));
                }
                if s.state.is_terminal() {
                    match &self.result {
                        None => {
                            self.problems.push("no job_result before the terminal state".into())
                        }
                        Some(r) => {
                            let expected = match r.outcome {
                                drover_proto::Outcome::Succeeded => JobPhase::Succeeded,
                                drover_proto::Outcome::Failed => JobPhase::Failed,
                                drover_proto::Outcome::Cancelled => JobPhase::Cancelled,
                            };
                            if expected != s.state {
                                self.problems.push(format!(
                                    "job_result says {:?} but the terminal state is {:?}",
                                    r.outcome, s.state
                                ));
                            }
                        }
                    }
                }
                self.states.push(s.state);
            }
            Message::JobResult(r) => {
                if self.result.is_some() {
                    self.problems.push("a second job_result".into());
                }
                self.result = Some(r.clone());
            }
            _ => {}
        }
    }

    fn states_text(&self) -> String {
        let names: Vec<_> = self.states.iter().map(|s| format!("{s:?}").to_lowercase()).collect();
        if names.is_empty() { "no state".to_owned() } else { names.join(" -> ") }
    }
}

/// An instance the schema accepts: its first `examples` entry, or `{}`.
fn example_params(schema: &Value) -> Option<Map<String, Value>> {
    let checker = SchemaChecker::new(schema).ok()?;
    let mut candidates = Vec::new();
    if let Some(Value::Object(first)) = schema.get("examples").and_then(|e| e.get(0)) {
        candidates.push(first.clone());
    }
    candidates.push(Map::new());
    candidates.into_iter().find(|c| checker.check(&Value::Object(c.clone())).is_ok())
}

impl Kit {
    // -----------------------------------------------------------------------------------------
    // Plumbing

    fn clip(&self, at: Instant) -> Instant {
        at.min(self.deadline)
    }

    fn start(&mut self) -> Result<(Connection<UnixStream>, UnixStream, Process), Failure> {
        let trouble = |e: std::io::Error| Failure::Trouble(anyhow::Error::new(e));
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(trouble)?;
        ours.set_nonblocking(true).map_err(trouble)?;
        let raw = ours.try_clone().map_err(trouble)?;
        let conn = Connection::new(UnixStream::from_std(ours).map_err(trouble)?, Party::Supervisor);
        let raw = UnixStream::from_std(raw).map_err(trouble)?;
        let process = Process::start(&self.plan.launcher, &self.plan.argv, theirs)
            .map_err(Failure::Trouble)?;
        self.outputs.push(Arc::clone(&process.output));
        self.sessions += 1;
        Ok((conn, raw, process))
    }

    /// Reads the next valid frame before `until`, recording invalid ones.
    async fn recv(&mut self, conn: &mut Connection<UnixStream>, until: Instant) -> Got {
        loop {
            let got = tokio::time::timeout_at(self.clip(until), conn.recv()).await;
            match got {
                Err(_) => return Got::Timeout,
                Ok(Ok(None)) => return Got::Closed,
                Ok(Ok(Some(Inbound::Rejected(invalid)))) => {
                    self.frames_seen += 1;
                    let at = invalid
                        .locations()
                        .first()
                        .map(|v| {
                            let pointer =
                                if v.instance_path.is_empty() { "/" } else { &v.instance_path };
                            format!(" at {pointer}: {}", v.message)
                        })
                        .unwrap_or_else(|| format!(": {invalid}"));
                    self.bad_frames.push(format!("in {}: {}{at}", self.scenario, invalid.code()));
                }
                Ok(Ok(Some(inbound))) => {
                    self.frames_seen += 1;
                    return Got::Frame(inbound);
                }
                Ok(Err(error)) => {
                    let text = chain(&error);
                    // Only a stream that is not frames is the driver's writing fault; an I/O
                    // error (a reset after it died) is not.
                    if matches!(
                        error,
                        ConnectionError::Codec(
                            CodecError::Unframed { .. } | CodecError::Truncated { .. }
                        )
                    ) {
                        self.bad_frames.push(format!("in {}: {text}", self.scenario));
                    }
                    return Got::Broken(text);
                }
            }
        }
    }

    /// Like [`Kit::recv`] on the live session, answering the driver's own requests (pings
    /// with `pong`; GPU requests with `provider_unavailable`: the kit rents nothing).
    async fn pump(&mut self, until: Instant) -> Got {
        let Some(mut live) = self.live.take() else { return Got::Closed };
        let got = loop {
            match self.recv(&mut live.conn, until).await {
                Got::Frame(Inbound::Request { id, msg }) => {
                    let answer: Message = match msg {
                        Message::Ping(_) => drover_proto::Pong {}.into(),
                        _ => wire_error(
                            ErrorCode::ProviderUnavailable,
                            "driver-check rents no GPUs",
                            None,
                        )
                        .into(),
                    };
                    match tokio::time::timeout(WRITE_DEADLINE, live.conn.reply(id, answer)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => break Got::Broken(chain(&error)),
                        Err(_) => {
                            break Got::Broken("the driver stopped reading its transport".into());
                        }
                    }
                }
                other => break other,
            }
        };
        self.live = Some(live);
        got
    }

    /// Describes why the driver is gone (waiting up to a second for it to die first).
    async fn gone(&mut self) -> String {
        match self.live.as_mut() {
            Some(live) => {
                live.process.wait_until(Instant::now() + Duration::from_secs(1)).await;
                format!("the driver {}", live.process.death_note())
            }
            None => "no driver is running".to_owned(),
        }
    }

    async fn drop_live(&mut self) {
        if let Some(mut live) = self.live.take() {
            live.process.kill().await;
        }
    }

    /// Starts a driver and plays the handshake. With `mismatch`, answers `hello` with
    /// `version_mismatch` instead and returns the process.
    async fn handshake(&mut self, mismatch: bool) -> Result<(Live, Hello, Duration), Failure> {
        let (mut conn, raw, mut process) = self.start()?;
        let started = Instant::now();
        let until = started + HELLO_DEADLINE;
        let failure = loop {
            match self.recv(&mut conn, until).await {
                Got::Frame(Inbound::Request { id, msg: Message::Hello(hello) }) => {
                    let elapsed = started.elapsed();
                    let shared =
                        hello.protocol_versions.iter().filter(|v| KIT_VERSIONS.contains(v)).max();
                    if mismatch || shared.is_none() {
                        let supported = if mismatch { json!([999]) } else { json!(KIT_VERSIONS) };
                        let details =
                            json!({"supported": supported, "offered": hello.protocol_versions});
                        let error = wire_error(
                            ErrorCode::VersionMismatch,
                            "no shared protocol version",
                            Some(details),
                        );
                        let _ = tokio::time::timeout(WRITE_DEADLINE, conn.reply(id, error)).await;
                        if mismatch {
                            let live = Live {
                                conn,
                                raw,
                                process,
                                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
                            };
                            return Ok((live, hello, elapsed));
                        }
                        break format!(
                            "no shared protocol version: the driver offers {:?}, the kit speaks {KIT_VERSIONS:?}",
                            hello.protocol_versions
                        );
                    }
                    let max_frame_bytes = hello
                        .max_frame_bytes
                        .unwrap_or(DEFAULT_MAX_FRAME_BYTES)
                        .min(DEFAULT_MAX_FRAME_BYTES);
                    self.sessions_welcome(&mut conn, id, max_frame_bytes).await?;
                    conn.set_max_frame_bytes(max_frame_bytes);
                    let live = Live { conn, raw, process, max_frame_bytes };
                    return Ok((live, hello, elapsed));
                }
                Got::Frame(Inbound::Request { id, msg: Message::Ping(_) }) => {
                    let _ =
                        tokio::time::timeout(WRITE_DEADLINE, conn.reply(id, drover_proto::Pong {}))
                            .await;
                }
                Got::Frame(other) => {
                    let what = match &other {
                        Inbound::Request { msg, .. }
                        | Inbound::Reply { msg, .. }
                        | Inbound::Event(msg) => msg.message_type().as_str(),
                        Inbound::Rejected(_) => "an invalid frame",
                    };
                    break format!("the first frame was {what}, not hello");
                }
                Got::Timeout => {
                    let invalid = self
                        .bad_frames
                        .last()
                        .filter(|b| b.starts_with(&format!("in {}:", self.scenario)));
                    break match invalid {
                        Some(bad) => format!(
                            "no valid hello within {} s; invalid frame {bad}",
                            HELLO_DEADLINE.as_secs()
                        ),
                        None => format!("no hello within {} s", HELLO_DEADLINE.as_secs()),
                    };
                }
                Got::Closed => break "the driver closed the transport before hello".to_owned(),
                Got::Broken(why) => break format!("the transport broke before hello: {why}"),
            }
        };
        process.wait_until(Instant::now() + Duration::from_millis(500)).await;
        let note = process.death_note();
        process.kill().await;
        Err(Failure::Fail(format!("{failure}; the driver {note}")))
    }

    async fn sessions_welcome(
        &mut self,
        conn: &mut Connection<UnixStream>,
        id: MsgId,
        max_frame_bytes: u32,
    ) -> Result<(), Failure> {
        let welcome = Welcome {
            protocol_version: drover_proto::PROTOCOL_VERSION,
            session_id: format!("check-{}", self.sessions)
                .parse()
                .map_err(|e| Failure::Trouble(anyhow::anyhow!("session id: {e}")))?,
            heartbeat_ms: 1000,
            max_frame_bytes,
        };
        match tokio::time::timeout(WRITE_DEADLINE, conn.reply(id, welcome)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Fail(format!("sending welcome failed: {}", chain(&e)))),
            Err(_) => Err(Failure::Fail("the driver does not read its transport".to_owned())),
        }
    }

    /// Makes sure a handshaken driver is running.
    async fn ensure(&mut self) -> Result<(), Failure> {
        if let Some(live) = &self.live
            && live.process.alive()
        {
            return Ok(());
        }
        self.drop_live().await;
        if self.handshake_failed.is_some() {
            return Err(Failure::Fail(
                "needs a session; the handshake failed (see handshake)".to_owned(),
            ));
        }
        match self.handshake(false).await {
            Ok((live, hello, _)) => {
                self.hello.get_or_insert(hello);
                self.live = Some(live);
                Ok(())
            }
            Err(Failure::Fail(why)) => {
                self.handshake_failed = Some(why.clone());
                Err(Failure::Fail(format!("could not start a session: {why}")))
            }
            Err(other) => Err(other),
        }
    }

    async fn request(&mut self, msg: impl Into<Message>) -> Result<MsgId, Failure> {
        let live = self.live.as_mut().ok_or_else(|| Failure::Fail("no session".to_owned()))?;
        match tokio::time::timeout(WRITE_DEADLINE, live.conn.request(msg)).await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(e)) => {
                Err(Failure::Fail(format!("the kit could not send its request: {}", chain(&e))))
            }
            Err(_) => {
                // The stream may now end inside a frame: this session is over.
                self.drop_live().await;
                Err(Failure::Fail(format!(
                    "the driver stopped reading its transport: a request could not be written within {} s",
                    WRITE_DEADLINE.as_secs()
                )))
            }
        }
    }

    /// Waits for the reply to `id`, feeding events to `track`.
    async fn reply_to(
        &mut self,
        id: MsgId,
        within: Duration,
        what: &str,
        mut track: Option<(&JobId, &mut Track)>,
    ) -> Result<Message, Failure> {
        let until = Instant::now() + within;
        loop {
            match self.pump(until).await {
                Got::Frame(Inbound::Reply { re, msg, .. }) if re == id => return Ok(msg),
                Got::Frame(Inbound::Event(msg)) => {
                    if let Some((job_id, track)) = track.as_mut() {
                        track.observe(job_id, &msg);
                    }
                }
                Got::Frame(_) => {}
                Got::Timeout => {
                    let alive = self.live.as_ref().is_some_and(|l| l.process.alive());
                    return Err(Failure::Fail(if alive {
                        format!("no answer to {what} within {} ms", ms(within))
                    } else {
                        format!("no answer to {what}: {}", self.gone().await)
                    }));
                }
                Got::Closed => {
                    return Err(Failure::Fail(format!(
                        "the transport closed while waiting for the answer to {what}; {}",
                        self.gone().await
                    )));
                }
                Got::Broken(why) => {
                    return Err(Failure::Fail(format!(
                        "the transport broke: {why}; {}",
                        self.gone().await
                    )));
                }
            }
        }
    }

    async fn ping(&mut self) -> Result<Duration, Failure> {
        let started = Instant::now();
        let id = self.request(Ping {}).await?;
        match self.reply_to(id, PONG_DEADLINE, "ping", None).await? {
            Message::Pong(_) => Ok(started.elapsed()),
            other => Err(Failure::Fail(format!("ping was answered with {}", other.message_type()))),
        }
    }

    async fn raw_frame(&mut self, payload: &[u8]) -> Result<(), Failure> {
        let live = self.live.as_mut().ok_or_else(|| Failure::Fail("no session".to_owned()))?;
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let write = async {
            live.raw.write_all(&len.to_be_bytes()).await?;
            live.raw.write_all(payload).await?;
            live.raw.flush().await
        };
        match tokio::time::timeout(WRITE_DEADLINE, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Fail(format!(
                "writing to the driver failed: {e}; {}",
                self.gone().await
            ))),
            Err(_) => {
                // The stream now ends inside a frame: this session is over.
                self.drop_live().await;
                Err(Failure::Fail(format!(
                    "the driver stopped reading its transport ({} s without progress)",
                    WRITE_DEADLINE.as_secs()
                )))
            }
        }
    }

    fn pick_job(
        &self,
        spec: Option<&JobSpec>,
        last: bool,
    ) -> Result<(String, Map<String, Value>), Failure> {
        let hello = self.hello.as_ref().ok_or_else(|| Failure::Fail("no hello".to_owned()))?;
        if let Some(spec) = spec {
            let schema = hello
                .actions
                .iter()
                .find(|(name, _)| name.as_str() == spec.action)
                .map(|(_, schema)| &schema.0)
                .ok_or_else(|| {
                    Failure::Fail(format!("the driver declares no action {:?}", spec.action))
                })?;
            let params = spec.params.clone().or_else(|| example_params(schema)).unwrap_or_default();
            return Ok((spec.action.clone(), params));
        }
        let usable: BTreeMap<_, _> = hello
            .actions
            .iter()
            .filter_map(|(name, schema)| {
                example_params(&schema.0).map(|p| (name.as_str().to_owned(), p))
            })
            .collect();
        let chosen = if last { usable.into_iter().next_back() } else { usable.into_iter().next() };
        chosen.ok_or_else(|| {
            Failure::Fail(
                "no declared action accepts its first example or {}; name one with --job ACTION=PARAMS".to_owned(),
            )
        })
    }

    /// Runs a job; with `cancel`, cancels it once it runs. Returns the track and a note.
    async fn play_job(
        &mut self,
        spec: Option<JobSpec>,
        cancel: bool,
    ) -> Result<(Track, String), Failure> {
        self.ensure().await?;
        let (action, params) = self.pick_job(spec.as_ref(), cancel)?;
        self.jobs += 1;
        let job_id: JobId = format!("check-job-{}", self.jobs)
            .parse()
            .map_err(|e| Failure::Trouble(anyhow::anyhow!("job id: {e}")))?;
        let deadline_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
            + 120_000;
        let run = RunJob {
            job_id: job_id.clone(),
            action: action.parse().map_err(|e| Failure::Fail(format!("action {action:?}: {e}")))?,
            params,
            gpu: None,
            deadline_unix_ms,
        };
        let mut track = Track::default();
        let id = self.request(run).await?;
        match self.reply_to(id, ACK_DEADLINE, "run_job", Some((&job_id, &mut track))).await? {
            Message::Ack(_) => {}
            Message::Error(e) => {
                return Err(Failure::Fail(format!(
                    "run_job {action} was refused: {} ({})",
                    e.message, e.code
                )));
            }
            other => {
                return Err(Failure::Fail(format!(
                    "run_job was answered with {}",
                    other.message_type()
                )));
            }
        }
        let mut note = format!("{action}: ");
        if cancel {
            let until = Instant::now() + CANCEL_AFTER;
            while track.states.is_empty() {
                match self.pump(until).await {
                    Got::Frame(Inbound::Event(msg)) => track.observe(&job_id, &msg),
                    Got::Frame(_) => {}
                    Got::Timeout => break,
                    Got::Closed | Got::Broken(_) => {
                        return Err(Failure::Fail(format!(
                            "the session ended during the job; {}",
                            self.gone().await
                        )));
                    }
                }
            }
            if let Some(terminal) = track.terminal() {
                note.push_str(&format!("inconclusive: the job ended {terminal:?} before it could be cancelled (name a longer job with --cancel-job); "));
            } else {
                let cancel =
                    CancelJob { job_id: job_id.clone(), reason: "driver-check".to_owned() };
                let sent = Instant::now();
                let id = self.request(cancel).await?;
                match self
                    .reply_to(id, ACK_DEADLINE, "cancel_job", Some((&job_id, &mut track)))
                    .await?
                {
                    Message::Ack(_) => {
                        note.push_str(&format!("cancel acked in {} ms, ", ms(sent.elapsed())))
                    }
                    Message::Error(e)
                        if e.code == ErrorCode::UnknownJob && track.terminal().is_some() =>
                    {
                        note.push_str("the job ended before the cancel, ");
                    }
                    Message::Error(e) => {
                        return Err(Failure::Fail(format!(
                            "cancel_job was refused: {} ({})",
                            e.message, e.code
                        )));
                    }
                    other => {
                        return Err(Failure::Fail(format!(
                            "cancel_job was answered with {}",
                            other.message_type()
                        )));
                    }
                }
            }
        }
        let within = if cancel { CANCEL_DEADLINE } else { JOB_DEADLINE };
        let until = Instant::now() + within;
        let started = Instant::now();
        while track.terminal().is_none() {
            match self.pump(until).await {
                Got::Frame(Inbound::Event(msg)) => track.observe(&job_id, &msg),
                Got::Frame(_) => {}
                Got::Timeout => {
                    let what = if cancel { "of cancel_job" } else { "of run_job" };
                    let alive = self.live.as_ref().is_some_and(|l| l.process.alive());
                    let mut why =
                        if alive { String::new() } else { format!("; {}", self.gone().await) };
                    let prefix = format!("in {}:", self.scenario);
                    let invalid: Vec<_> =
                        self.bad_frames.iter().filter(|b| b.starts_with(&prefix)).collect();
                    if let Some(first) = invalid.first() {
                        why.push_str(&format!(
                            "; {} invalid frame(s) meanwhile, first {first}",
                            invalid.len()
                        ));
                    }
                    return Err(Failure::Fail(format!(
                        "no terminal state within {} s {what} (states so far: {}){why}",
                        within.as_secs(),
                        track.states_text()
                    )));
                }
                Got::Closed | Got::Broken(_) => {
                    return Err(Failure::Fail(format!(
                        "the session ended during the job (states so far: {}); {}",
                        track.states_text(),
                        self.gone().await
                    )));
                }
            }
        }
        let took = started.elapsed();
        // Anything more about the job is a violation.
        let until = Instant::now() + AFTER_TERMINAL;
        loop {
            match self.pump(until).await {
                Got::Frame(Inbound::Event(msg)) => track.observe(&job_id, &msg),
                Got::Frame(_) => {}
                _ => break,
            }
        }
        if let Some(what) = track.after_terminal.first() {
            track.problems.push(format!("{what} after the terminal state"));
        }
        note.push_str(&format!("{} in {} ms", track.states_text(), ms(took)));
        Ok((track, note))
    }

    // -----------------------------------------------------------------------------------------
    // Scenarios

    async fn handshake_scenario(&mut self) -> Outcome {
        match self.handshake(false).await {
            Ok((live, hello, elapsed)) => {
                let mut why = format!(
                    "hello in {} ms from {} {}, {} action(s), protocol {:?}",
                    ms(elapsed),
                    hello.driver.name,
                    hello.driver.version,
                    hello.actions.len(),
                    hello.protocol_versions
                );
                if hello.schema_sha256 != drover_proto::schema::schema_set_sha256() {
                    why.push_str("; its schema digest differs from this build's (not fatal)");
                }
                self.hello = Some(hello);
                self.live = Some(live);
                Ok(why)
            }
            Err(Failure::Fail(why)) => {
                self.handshake_failed = Some(why.clone());
                Err(Failure::Fail(why))
            }
            Err(other) => Err(other),
        }
    }

    async fn action_schemas(&mut self) -> Outcome {
        let Some(hello) = &self.hello else {
            return Err(Failure::Fail("needs the driver's hello, which never came".to_owned()));
        };
        let mut bad = Vec::new();
        for (name, schema) in &hello.actions {
            if let Err(e) = SchemaChecker::new(&schema.0) {
                bad.push(format!("{name}: {e}"));
            }
        }
        if bad.is_empty() {
            let names: Vec<_> = hello.actions.keys().map(|n| n.as_str()).collect();
            Ok(format!("{} schema(s) compile: {}", names.len(), names.join(", ")))
        } else {
            Err(Failure::Fail(format!("params schemas that do not compile: {}", bad.join("; "))))
        }
    }

    async fn heartbeat(&mut self) -> Outcome {
        self.ensure().await?;
        let mut worst = Duration::ZERO;
        for n in 1..=3 {
            let took = self.ping().await.map_err(|f| match f {
                Failure::Fail(why) => Failure::Fail(format!("ping {n} of 3: {why}")),
                other => other,
            })?;
            worst = worst.max(took);
        }
        Ok(format!("3 pongs, slowest {} ms", ms(worst)))
    }

    async fn job_run(&mut self) -> Outcome {
        let spec = self.plan.job.clone();
        let (track, note) = self.play_job(spec, false).await?;
        if !track.problems.is_empty() {
            return Err(Failure::Fail(format!("{note}: {}", track.problems.join("; "))));
        }
        let result = match track.result.as_ref().and_then(|r| r.message.as_deref()) {
            Some(message) => format!(" ({message})"),
            None => String::new(),
        };
        Ok(format!("{note}{result}"))
    }

    async fn cancel(&mut self) -> Outcome {
        let spec = self.plan.cancel_job.clone();
        let (track, mut note) = self.play_job(spec, true).await?;
        if !track.problems.is_empty() {
            return Err(Failure::Fail(format!("{note}: {}", track.problems.join("; "))));
        }
        if track.terminal() != Some(JobPhase::Cancelled) && !note.contains("inconclusive") {
            note.push_str(" (inconclusive: the job finished before the cancel took effect; name a longer job with --cancel-job)");
        }
        Ok(note)
    }

    async fn malformed_frames(&mut self) -> Outcome {
        self.ensure().await?;
        let frames: [(&str, &[u8]); 5] = [
            ("invalid UTF-8", b"\xff\xfe{}"),
            ("invalid JSON", b"{\"msg\": "),
            ("a JSON array", b"[1,2,3]"),
            ("an empty payload", b""),
            (
                "a run_job that breaks its schema",
                br#"{"msg":{"type":"run_job","job_id":"has spaces","action":"x","params":{},"deadline_unix_ms":0}}"#,
            ),
        ];
        for (what, payload) in frames {
            self.raw_frame(payload).await.map_err(|f| match f {
                Failure::Fail(why) => Failure::Fail(format!("after {what}: {why}")),
                other => other,
            })?;
        }
        let took = self.ping().await.map_err(|f| match f {
            Failure::Fail(why) => Failure::Fail(format!("after 5 malformed frames: {why}")),
            other => other,
        })?;
        Ok(format!("survived 5 malformed frames; pong in {} ms", ms(took)))
    }

    async fn oversize_frame(&mut self) -> Outcome {
        self.ensure().await?;
        let max = self.live.as_ref().map_or(DEFAULT_MAX_FRAME_BYTES, |l| l.max_frame_bytes);
        let len = usize::try_from(max).unwrap_or(usize::MAX).saturating_add(1);
        let mut payload = vec![b' '; len];
        payload[0] = b'{';
        self.raw_frame(&payload).await?;
        let took = self.ping().await.map_err(|f| match f {
            Failure::Fail(why) => {
                Failure::Fail(format!("after a frame of {len} bytes (limit {max}): {why}"))
            }
            other => other,
        })?;
        Ok(format!("skipped a frame of {len} bytes (limit {max}); pong in {} ms", ms(took)))
    }

    async fn unknown_type(&mut self) -> Outcome {
        self.ensure().await?;
        self.raw_frame(br#"{"msg":{"type":"frobnicate","level":11}}"#).await?;
        let id = self.request(Ping {}).await?;
        let until = Instant::now() + PONG_DEADLINE;
        let mut answered = None;
        loop {
            match self.pump(until).await {
                Got::Frame(Inbound::Event(Message::Error(e))) => answered = Some(e.code),
                Got::Frame(Inbound::Reply { re, .. }) if re == id => break,
                Got::Frame(_) => {}
                Got::Timeout => {
                    return Err(Failure::Fail(
                        "no pong within 2 s after a frame of unknown type".to_owned(),
                    ));
                }
                Got::Closed | Got::Broken(_) => {
                    return Err(Failure::Fail(format!(
                        "after a frame of unknown type: {}",
                        self.gone().await
                    )));
                }
            }
        }
        match answered {
            Some(ErrorCode::UnknownType) => {
                Ok("answered with error unknown_type and kept going".to_owned())
            }
            Some(code) => Err(Failure::Fail(format!(
                "answered a frame of unknown type with error {code}, not unknown_type"
            ))),
            None => Err(Failure::Fail(
                "a frame of unknown type got no error answer (expected code unknown_type)"
                    .to_owned(),
            )),
        }
    }

    async fn shutdown(&mut self) -> Outcome {
        self.ensure().await?;
        let sent = Instant::now();
        let id = self.request(Shutdown { grace_ms: SHUTDOWN_GRACE_MS }).await?;
        let until = sent + Duration::from_millis(u64::from(SHUTDOWN_GRACE_MS)) + SHUTDOWN_MARGIN;
        let mut acked = false;
        loop {
            match self.pump(until).await {
                Got::Frame(Inbound::Reply { re, msg: Message::Ack(_), .. }) if re == id => {
                    acked = true
                }
                Got::Frame(_) => {}
                Got::Timeout | Got::Closed | Got::Broken(_) => break,
            }
        }
        let Some(mut live) = self.live.take() else {
            return Err(Failure::Fail("no session".to_owned()));
        };
        let died = live.process.wait_until(until).await;
        let note = live.process.death_note();
        live.process.kill().await;
        match died {
            Some(cause) => Ok(format!(
                "{}exited {} ms after shutdown {{grace_ms: {SHUTDOWN_GRACE_MS}}}: {cause}",
                if acked { "acked, " } else { "not acked, but " },
                ms(sent.elapsed().min(until - sent))
            )),
            None => Err(Failure::Fail(format!(
                "still running {} ms after shutdown {{grace_ms: {SHUTDOWN_GRACE_MS}}}{}; {note}",
                ms(until - sent),
                if acked { " (it acked)" } else { " (never acked)" }
            ))),
        }
    }

    async fn version_negotiation(&mut self) -> Outcome {
        self.drop_live().await;
        if self.handshake_failed.is_some() {
            return Err(Failure::Fail(
                "needs a hello; the handshake failed (see handshake)".to_owned(),
            ));
        }
        let (mut live, _, _) = self.handshake(true).await?;
        let sent = Instant::now();
        let died = live.process.wait_until(sent + EXIT_DEADLINE).await;
        let note = live.process.death_note();
        live.process.kill().await;
        drop(live);
        match died {
            Some(cause) => {
                Ok(format!("exited {} ms after version_mismatch: {cause}", ms(sent.elapsed())))
            }
            None => Err(Failure::Fail(format!(
                "still running {} s after error version_mismatch (supported [999]); {note}",
                EXIT_DEADLINE.as_secs()
            ))),
        }
    }

    async fn transport_eof(&mut self) -> Outcome {
        self.drop_live().await;
        self.ensure().await?;
        // Close during a job, if one can be started.
        let mut during = "";
        if let Ok((action, params)) = self.pick_job(self.plan.cancel_job.clone().as_ref(), true) {
            self.jobs += 1;
            if let (Ok(job_id), Ok(action)) =
                (format!("check-job-{}", self.jobs).parse(), action.parse())
            {
                let run = RunJob {
                    job_id,
                    action,
                    params,
                    gpu: None,
                    deadline_unix_ms: 4_000_000_000_000,
                };
                if let Ok(id) = self.request(run).await
                    && matches!(
                        self.reply_to(id, ACK_DEADLINE, "run_job", None).await,
                        Ok(Message::Ack(_))
                    )
                {
                    during = " during a job";
                }
            }
        }
        let Some(live) = self.live.take() else {
            return Err(Failure::Fail("no session".to_owned()));
        };
        let Live { conn, raw, mut process, .. } = live;
        drop(conn);
        drop(raw);
        let closed = Instant::now();
        let died = process.wait_until(closed + EXIT_DEADLINE).await;
        let note = process.death_note();
        process.kill().await;
        match died {
            Some(cause) => Ok(format!(
                "exited {} ms after the transport closed{during}: {cause}",
                ms(closed.elapsed())
            )),
            None => Err(Failure::Fail(format!(
                "still running {} s after the transport closed{during}; {note}",
                EXIT_DEADLINE.as_secs()
            ))),
        }
    }

    async fn valid_frames(&mut self) -> Outcome {
        match self.bad_frames.first() {
            None => Ok(format!(
                "{} frame(s) from {} driver process(es), all valid",
                self.frames_seen, self.sessions
            )),
            Some(first) => Err(Failure::Fail(format!(
                "{} invalid frame(s) of {}; first {first}",
                self.bad_frames.len(),
                self.frames_seen
            ))),
        }
    }

    async fn quiet_stdout(&mut self) -> Outcome {
        let mut lines = 0;
        let mut first = None;
        for output in &self.outputs {
            let output = output.lock().unwrap_or_else(PoisonError::into_inner);
            lines += output.stdout_lines;
            if first.is_none() {
                first.clone_from(&output.stdout_first);
            }
        }
        match first {
            None => Ok("nothing on stdout".to_owned()),
            Some(first) => Err(Failure::Warn(format!(
                "{lines} line(s) on stdout (captured as logs, never read as frames); first: {first:?}"
            ))),
        }
    }
}
