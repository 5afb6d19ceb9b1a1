//! SIGKILL in the middle of a job, then a restart. The provider is `drover fake-vast` in a
//! process of its own, selected as the real Vast.ai provider would be (`provider.kind =
//! "vastai"` and `VASTAI_API_KEY`), so the instance outlives the killed supervisor exactly as
//! a real one would. After the restart: once the killed replica's heartbeat has expired
//! (`supervisor.replica_expiry_s`, 2 s here), the reaper has destroyed the orphaned instance
//! and settled its lease, the interrupted job is `failed` with the reason, a new job
//! runs, and at the end the provider's ledger shows nothing billing and every lease is settled
//! in a balanced ledger.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use crate::common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use drover::client::{ApiClient, Token};
use drover_api::token::ApiToken;
use drover_proto::JobPhase;
use drover_store::{SqliteStore, Store};
use serde_json::Value;

const KEY: &str = "fake-vast-key-for-the-restart-test-0123456789";

struct FakeVast {
    child: Child,
    url: String,
}

impl Drop for FakeVast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fake_vast() -> FakeVast {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["fake-vast", "--listen", "127.0.0.1:0", "--speed", "10", "--api-key", KEY])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("fake-vast listening on ").expect(&line).to_owned();
    FakeVast { child, url }
}

/// The provider's billing ledger: (instances still billing, total billed USD).
async fn ledger(fake: &FakeVast) -> (usize, f64) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bytes = reqwest::Client::new()
        .get(format!("{}/_sim/ledger", fake.url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let entries = body["entries"].as_array().unwrap().clone();
    let live = entries.iter().filter(|e| e["ended_s"].is_null()).count();
    let total = entries
        .iter()
        .map(|e| e["compute_usd"].as_f64().unwrap() + e["storage_usd"].as_f64().unwrap())
        .sum();
    (live, total)
}

/// `drover serve` with the Vast.ai key and a 2-second replica expiry, so that the killed
/// run's leases are taken over soon after the restart.
fn start_serve(config: &std::path::Path) -> Serve {
    let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config);
    command.env("VASTAI_API_KEY", KEY).env("DROVER_SUPERVISOR__REPLICA_EXPIRY_S", "2");
    start_command(command)
}

#[test]
fn a_killed_supervisor_leaves_no_orphan_after_restart() {
    let fake = fake_vast();
    let token = ApiToken::generate().unwrap();
    let extra = format!("\n[provider]\nkind = \"vastai\"\nbase_url = \"{}\"\n", fake.url);
    let (_dir, data, config) = config_dir(&token, &extra);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // First run: a job rents an instance, then the supervisor is killed with SIGKILL.
    let mut serve = start_serve(&config);
    let interrupted = runtime.block_on(async {
        let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
        wait_ready_with(&client, "vast.ai").await;
        let id = client.submit(job(5.0), None).await.unwrap().body.id;
        let deadline = Instant::now() + Duration::from_secs(30);
        while ledger(&fake).await.0 == 0 {
            assert!(Instant::now() < deadline, "no instance was ever created");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        id
    });
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    let (live, _) = runtime.block_on(ledger(&fake));
    assert_eq!(live, 1, "the killed supervisor left its instance billing");

    // Second run: reconciled before anything else.
    let mut serve = start_serve(&config);
    runtime.block_on(async {
        let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
        wait_ready_with(&client, "vast.ai").await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while ledger(&fake).await.0 != 0 {
            assert!(Instant::now() < deadline, "the orphaned instance was never destroyed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The killed run's job is failed once its replica's heartbeat expires (2 s here),
        // saying why.
        let deadline = Instant::now() + Duration::from_secs(20);
        let before = loop {
            let job = client.job(&interrupted).await.unwrap().body;
            if job.state.is_terminal() {
                break job;
            }
            assert!(Instant::now() < deadline, "the interrupted job never ended: {job:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(before.state, JobPhase::Failed);
        let message = before.message.as_deref().unwrap_or("");
        assert!(message.contains("stopped while the job was"), "{before:?}");

        // The restarted supervisor runs jobs.
        let id = client.submit(job(5.0), None).await.unwrap().body.id;
        assert_eq!(follow(&client, &id).await.0, JobPhase::Succeeded);
    });
    terminate(&mut serve);

    runtime.block_on(async {
        let (live, billed) = ledger(&fake).await;
        assert_eq!(live, 0, "an instance is still billing");
        let store = SqliteStore::open_in(&data).await.unwrap();
        assert!(store.open_leases().await.unwrap().is_empty(), "a lease was left open");
        let report = store.ledger_report().await.unwrap();
        assert!(report.balances(), "{report:?}");
        let settled = drover_store::micros_to_usd(report.ledger_micros);
        // Both rentals were billed and both were settled. (The amounts are compared where the
        // provider and drover share a clock, in `drover demo`; here fake-vast's clock runs 10x
        // while drover, treating it as the real Vast.ai, uses real time.)
        assert!(billed > 0.0 && settled > 0.0, "billed {billed}, settled {settled}");
        assert!(report.leases >= 2, "{report:?}");
    });
}
