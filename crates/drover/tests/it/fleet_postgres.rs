//! The fleet (issue 16): three `drover serve` replicas of one deployment share one PostgreSQL
//! database (a real server, started by drover-testkit) and one `drover fake-vast` account. Jobs
//! that rent GPUs are submitted round-robin; one replica is killed with SIGKILL while rentals
//! are in flight and restarted, another is killed and never comes back. Afterwards:
//!
//! - every job has exactly one terminal state, and every job that did not succeed says why;
//! - nothing bills without an open lease: the account ends with no live instance, and the
//!   store with no open lease and a balanced ledger;
//! - what drover settled equals what the provider billed, within a cent, and never exceeds
//!   the daily cap, which is set low enough that it binds (some rentals are refused);
//! - no replica destroyed another's instance while its lease was live: no lease of a job of
//!   the replica that was never killed was reaped (taken over and torn down by another).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use crate::common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use drover::client::{ApiClient, Token};
use drover_api::token::ApiToken;
use drover_proto::JobPhase;
use drover_proto::api::JobEventKind;
use drover_store::{PgStore, Store};
use serde_json::Value;

const KEY: &str = "fake-vast-key-for-the-fleet-postgres-test-0123456789";

/// Jobs submitted across the fleet.
const JOBS: usize = 300;

/// The deployment's daily cap: low enough that it refuses some of the rentals.
const CAP_USD: f64 = 10.0;

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

/// The account, at the provider's real-time clock (so that drover, which treats it as the real
/// Vast.ai and uses real time, and the provider bill the same seconds), with offers for every
/// rental in flight at once.
fn fake_vast() -> FakeVast {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["fake-vast", "--listen", "127.0.0.1:0", "--speed", "1", "--offers", "400"])
        .args(["--api-key", KEY])
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

/// The provider's ledger: (instances still billing, total billed USD).
async fn billed(fake: &FakeVast) -> (usize, f64) {
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

/// One replica: `drover serve` of deployment `fleet` with a 2-second heartbeat expiry.
fn replica(config: &std::path::Path) -> Serve {
    let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config);
    command
        .env("VASTAI_API_KEY", KEY)
        .env("DROVER_SUPERVISOR__DEPLOYMENT", "fleet")
        .env("DROVER_SUPERVISOR__REPLICA_EXPIRY_S", "2");
    start_command(command)
}

fn client(serve: &Serve, token: &ApiToken) -> ApiClient {
    ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap()
}

fn kill(serve: &mut Serve) {
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
}

#[test]
fn three_replicas_share_one_database_and_one_account_through_kills() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let database = runtime.block_on(drover_testkit::postgres::fresh_database_url());
    let fake = fake_vast();
    let token = ApiToken::generate().unwrap();
    let extra = format!(
        "\n[store]\nurl = \"{database}\"\n\n[provider]\nkind = \"vastai\"\nbase_url = \"{}\"\n\n\
         [gate]\ndaily_cap_usd = {CAP_USD}\n",
        fake.url
    );
    let dirs: Vec<_> = (0..3).map(|_| config_dir(&token, &extra)).collect();
    let mut replicas: Vec<Serve> = dirs.iter().map(|(_, _, config)| replica(config)).collect();
    let clients: Vec<ApiClient> = replicas.iter().map(|r| client(r, &token)).collect();

    // Submitted round-robin, all at once.
    let ids = runtime.block_on(async {
        for c in &clients {
            wait_ready_with(c, "vast.ai").await;
        }
        let mut ids = Vec::with_capacity(JOBS);
        for i in 0..JOBS {
            ids.push(clients[i % 3].submit(job(0.5), None).await.unwrap().body.id);
        }
        // Mid-rent: instances are billing.
        let deadline = Instant::now() + Duration::from_secs(60);
        while billed(&fake).await.0 < 10 {
            assert!(Instant::now() < deadline, "the fleet never rented");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ids
    });

    // Replica 0 dies mid-rent and comes back (a new replica id, the same configuration);
    // replica 1 dies for good.
    kill(&mut replicas[0]);
    replicas[0] = replica(&dirs[0].2);
    let restarted = client(&replicas[0], &token);
    runtime.block_on(wait_ready_with(&restarted, "vast.ai"));
    std::thread::sleep(Duration::from_secs(3));
    kill(&mut replicas[1]);

    let survivor = &clients[2];
    runtime.block_on(async {
        // Every job ends: the dead replicas' jobs are taken over within the heartbeat expiry.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let mut open = 0;
            for id in &ids {
                if !survivor.job(id).await.unwrap().body.state.is_terminal() {
                    open += 1;
                }
            }
            if open == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{open} jobs never ended");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }

        // Exactly one terminal state each, and a reason for every job that did not succeed.
        let (mut succeeded, mut capped, mut orphaned) = (0, 0, 0);
        let mut other = Vec::new();
        for id in &ids {
            let mut stream = survivor.events(id, 0).await.unwrap();
            let mut terminal = Vec::new();
            while let Some(event) = stream.next().await.unwrap() {
                if let JobEventKind::JobState(state) = &event.event
                    && state.state.is_terminal()
                {
                    terminal.push(state.clone());
                }
            }
            assert_eq!(terminal.len(), 1, "{id}: {terminal:?}");
            let end = &terminal[0];
            let why = end.message.clone().unwrap_or_default();
            match end.state {
                JobPhase::Succeeded => succeeded += 1,
                _ if why.is_empty() => panic!("{id} ended {:?} without a reason", end.state),
                _ if why.contains("daily cap") => capped += 1,
                _ if why.contains("stopped while the job was") => orphaned += 1,
                _ => other.push(why),
            }
        }
        eprintln!(
            "{succeeded} succeeded, {capped} refused by the cap, {orphaned} lost with a replica, \
             {} otherwise: {other:?}",
            other.len()
        );
        assert!(succeeded > 0, "no job succeeded");
        assert!(!other.iter().any(|why| why.contains("(internal)")), "internal errors: {other:?}");
        assert!(capped > 0, "the cap never bound; lower CAP_USD");

        // Nothing bills without an owner: the dead replicas' leases were taken over.
        let deadline = Instant::now() + Duration::from_secs(90);
        while billed(&fake).await.0 != 0 {
            assert!(Instant::now() < deadline, "an instance is still billing");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    for index in [0, 2] {
        terminate(&mut replicas[index]);
    }

    runtime.block_on(async {
        let store = PgStore::connect(&database).await.unwrap();
        assert!(store.open_leases().await.unwrap().is_empty(), "a lease was left open");
        let report = store.ledger_report().await.unwrap();
        assert!(report.balances(), "{report:?}");
        let settled = drover_store::micros_to_usd(report.ledger_micros);
        let (_, bill) = billed(&fake).await;
        eprintln!("settled {settled} USD, billed {bill} USD, {} leases", report.leases);
        assert!((settled - bill).abs() <= 0.01, "settled {settled} USD, billed {bill} USD");
        assert!(settled <= CAP_USD, "spent {settled} USD over the {CAP_USD} USD cap");

        // Replica 2 was live throughout: nobody may have reaped its leases.
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&database).await.unwrap();
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT job_id, status_message FROM leases")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let survivors: std::collections::HashSet<String> =
            ids.iter().skip(2).step_by(3).map(ToString::to_string).collect();
        for (job, message) in rows.iter().filter(|(job, _)| survivors.contains(job)) {
            let message = message.as_deref().unwrap_or("");
            assert!(
                !message.starts_with("reaped"),
                "a live replica's lease of {job} was reaped: {message}"
            );
        }
    });
}
