//! Two `drover serve` processes, each with its own SQLite store and its default (generated)
//! deployment id, on one `drover fake-vast` account (issue 16): the second one's start-up
//! reaper must leave the first one's live instance alone, and both instances live side by
//! side. Before deployment ids were per install, every install labelled its instances
//! `drover:drover:<lease>` and the second supervisor destroyed the first's as an orphan.
//!
//! And the configuration: a bad `supervisor.deployment` is refused, naming the key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use drover::client::{ApiClient, Token};
use drover_api::token::ApiToken;
use drover_proto::JobPhase;
use serde_json::Value;

const KEY: &str = "fake-vast-key-for-the-fleet-test-0123456789abc";

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

/// `drover fake-vast` whose first instance never leaves `loading`: the first supervisor's
/// lease then stays open (and its instance billing) for the whole test, as a long job's would.
fn fake_vast() -> FakeVast {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["fake-vast", "--listen", "127.0.0.1:0", "--speed", "10", "--api-key", KEY])
        .args(["--faults", "stuck_loading=1"])
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

/// Every instance the account ever had: (contract id, label, still billing).
async fn instances(fake: &FakeVast) -> Vec<(u64, String, bool)> {
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
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["contract_id"].as_u64().unwrap(),
                e["label"].as_str().unwrap_or("").to_owned(),
                e["ended_s"].is_null(),
            )
        })
        .collect()
}

/// The deployment part of a `drover:<deployment>:<lease>` label.
fn deployment_of(label: &str) -> &str {
    label.strip_prefix("drover:").and_then(|l| l.split_once(':')).map(|(d, _)| d).expect(label)
}

#[test]
fn two_supervisors_on_one_account_keep_each_others_instances() {
    let fake = fake_vast();
    let token = ApiToken::generate().unwrap();
    let extra = format!("\n[provider]\nkind = \"vastai\"\nbase_url = \"{}\"\n", fake.url);
    let (_dir_a, _data_a, config_a) = config_dir(&token, &extra);
    let (_dir_b, _data_b, config_b) = config_dir(&token, &extra);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // A rents: its instance is loading (and billing) while its job waits for it.
    let serve_a = start_with(&config_a, Some(KEY));
    let client_a = ApiClient::new(&serve_a.url, Token::new(token.expose()).unwrap()).unwrap();
    let (job_a, first) = runtime.block_on(async {
        wait_ready_with(&client_a, "vast.ai").await;
        let id = client_a.submit(job(5.0), None).await.unwrap().body.id;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(first) = instances(&fake).await.into_iter().next() {
                break (id, first);
            }
            assert!(Instant::now() < deadline, "A never rented");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(first.2, "A's instance is billing");

    // B starts on the same account: its start-up reaper runs before it listens.
    let serve_b = start_with(&config_b, Some(KEY));
    let client_b = ApiClient::new(&serve_b.url, Token::new(token.expose()).unwrap()).unwrap();
    runtime.block_on(async {
        wait_ready_with(&client_b, "vast.ai").await;
        let now = instances(&fake).await;
        assert!(now[0].2, "B's start-up reaper destroyed A's live instance: {now:?}");

        // B rents too, while A's instance lives on.
        let job_b = client_b.submit(job(5.0), None).await.unwrap().body.id;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = instances(&fake).await;
            if now.len() >= 2 {
                assert!(now[0].2 && now[1].2, "both instances billing side by side: {now:?}");
                break;
            }
            assert!(Instant::now() < deadline, "B never rented: {now:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(follow(&client_b, &job_b).await.0, JobPhase::Succeeded);

        // A's first instance is still the one it rented, still billing, and A never had to
        // rent another; A's job is still waiting for it.
        let now = instances(&fake).await;
        assert_eq!(now[0].0, first.0);
        assert!(now[0].2, "A's instance was destroyed: {now:?}");
        let (dep_a, dep_b) = (deployment_of(&first.1), deployment_of(&now[1].1));
        assert_ne!(dep_a, dep_b, "two installs share a deployment id");
        assert!(dep_a.starts_with("drover-") && dep_b.starts_with("drover-"), "{dep_a} {dep_b}");
        let a_rentals = now.iter().filter(|i| deployment_of(&i.1) == dep_a).count();
        assert_eq!(a_rentals, 1, "A rented again after losing its instance: {now:?}");
        let state = client_a.job(&job_a).await.unwrap().body.state;
        assert!(!state.is_terminal(), "A's job ended: {state:?}");
    });
    drop(serve_b);
    drop(serve_a);
}

#[test]
fn a_bad_deployment_id_is_refused_naming_the_key() {
    let token = ApiToken::generate().unwrap();
    let (_dir, _data, config) = config_dir(&token, "");
    for bad in ["prod:eu", "-prod", ""] {
        let env = [(std::ffi::OsString::from("DROVER_SUPERVISOR__DEPLOYMENT"), bad.into())];
        let err = drover::cmd::serve::load_config_with(Some(&config), env).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("at /supervisor/deployment:"), "{bad:?}: {text}");
    }
    let env = [(std::ffi::OsString::from("DROVER_SUPERVISOR__DEPLOYMENT"), "prod-eu.1".into())];
    let config = drover::cmd::serve::load_config_with(Some(&config), env).unwrap();
    assert_eq!(config.supervisor.deployment.as_deref(), Some("prod-eu.1"));
    assert_eq!(config.supervisor.replica_expiry_s, 30);
}
