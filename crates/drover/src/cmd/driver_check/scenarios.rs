//! The scenarios of `drover driver-check`, played in order against one driver process at a
//! time. See the [parent module](super) for the list and the deadlines. The scenarios and the
//! kit's state are here; how the kit talks to a driver is in `plumbing`.

use parking_lot::Mutex;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::limits::DEFAULT_MAX_FRAME_BYTES;
use drover_proto::{ErrorCode, Hello, JobId, JobPhase, Message, Ping, RunJob, Shutdown, WireError};
use drover_transport::{Connection, Inbound, SchemaChecker};
use serde_json::{Map, Value};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::process::{Launcher, Output, Process};
use super::{JobSpec, Row, TOTAL_TIME, Verdict};

mod plumbing;

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
            let output = output.lock();
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
