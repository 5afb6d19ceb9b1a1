//! The API over a real TCP listener on loopback, spoken to with hand-written HTTP/1.1: the
//! server, not only the router, authenticates, validates, acknowledges durably, streams
//! server-sent events live and resumes them, and shuts down gracefully.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use drover_api::{ApiState, Auditor, serve};
use drover_proto::api::JobEventKind;
use drover_proto::{JobPhase, JobState};
use drover_store::{SqliteStore, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

async fn exchange(addr: std::net::SocketAddr, request: String) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
}

fn post(path: &str, token: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_listener_serves_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(StoreBackend::open(dir.path()).await);
    let tokens = tokens();
    let state = ApiState::new(
        &config(&tokens, generous()),
        false,
        backend.clone(),
        Auditor::start(backend.clone(), None),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    let admin = tokens.admin.expose().to_owned();

    let (status, body) = exchange(addr, get("/healthz", None)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _) = exchange(addr, get("/v1/jobs", None)).await;
    assert_eq!(status, 401);
    let (status, body) = exchange(addr, post("/v1/jobs", &admin, r#"{"driver":"echo"}"#)).await;
    assert_eq!(status, 400, "{body}");

    // Accepted means durable: a second store handle on the same file sees the job at once.
    let job =
        r#"{"driver":"echo","action":"run","params":{"n":1},"max_runtime_s":60,"budget_usd":0.5}"#;
    let (status, body) = exchange(addr, post("/v1/jobs", &admin, job)).await;
    assert_eq!(status, 201, "{body}");
    let job: Value = serde_json::from_str(&body).unwrap();
    let id: drover_proto::JobId = job["id"].as_str().unwrap().parse().unwrap();
    let other = SqliteStore::open_in(dir.path()).await.unwrap();
    assert_eq!(other.get_job(&id).await.unwrap().unwrap().state, JobPhase::Queued);

    // Live events over the socket: history first, then what happens while connected.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(get(&format!("/v1/jobs/{id}/events"), Some(&admin)).as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let mut next_id = async || loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap();
        match line {
            Some(line) if line.starts_with("id: ") => return Some(line[4..].to_owned()),
            Some(_) => continue,
            None => return None,
        }
    };
    assert_eq!(next_id().await.as_deref(), Some("1"));
    let state = |phase| {
        JobEventKind::JobState(JobState { job_id: id.clone(), state: phase, message: None })
    };
    backend.push(&id, state(JobPhase::Running)).await;
    assert_eq!(next_id().await.as_deref(), Some("2"));
    backend.push(&id, state(JobPhase::Succeeded)).await;
    assert_eq!(next_id().await.as_deref(), Some("3"));
    assert_eq!(next_id().await, None, "the stream ends after the terminal state");

    // Resuming after the last event seen returns the rest only.
    let resume = format!(
        "GET /v1/jobs/{id}/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {admin}\r\n\
         Last-Event-ID: 2\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = exchange(addr, resume).await;
    assert_eq!(status, 200);
    assert!(body.contains("id: 3") && !body.contains("id: 2"), "{body}");

    let (status, body) = exchange(addr, get("/v1/openapi.json", Some(&admin))).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["openapi"], json!("3.1.0"));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}

/// Issue 21: on the real listener, a connection that does not send its headers in time is
/// closed, one address holds at most `max_connections_per_peer` connections (one more is
/// closed at once) while another address is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_timed_out_and_connections_per_peer_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(StoreBackend::open(dir.path()).await);
    let tokens = tokens();
    let mut config = config(&tokens, generous());
    config.limits.header_read_timeout_ms = 300;
    config.limits.max_connections_per_peer = 3;
    let state =
        ApiState::new(&config, false, backend.clone(), Auditor::start(backend.clone(), None))
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    let closed_within = |mut stream: TcpStream, limit: Duration| async move {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(limit, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    };

    // Three slowloris connections from 127.0.0.1: half a header each, then nothing.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A fourth from the same address is closed at once; another address is served.
    let fourth = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(fourth, Duration::from_millis(250)).await, "over the per-peer cap");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut request = socket.connect(addr).await.unwrap();
    request.write_all(get("/healthz", None).as_bytes()).await.unwrap();
    let mut answer = String::new();
    request.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The slow ones are closed by the header-read timeout.
    for stream in slow {
        assert!(closed_within(stream, Duration::from_secs(2)).await, "a slow header was kept");
    }
    // Their slots are free again.
    let (status, _) = exchange(addr, get("/healthz", None)).await;
    assert_eq!(status, 200);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
