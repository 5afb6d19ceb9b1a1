//! Sessions over real byte streams: correlation, sender rules, automatic error answers, and
//! which failures end a session and which do not.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use drover_proto::*;
use drover_transport::codec::FrameCodec;
use drover_transport::{CodecError, Connection, ConnectionError, Inbound, InvalidFrame, pair};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A supervisor connection and the raw other end, for writing arbitrary bytes at it.
fn supervisor_and_raw() -> (Connection<DuplexStream>, DuplexStream) {
    let (a, b) = tokio::io::duplex(1 << 20);
    (Connection::new(a, Party::Supervisor), b)
}

async fn write_frame(raw: &mut DuplexStream, payload: &[u8]) {
    raw.write_all(&(payload.len() as u32).to_be_bytes()).await.unwrap();
    raw.write_all(payload).await.unwrap();
}

async fn read_frame(raw: &mut DuplexStream) -> serde_json::Value {
    let len = raw.read_u32().await.unwrap();
    let mut payload = vec![0; len as usize];
    raw.read_exact(&mut payload).await.unwrap();
    serde_json::from_slice(&payload).unwrap()
}

fn job_id() -> JobId {
    "job-1".parse().unwrap()
}

fn progress() -> JobProgress {
    JobProgress { job_id: job_id(), current: 1.0, total: None, unit: None, message: None }
}

async fn recv(conn: &mut Connection<DuplexStream>) -> Inbound {
    conn.recv().await.unwrap().expect("a frame, not end of stream")
}

#[tokio::test]
async fn requests_replies_and_events_are_correlated() {
    let (mut supervisor, mut driver) = pair();
    let ping = supervisor.request(Ping {}).await.unwrap();
    let run = supervisor
        .request(RunJob {
            job_id: job_id(),
            action: "run".parse().unwrap(),
            params: Default::default(),
            gpu: None,
            deadline_unix_ms: 1,
        })
        .await
        .unwrap();
    assert_ne!(ping, run);
    assert_eq!(supervisor.awaiting_replies(), 2);

    let Inbound::Request { id: first, msg: Message::Ping(_) } = recv(&mut driver).await else {
        panic!()
    };
    let Inbound::Request { id: second, msg: Message::RunJob(_) } = recv(&mut driver).await else {
        panic!()
    };
    // Answer out of order, with an event in between.
    driver.reply(second, Ack {}).await.unwrap();
    driver.event(progress()).await.unwrap();
    driver.reply(first, Pong {}).await.unwrap();

    assert!(matches!(
        recv(&mut supervisor).await,
        Inbound::Reply { re, request: MessageType::RunJob, msg: Message::Ack(_) } if re == run
    ));
    assert!(matches!(recv(&mut supervisor).await, Inbound::Event(Message::JobProgress(_))));
    assert!(matches!(
        recv(&mut supervisor).await,
        Inbound::Reply { re, request: MessageType::Ping, msg: Message::Pong(_) } if re == ping
    ));
    assert_eq!(supervisor.awaiting_replies(), 0);
}

#[tokio::test]
async fn a_message_from_the_wrong_side_is_rejected_and_answered() {
    let (mut supervisor, mut raw) = supervisor_and_raw();
    // A driver may not send run_job.
    let run_job = serde_json::to_vec(&examples::frames()[5]).unwrap();
    assert!(String::from_utf8_lossy(&run_job).contains("run_job"));
    write_frame(&mut raw, &run_job).await;

    let Inbound::Rejected(invalid) = recv(&mut supervisor).await else { panic!() };
    assert_eq!(invalid.code(), ErrorCode::UnexpectedMessage);
    let answer = read_frame(&mut raw).await;
    assert_eq!(answer["re"], 1, "answered as a reply to the request's id");
    assert_eq!(answer["msg"]["code"], "unexpected_message");
}

#[tokio::test]
async fn replies_must_answer_a_pending_request_with_the_right_type() {
    let (mut supervisor, mut raw) = supervisor_and_raw();
    // A reply to nothing.
    write_frame(&mut raw, br#"{"re":5,"msg":{"type":"ack"}}"#).await;
    let Inbound::Rejected(invalid) = recv(&mut supervisor).await else { panic!() };
    assert!(invalid.to_string().contains("no request 5"), "{invalid}");
    assert!(read_frame(&mut raw).await.get("re").is_none(), "answered as an event");

    // A reply of the wrong type keeps the request pending; the right one is then accepted.
    let id = supervisor.request(Ping {}).await.unwrap();
    let _ping = read_frame(&mut raw).await;
    write_frame(&mut raw, format!(r#"{{"re":{id},"msg":{{"type":"ack"}}}}"#).as_bytes()).await;
    let Inbound::Rejected(invalid) = recv(&mut supervisor).await else { panic!() };
    assert!(invalid.to_string().contains("does not answer a ping"), "{invalid}");
    let _answer = read_frame(&mut raw).await;
    write_frame(&mut raw, format!(r#"{{"re":{id},"msg":{{"type":"pong"}}}}"#).as_bytes()).await;
    assert!(matches!(recv(&mut supervisor).await, Inbound::Reply { msg: Message::Pong(_), .. }));

    // An error answers anything.
    let id = supervisor.request(Ping {}).await.unwrap();
    let _ping = read_frame(&mut raw).await;
    write_frame(
        &mut raw,
        format!(r#"{{"re":{id},"msg":{{"type":"error","code":"internal","message":"x"}}}}"#)
            .as_bytes(),
    )
    .await;
    assert!(matches!(recv(&mut supervisor).await, Inbound::Reply { msg: Message::Error(_), .. }));
}

#[tokio::test]
async fn a_forgotten_request_turns_its_late_reply_into_a_rejection() {
    let (mut supervisor, mut driver) = pair();
    let id = supervisor.request(Ping {}).await.unwrap();
    assert!(supervisor.forget(id));
    let Inbound::Request { id, .. } = recv(&mut driver).await else { panic!() };
    driver.reply(id, Pong {}).await.unwrap();
    assert!(matches!(
        recv(&mut supervisor).await,
        Inbound::Rejected(InvalidFrame::UnexpectedMessage { .. })
    ));
}

#[tokio::test]
async fn each_request_is_answered_once_and_only_with_a_matching_type() {
    let (mut supervisor, mut driver) = pair();
    supervisor.request(Ping {}).await.unwrap();
    let Inbound::Request { id, .. } = recv(&mut driver).await else { panic!() };
    let wrong = driver.reply(id, Ack {}).await.unwrap_err();
    assert!(matches!(wrong, ConnectionError::Outgoing(_)), "{wrong}");
    driver.reply(id, Pong {}).await.unwrap();
    let twice = driver.reply(id, Pong {}).await.unwrap_err();
    assert!(twice.to_string().contains("no request"), "{twice}");
}

#[tokio::test]
async fn this_side_cannot_send_what_it_may_not_send() {
    let (mut supervisor, mut driver) = pair();
    let hello = examples::frames().remove(0).msg;
    let err = supervisor.request(hello).await.unwrap_err();
    assert!(err.to_string().contains("the supervisor does not send it"), "{err}");
    let err = driver.event(Ping {}).await.unwrap_err();
    assert!(err.to_string().contains("Request"), "a request is not an event: {err}");

    // An invalid outgoing frame is refused and nothing reaches the peer: the next frame the
    // driver sees is the valid one sent afterwards.
    let mut bad = progress();
    bad.current = -1.0;
    let err = driver.event(bad).await.unwrap_err();
    let ConnectionError::Outgoing(invalid) = err else { panic!() };
    assert_eq!(invalid.violations()[0].instance_path, "/msg/current");
    driver.event(progress()).await.unwrap();
    assert!(
        matches!(recv(&mut supervisor).await, Inbound::Event(Message::JobProgress(p)) if p.current == 1.0)
    );
}

#[tokio::test]
async fn duplicate_and_excess_unanswered_requests_are_rejected() {
    let (mut supervisor, mut raw) = supervisor_and_raw();
    let acquire = |id: u64| {
        let mut frame = serde_json::to_value(&examples::frames()[15]).unwrap(); // release_gpu
        assert_eq!(frame["msg"]["type"], "release_gpu");
        frame["id"] = id.into();
        serde_json::to_vec(&frame).unwrap()
    };
    write_frame(&mut raw, &acquire(7)).await;
    assert!(matches!(recv(&mut supervisor).await, Inbound::Request { .. }));
    write_frame(&mut raw, &acquire(7)).await;
    let Inbound::Rejected(invalid) = recv(&mut supervisor).await else { panic!() };
    assert!(invalid.to_string().contains("already waiting"), "{invalid}");
    let _answer = read_frame(&mut raw).await;

    for id in 8..8 + 1023 {
        write_frame(&mut raw, &acquire(id)).await;
        assert!(matches!(recv(&mut supervisor).await, Inbound::Request { .. }), "request {id}");
    }
    write_frame(&mut raw, &acquire(5000)).await;
    let Inbound::Rejected(invalid) = recv(&mut supervisor).await else { panic!() };
    assert!(invalid.to_string().contains("1024 requests"), "{invalid}");
    assert_eq!(read_frame(&mut raw).await["re"], 5000);
}

#[tokio::test]
async fn bad_frames_are_answered_and_the_session_goes_on() {
    let (mut supervisor, mut raw) = supervisor_and_raw();
    let cases: [(&[u8], &str); 4] = [
        (b"\xff\xfe", "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (br#"{"id":4,"msg":{"type":"teleport"}}"#, "unknown_type"),
        (br#"{"msg":{"type":"job_state","job_id":"j","state":"lost"}}"#, "schema_violation"),
    ];
    for (payload, code) in cases {
        write_frame(&mut raw, payload).await;
        let Inbound::Rejected(invalid) = recv(&mut supervisor).await else { panic!("{code}") };
        assert_eq!(invalid.code().as_str(), code);
        let answer = read_frame(&mut raw).await;
        assert_eq!(answer["msg"]["code"], code);
    }
    // Still alive: a valid frame goes through.
    write_frame(&mut raw, &serde_json::to_vec(&Frame::event(progress())).unwrap()).await;
    assert!(matches!(recv(&mut supervisor).await, Inbound::Event(Message::JobProgress(_))));
}

#[tokio::test]
async fn an_oversize_frame_is_skipped_reported_and_the_next_frame_arrives() {
    let (a, mut raw) = tokio::io::duplex(64 * 1024);
    let mut supervisor =
        Connection::with_codec(a, Party::Supervisor, FrameCodec::with_max_frame_bytes(8 * 1024));
    let writer = tokio::spawn(async move {
        let huge = vec![b' '; 500_000]; // streams through a 64 KiB pipe: never all buffered
        write_frame(&mut raw, &huge).await;
        write_frame(&mut raw, &serde_json::to_vec(&Frame::event(progress())).unwrap()).await;
        raw
    });
    let Inbound::Rejected(InvalidFrame::TooLarge(too_large)) = recv(&mut supervisor).await else {
        panic!()
    };
    assert_eq!((too_large.len, too_large.max), (500_000, 8192));
    assert!(matches!(recv(&mut supervisor).await, Inbound::Event(Message::JobProgress(_))));
    let mut raw = writer.await.unwrap();
    let answer = read_frame(&mut raw).await;
    assert_eq!(answer["msg"]["code"], "frame_too_large");
    assert_eq!(answer["msg"]["details"]["len"], 500_000);
}

#[tokio::test]
async fn a_rejected_error_frame_is_never_answered() {
    let (mut supervisor, mut raw) = supervisor_and_raw();
    write_frame(&mut raw, br#"{"msg":{"type":"error","code":"no_such_code","message":""}}"#).await;
    assert!(matches!(
        recv(&mut supervisor).await,
        Inbound::Rejected(InvalidFrame::SchemaViolation {
            message_type: Some(MessageType::Error),
            ..
        })
    ));
    // The next thing on the wire is what the supervisor sends next, not an error answer.
    supervisor.request(Ping {}).await.unwrap();
    assert_eq!(read_frame(&mut raw).await["msg"]["type"], "ping");
}

#[tokio::test]
async fn text_on_the_channel_ends_the_session_with_a_diagnostic() {
    let (mut supervisor, mut raw) = supervisor_and_raw();
    raw.write_all(b"Traceback (most recent call last):\n  File \"driver.py\"").await.unwrap();
    let err = supervisor.recv().await.unwrap_err();
    let ConnectionError::Codec(CodecError::Unframed { head, .. }) = &err else { panic!("{err:?}") };
    assert!(head.starts_with("Traceback (most recent call last):"), "{head}");
}

#[tokio::test]
async fn end_of_stream_clean_or_inside_a_frame() {
    let (mut supervisor, raw) = supervisor_and_raw();
    drop(raw);
    assert!(supervisor.recv().await.unwrap().is_none());

    let (mut supervisor, mut raw) = supervisor_and_raw();
    raw.write_all(&[0, 0, 0, 10, b'{']).await.unwrap();
    drop(raw);
    assert!(matches!(
        supervisor.recv().await,
        Err(ConnectionError::Codec(CodecError::Truncated { expected: 10, received: 1 }))
    ));
}

#[tokio::test]
async fn the_frame_limit_can_be_negotiated_and_applies_both_ways() {
    let (mut supervisor, mut driver) = pair();
    supervisor.set_max_frame_bytes(4096);
    driver.set_max_frame_bytes(4096);
    assert_eq!(driver.max_frame_bytes(), 4096);
    let big = JobLog {
        job_id: job_id(),
        stream: LogStream::Stdout,
        lines: vec!["x".repeat(5000)],
        dropped: 0,
    };
    let err = driver.event(big).await.unwrap_err();
    assert!(matches!(err, ConnectionError::Codec(CodecError::OutgoingTooLarge { max: 4096, .. })));
    driver.event(progress()).await.unwrap();
    assert!(matches!(recv(&mut supervisor).await, Inbound::Event(Message::JobProgress(_))));
}

#[tokio::test]
async fn close_is_seen_as_end_of_stream() {
    let (mut supervisor, mut driver) = pair();
    driver.event(progress()).await.unwrap();
    driver.close().await.unwrap();
    assert!(matches!(recv(&mut supervisor).await, Inbound::Event(_)));
    assert!(supervisor.recv().await.unwrap().is_none());
}
