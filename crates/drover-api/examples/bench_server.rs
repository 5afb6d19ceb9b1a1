//! The two servers `benches/api.sh` loads, in one process so they share the machine alike:
//!
//! - **api**: the real router ([`drover_api::router`]): token authentication, rate limiting,
//!   content-type and size checks, strict JSON, the `JobSpec` schema, the driver's params
//!   schema, the job made durable in a real SQLite store (WAL, `synchronous = FULL`) in the
//!   directory given (tmpfs in the benchmark), audit events written in batches to the same
//!   store;
//! - **bare**: axum with one handler that echoes the body of `POST /v1/jobs`.
//!
//! Usage: `bench_server DIR`. Writes `DIR/token` (mode 0600; the token never goes to stdout),
//! prints `api=ADDR bare=ADDR` on stdout, and serves until stdin closes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use drover_api::{ApiState, Auditor, router, serve};
use drover_proto::config::RateLimitConfig;
use tokio::io::AsyncReadExt as _;

#[tokio::main]
async fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: bench_server DIR"));
    let backend = Arc::new(common::StoreBackend::open(&dir.join("data")).await);
    let tokens = common::tokens();
    let config =
        common::config(&tokens, RateLimitConfig { per_second: 1_000_000, burst: 1_000_000 });
    let auditor = Auditor::start(backend.clone(), None);
    let state = ApiState::new(&config, false, backend, auditor).unwrap();

    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(dir.join("token"))
        .unwrap();
    file.write_all(tokens.admin.expose().as_bytes()).unwrap();

    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = Router::new().route("/v1/jobs", post(|body: Bytes| async move { body }));
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "api={} bare={}", api.local_addr().unwrap(), bare.local_addr().unwrap())
        .unwrap();
    stdout.flush().unwrap();
    drop(stdout);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api_server = tokio::spawn(serve(api, router(state), until_stop(stopped.clone())));
    let bare_server = tokio::spawn(serve(bare, echo, until_stop(stopped)));
    // Serve until the benchmark closes our stdin.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let _ = stop.send(true);
    let _ = api_server.await;
    let _ = bare_server.await;
}
