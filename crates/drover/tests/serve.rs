//! `drover serve` as a real process (as root in CI, so Phase A really drops to 65534), driven
//! over HTTP: a GPU job through the bundled `container` driver to success with its SSE
//! stream, a job refused by the cost gate (budget too small), a job cancelled mid-run, then
//! SIGTERM; afterwards the store it leaves behind shows every job ended, no lease open and a
//! balanced ledger.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover::client::{ApiClient, Token};
use drover_api::token::ApiToken;
use drover_proto::JobPhase;
use drover_proto::api::JobEventKind;
use drover_store::{SqliteStore, Store};
use serde_json::json;

struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        // A failed test must not leave the server running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &std::path::Path) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env_remove("VASTAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("drover serve: listening on ").expect(&line).to_owned();
    Serve { child, url }
}

async fn wait_ready(client: &ApiClient) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client.readiness().await.unwrap();
        if answer.body.ready {
            let provider = &answer.body.checks["provider"];
            assert!(provider.message.as_deref().unwrap().starts_with("SIMULATOR"), "{provider:?}");
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {}", answer.raw);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn job(budget: f64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "driver": "container", "action": "run",
        "params": {"image": "ubuntu:24.04", "command": ["nvidia-smi"]},
        "gpu": {"count": 1}, "max_runtime_s": 600, "budget_usd": budget,
    }))
    .unwrap()
}

/// Follows a job's SSE stream to its end; returns its terminal state and the event kinds.
async fn follow(client: &ApiClient, id: &drover_proto::JobId) -> (JobPhase, Vec<&'static str>) {
    let mut stream = client.events(id, 0).await.unwrap();
    let mut kinds = Vec::new();
    let mut last = 0;
    let mut end = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("the stream stalled")
        .unwrap()
    {
        assert_eq!(event.seq, last + 1, "events arrive in order, without gaps");
        last = event.seq;
        kinds.push(event.event.name());
        if let JobEventKind::JobState(state) = &event.event
            && state.state.is_terminal()
        {
            end = Some(state.state);
        }
    }
    (end.expect("the stream ended with a terminal state"), kinds)
}

#[test]
fn serve_runs_gated_gpu_jobs_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let token = ApiToken::generate().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("drover.toml");
    std::fs::write(
        &config,
        format!(
            "[supervisor]\ndata_dir = {data:?}\n\n[api.rate_limit]\nper_second = 1000\nburst = 1000\n\n\
             [[api.tokens]]\nname = \"e2e\"\nsha256 = \"{}\"\nscopes = [\"jobs:read\", \"jobs:write\", \"drivers:read\"]\nformat = \"drover-v1\"\n",
            token.sha256_hex()
        ),
    )
    .unwrap();
    let mut serve = start(&config);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
        wait_ready(&client).await;

        // A GPU job runs to success through the gate, a lease and the simulator.
        let ok = client.submit(job(5.0), None).await.unwrap().body.id;
        let (end, kinds) = follow(&client, &ok).await;
        assert_eq!(end, JobPhase::Succeeded, "{kinds:?}");
        assert!(kinds.contains(&"job_progress") && kinds.contains(&"job_log"), "{kinds:?}");
        let done = client.job(&ok).await.unwrap().body;
        let output = done.output.unwrap();
        assert!(output["cost_usd"].as_f64().unwrap() > 0.0, "{output}");

        // A budget too small: the gate refuses, nothing is rented, the job fails saying why.
        let poor = client.submit(job(0.0001), None).await.unwrap().body.id;
        let (end, _) = follow(&client, &poor).await;
        assert_eq!(end, JobPhase::Failed);
        let message = client.job(&poor).await.unwrap().body.message.unwrap_or_default();
        assert!(
            message.contains("cost_gate_rejected") || message.contains("confidence"),
            "{message}"
        );

        // Cancelled mid-run: once it is running, before the instance finishes.
        let cancel = client.submit(job(5.0), None).await.unwrap().body.id;
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.job(&cancel).await.unwrap().body.state != JobPhase::Running {
            assert!(Instant::now() < deadline, "the job never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.cancel(&cancel).await.unwrap();
        let (end, _) = follow(&client, &cancel).await;
        assert_eq!(end, JobPhase::Cancelled);
    });

    // SIGTERM: a graceful exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");

    // What it left behind: every job ended, no lease open, the ledger balanced.
    runtime.block_on(async {
        let store = SqliteStore::open_in(&data).await.unwrap();
        assert!(store.unfinished_jobs().await.unwrap().is_empty());
        assert!(store.open_leases().await.unwrap().is_empty(), "a lease was left open");
        let report = store.ledger_report().await.unwrap();
        assert!(report.balances(), "{report:?}");
        assert!(report.leases >= 2, "the successful and the cancelled job each rented: {report:?}");
    });
}
