//! The kit's plumbing, under the scenarios: starting a driver and playing the handshake,
//! reading frames before a deadline (recording invalid ones, answering the driver's own
//! requests), requests and their replies, raw frames the connection would refuse to write,
//! and playing one job (optionally cancelled) while tracking its events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::limits::DEFAULT_MAX_FRAME_BYTES;
use drover_proto::{
    CancelJob, ErrorCode, Hello, JobId, Message, MsgId, Party, Ping, RunJob, Welcome,
};
use drover_transport::{CodecError, Connection, ConnectionError, Inbound};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::{
    ACK_DEADLINE, AFTER_TERMINAL, CANCEL_AFTER, CANCEL_DEADLINE, Failure, Got, HELLO_DEADLINE,
    JOB_DEADLINE, KIT_VERSIONS, Kit, Live, PONG_DEADLINE, Track, WRITE_DEADLINE, chain,
    example_params, ms, wire_error,
};
use crate::cmd::driver_check::JobSpec;
use crate::cmd::driver_check::process::Process;

impl Kit {
    pub(super) fn clip(&self, at: Instant) -> Instant {
        at.min(self.deadline)
    }

    pub(super) fn start(
        &mut self,
    ) -> Result<(Connection<UnixStream>, UnixStream, Process), Failure> {
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
    pub(super) async fn recv(&mut self, conn: &mut Connection<UnixStream>, until: Instant) -> Got {
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
    pub(super) async fn pump(&mut self, until: Instant) -> Got {
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
    pub(super) async fn gone(&mut self) -> String {
        match self.live.as_mut() {
            Some(live) => {
                live.process.wait_until(Instant::now() + Duration::from_secs(1)).await;
                format!("the driver {}", live.process.death_note())
            }
            None => "no driver is running".to_owned(),
        }
    }

    pub(super) async fn drop_live(&mut self) {
        if let Some(mut live) = self.live.take() {
            live.process.kill().await;
        }
    }

    /// Starts a driver and plays the handshake. With `mismatch`, answers `hello` with
    /// `version_mismatch` instead and returns the process.
    pub(super) async fn handshake(
        &mut self,
        mismatch: bool,
    ) -> Result<(Live, Hello, Duration), Failure> {
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

    pub(super) async fn sessions_welcome(
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
    pub(super) async fn ensure(&mut self) -> Result<(), Failure> {
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

    pub(super) async fn request(&mut self, msg: impl Into<Message>) -> Result<MsgId, Failure> {
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
    pub(super) async fn reply_to(
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

    pub(super) async fn ping(&mut self) -> Result<Duration, Failure> {
        let started = Instant::now();
        let id = self.request(Ping {}).await?;
        match self.reply_to(id, PONG_DEADLINE, "ping", None).await? {
            Message::Pong(_) => Ok(started.elapsed()),
            other => Err(Failure::Fail(format!("ping was answered with {}", other.message_type()))),
        }
    }

    pub(super) async fn raw_frame(&mut self, payload: &[u8]) -> Result<(), Failure> {
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

    pub(super) fn pick_job(
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
    pub(super) async fn play_job(
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
}
