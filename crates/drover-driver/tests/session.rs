//! The SDK against a supervisor played by a `drover-transport` connection over an in-memory
//! stream: handshake, cancel, logs with drops, GPU requests, shutdown, end of stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use std::time::Duration;

use drover_driver::{Action, Driver, Ended, Job, JobContext, JobError, JobOutcome};
use drover_proto::*;
use drover_transport::{Connection, Inbound};
use serde_json::json;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

struct Test;

impl Driver for Test {
    const NAME: &'static str = "test";
    const VERSION: &'static str = "0.0.1";

    fn actions(&self) -> Vec<Action> {
        vec![
            Action::with_schema("wait", json!({"type": "object"})),
            Action::with_schema("spam", json!({"type": "object"})),
            Action::with_schema("gpu", json!({"type": "object"})),
            Action::with_schema("stubborn", json!({"type": "object"})),
        ]
    }

    async fn run(&self, ctx: JobContext, job: Job) -> JobOutcome {
        match job.action.as_str() {
            "wait" => {
                ctx.log("waiting");
                ctx.cancelled().await;
                Err(JobError::Cancelled)
            }
            "spam" => {
                for i in 0..(drover_driver::context::MAX_PENDING_LINES + 5) {
                    ctx.log(&format!("line {i}"));
                }
                ctx.log_stderr("oops");
                Ok(Some(json!("done")))
            }
            "gpu" => {
                let request = AcquireGpu {
                    job_id: "ignored".parse().unwrap(),
                    gpu: examples::gpu_request(),
                    image: "pytorch/pytorch:latest".into(),
                    onstart: None,
                    env: Default::default(),
                    disk_gib: 16,
                    max_runtime_s: 600,
                    bandwidth_gib: 0.0,
                };
                let lease = ctx.acquire_gpu(request).await?;
                let released = ctx.release_gpu(&lease.lease_id).await?;
                match ctx.lease_status(&lease.lease_id).await {
                    Err(drover_driver::RequestError::Refused { error, .. }) => {
                        assert_eq!(error.code, ErrorCode::UnknownLease);
                    }
                    other => panic!("expected a refusal, got {other:?}"),
                }
                Ok(Some(json!({"released": released.state == LeasePhase::Released})))
            }
            _ => {
                // Ignores cancellation entirely.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(None)
            }
        }
    }
}

struct Harness {
    sup: Connection<DuplexStream>,
    driver: JoinHandle<Result<Ended, drover_driver::DriverError>>,
}

async fn start() -> Harness {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let driver = tokio::spawn(drover_driver::serve(Test, theirs));
    let mut sup = Connection::new(ours, Party::Supervisor);
    let Some(Inbound::Request { id, msg: Message::Hello(hello) }) = sup.recv().await.unwrap()
    else {
        panic!("expected hello")
    };
    assert_eq!(hello.protocol_versions, PROTOCOL_VERSIONS);
    assert_eq!(hello.schema_sha256, schema::schema_set_sha256());
    assert_eq!(hello.actions.len(), 4);
    sup.reply(
        id,
        Welcome {
            protocol_version: 1,
            session_id: "s-1".parse().unwrap(),
            heartbeat_ms: 1000,
            max_frame_bytes: 1 << 20,
        },
    )
    .await
    .unwrap();
    Harness { sup, driver }
}

fn run_job(job: &str, action: &str) -> RunJob {
    RunJob {
        job_id: job.parse().unwrap(),
        action: action.parse().unwrap(),
        params: Default::default(),
        gpu: None,
        deadline_unix_ms: 4_000_000_000_000,
    }
}

impl Harness {
    async fn next(&mut self) -> Inbound {
        tokio::time::timeout(Duration::from_secs(10), self.sup.recv())
            .await
            .expect("the driver answers in time")
            .unwrap()
            .expect("the driver is still there")
    }

    /// Collects events until the job's terminal state; returns (states, result, logs).
    async fn until_terminal(&mut self, job: &str) -> (Vec<JobPhase>, JobResult, Vec<JobLog>) {
        let mut states = Vec::new();
        let mut result = None;
        let mut logs = Vec::new();
        loop {
            match self.next().await {
                Inbound::Event(Message::JobState(s)) if s.job_id.as_str() == job => {
                    states.push(s.state);
                    if s.state.is_terminal() {
                        break;
                    }
                }
                Inbound::Event(Message::JobResult(r)) => {
                    assert!(result.is_none(), "one result per job");
                    result = Some(r);
                }
                Inbound::Event(Message::JobLog(l)) => logs.push(l),
                _ => {}
            }
        }
        (states, result.expect("job_result before the terminal state"), logs)
    }

    async fn expect_reply(&mut self, want: MessageType) -> Message {
        loop {
            if let Inbound::Reply { msg, .. } = self.next().await {
                assert_eq!(msg.message_type(), want, "{msg:?}");
                return msg;
            }
        }
    }
}

#[tokio::test]
async fn cancel_is_acked_and_the_job_ends_cancelled() {
    let mut h = start().await;
    h.sup.request(run_job("j1", "wait")).await.unwrap();
    h.expect_reply(MessageType::Ack).await;
    h.sup
        .request(CancelJob { job_id: "j1".parse().unwrap(), reason: "test".into() })
        .await
        .unwrap();
    let (states, result, logs) = h.until_terminal("j1").await;
    assert_eq!(states, [JobPhase::Running, JobPhase::Cancelled]);
    assert_eq!(result.outcome, Outcome::Cancelled);
    assert_eq!(logs[0].lines, ["waiting"]);
    // An unknown job is refused, not acked.
    h.sup
        .request(CancelJob { job_id: "nope".parse().unwrap(), reason: String::new() })
        .await
        .unwrap();
    let Message::Error(error) = h.expect_reply(MessageType::Error).await else { unreachable!() };
    assert_eq!(error.code, ErrorCode::UnknownJob);
}

#[tokio::test]
async fn logs_are_batched_bounded_and_drops_counted() {
    let mut h = start().await;
    h.sup.request(run_job("j2", "spam")).await.unwrap();
    let (states, result, logs) = h.until_terminal("j2").await;
    assert_eq!(states, [JobPhase::Running, JobPhase::Succeeded]);
    assert_eq!(result.output, Some(json!("done")));
    let stdout: Vec<_> = logs.iter().filter(|l| l.stream == LogStream::Stdout).collect();
    let lines: usize = stdout.iter().map(|l| l.lines.len()).sum();
    let dropped: u64 = logs.iter().map(|l| l.dropped).sum();
    // The buffer holds MAX_PENDING_LINES; the stderr line and 5 stdout lines did not fit
    // (unless a flush came in between, which only lowers the drops).
    assert!(lines <= drover_driver::context::MAX_PENDING_LINES + 5);
    assert_eq!(lines as u64 + dropped, drover_driver::context::MAX_PENDING_LINES as u64 + 6);
    assert!(stdout.iter().all(|l| l.lines.len() <= limits::LOG_LINES_PER_FRAME as usize));
    assert_eq!(stdout[0].lines[0], "line 0");
}

#[tokio::test]
async fn gpu_requests_are_request_and_reply() {
    let mut h = start().await;
    h.sup.request(run_job("j3", "gpu")).await.unwrap();
    let lease = |state| Lease {
        lease_id: "lease-1".parse().unwrap(),
        job_id: "j3".parse().unwrap(),
        state,
        deadline_unix_ms: 4_000_000_000_000,
        gpu_model: None,
        gpu_count: None,
        usd_per_hour: None,
        estimate: None,
        cost_usd: None,
        status_message: None,
    };
    let mut states = Vec::new();
    let mut output = None;
    while states.last().is_none_or(|s: &JobPhase| !s.is_terminal()) {
        match h.next().await {
            Inbound::Request { id, msg: Message::AcquireGpu(req) } => {
                assert_eq!(req.job_id.as_str(), "j3", "the SDK fills in the job id");
                h.sup.reply(id, lease(LeasePhase::Running)).await.unwrap();
            }
            Inbound::Request { id, msg: Message::ReleaseGpu(_) } => {
                h.sup.reply(id, lease(LeasePhase::Released)).await.unwrap();
            }
            Inbound::Request { id, msg: Message::LeaseStatus(_) } => {
                let error = WireError {
                    code: ErrorCode::UnknownLease,
                    message: "gone".into(),
                    violations: vec![],
                    details: None,
                };
                h.sup.reply(id, error).await.unwrap();
            }
            Inbound::Event(Message::JobState(s)) => states.push(s.state),
            Inbound::Event(Message::JobResult(r)) => output = r.output,
            _ => {}
        }
    }
    assert_eq!(states, [JobPhase::Running, JobPhase::Succeeded]);
    assert_eq!(output, Some(json!({"released": true})));
}

#[tokio::test]
async fn bad_frames_are_answered_and_the_session_goes_on() {
    use futures_util::StreamExt as _;
    use tokio_util::codec::FramedRead;

    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (read, mut write) = tokio::io::split(ours);
    let _driver = tokio::spawn(drover_driver::serve(Test, theirs));
    // Play the supervisor with raw frames, and read the driver's frames one by one.
    let mut frames_in = FramedRead::new(read, drover_transport::FrameCodec::new());
    let mut next = async || {
        let decoded = tokio::time::timeout(Duration::from_secs(10), frames_in.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let drover_transport::Decoded::Frame(payload) = decoded else { panic!() };
        drover_transport::FrameValidator::shared().decode(&payload).unwrap()
    };
    let hello = next().await;
    let id = hello.id.unwrap();
    let frames: Vec<Vec<u8>> = vec![
        format!(
            r#"{{"re":{id},"msg":{{"type":"welcome","protocol_version":1,"session_id":"s","heartbeat_ms":1000,"max_frame_bytes":4096}}}}"#
        )
        .into_bytes(),
        b"{not json".to_vec(),
        br#"{"id":5,"msg":{"type":"frobnicate"}}"#.to_vec(),
        br#"{"id":6,"msg":{"type":"run_job","job_id":"bad id"}}"#.to_vec(),
        br#"{"id":7,"msg":{"type":"ping"}}"#.to_vec(),
    ];
    for (i, frame) in frames.iter().enumerate() {
        if i == 2 {
            // An oversize frame (over the negotiated 4 KiB) is skipped unread.
            write.write_all(&5000u32.to_be_bytes()).await.unwrap();
            write.write_all(&[b'x'; 5000]).await.unwrap();
        }
        write.write_all(&(frame.len() as u32).to_be_bytes()).await.unwrap();
        write.write_all(frame).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..5 {
        let frame = next().await;
        let code = match frame.msg {
            Message::Error(e) => e.code.as_str().to_owned(),
            other => other.message_type().as_str().to_owned(),
        };
        answers.push((frame.re.map(MsgId::get), code));
    }
    assert_eq!(
        answers,
        [
            (None, "invalid_json".to_owned()),
            (None, "frame_too_large".to_owned()),
            (Some(5), "unknown_type".to_owned()),
            (Some(6), "schema_violation".to_owned()),
            (Some(7), "pong".to_owned()),
        ]
    );
}

#[tokio::test]
async fn shutdown_drains_then_ends() {
    let mut h = start().await;
    h.sup.request(run_job("j4", "wait")).await.unwrap();
    h.expect_reply(MessageType::Ack).await;
    h.sup.request(Shutdown { grace_ms: 400 }).await.unwrap();
    h.expect_reply(MessageType::Ack).await;
    // New work is refused while draining.
    h.sup.request(run_job("j5", "wait")).await.unwrap();
    let Message::Error(error) = h.expect_reply(MessageType::Error).await else { unreachable!() };
    assert_eq!(error.code, ErrorCode::NotReady);
    // At half the grace the job's token fires; it ends cancelled and the driver exits.
    let (states, _, _) = h.until_terminal("j4").await;
    assert_eq!(states.last(), Some(&JobPhase::Cancelled));
    let ended = tokio::time::timeout(Duration::from_secs(5), h.driver).await.unwrap().unwrap();
    assert_eq!(ended.unwrap(), Ended::Shutdown);
}

#[tokio::test]
async fn shutdown_grace_ends_a_job_that_ignores_cancel() {
    let mut h = start().await;
    h.sup.request(run_job("j6", "stubborn")).await.unwrap();
    h.expect_reply(MessageType::Ack).await;
    h.sup.request(Shutdown { grace_ms: 300 }).await.unwrap();
    let (states, result, _) = h.until_terminal("j6").await;
    assert_eq!(states, [JobPhase::Running, JobPhase::Cancelled]);
    assert_eq!(result.outcome, Outcome::Cancelled);
    let ended = tokio::time::timeout(Duration::from_secs(5), h.driver).await.unwrap().unwrap();
    assert_eq!(ended.unwrap(), Ended::Shutdown);
}

#[tokio::test]
async fn end_of_stream_cancels_and_ends() {
    let mut h = start().await;
    h.sup.request(run_job("j7", "stubborn")).await.unwrap();
    h.expect_reply(MessageType::Ack).await;
    h.sup.close().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), h.driver).await.unwrap().unwrap();
    assert_eq!(ended.unwrap(), Ended::TransportClosed);
}

#[tokio::test]
async fn a_burst_of_pings_is_answered_in_full() {
    let mut h = start().await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(h.sup.request(Ping {}).await.unwrap());
    }
    for id in ids {
        match h.next().await {
            Inbound::Reply { re, msg: Message::Pong(_), .. } => assert_eq!(re, id),
            other => panic!("expected pong, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_welcome_for_a_version_not_offered_ends_the_session() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let driver = tokio::spawn(drover_driver::serve(Test, theirs));
    let mut sup = Connection::new(ours, Party::Supervisor);
    let Some(Inbound::Request { id, .. }) = sup.recv().await.unwrap() else { panic!() };
    let welcome = Welcome {
        protocol_version: 7,
        session_id: "s".parse().unwrap(),
        heartbeat_ms: 1000,
        max_frame_bytes: 1 << 20,
    };
    sup.reply(id, welcome).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await.unwrap().unwrap();
    assert!(matches!(ended, Err(drover_driver::DriverError::VersionMismatch { .. })), "{ended:?}");
}

#[tokio::test]
async fn version_mismatch_ends_the_session_with_the_supervisors_versions() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let driver = tokio::spawn(drover_driver::serve(Test, theirs));
    let mut sup = Connection::new(ours, Party::Supervisor);
    let Some(Inbound::Request { id, .. }) = sup.recv().await.unwrap() else { panic!() };
    let error = WireError {
        code: ErrorCode::VersionMismatch,
        message: "no shared version".into(),
        violations: vec![],
        details: serde_json::json!({"supported": [9], "offered": [1]}).as_object().cloned(),
    };
    sup.reply(id, error).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await.unwrap().unwrap();
    let error = ended.unwrap_err();
    assert!(error.to_string().contains("the supervisor [9]"), "{error}");
}
