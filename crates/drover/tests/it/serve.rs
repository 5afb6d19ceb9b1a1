//! `drover serve` as a real process (as root in CI, so Phase A really drops to 65534), driven
//! over HTTP: a GPU job through the bundled `container` driver to success with its SSE
//! stream, a job refused by the cost gate (budget too small), a job cancelled mid-run, a
//! driver killed mid-job (the job fails, the next one runs on the restarted driver), then
//! the simulator's ledger (through `/metrics`) shows nothing billing and a spend that matches
//! drover's ledger; then SIGTERM; afterwards the store it leaves behind shows every job
//! ended, no lease open and a balanced ledger.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use drover::client::{ApiClient, Token};
use drover_api::token::ApiToken;
use drover_proto::JobPhase;
use drover_store::{SqliteStore, Store};

#[test]
fn serve_runs_gated_gpu_jobs_and_leaves_nothing_behind() {
    let token = ApiToken::generate().unwrap();
    let (_dir, data, config) = config_dir(&token, "");
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
        // Nothing was reserved for it, so nothing was rented.
        let store = SqliteStore::open_in(&data).await.unwrap();
        let committed = store.committed(&poor, 0).await.unwrap();
        assert!(committed.job_usd.abs() < f64::EPSILON, "{committed:?}");

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

        // The driver is killed mid-job: the job fails naming the death, the supervisor starts
        // a new driver process, and the next job runs on it.
        let victim = client.submit(job(5.0), None).await.unwrap().body.id;
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.job(&victim).await.unwrap().body.state != JobPhase::Running {
            assert!(Instant::now() < deadline, "the job never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let driver = driver_pid(serve.child.id()).expect("the container driver process");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(driver),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let (end, _) = follow(&client, &victim).await;
        assert_eq!(end, JobPhase::Failed);
        let message = client.job(&victim).await.unwrap().body.message.unwrap_or_default();
        assert!(
            message.to_lowercase().contains("sigkill") || message.contains("signal"),
            "{message}"
        );
        // The lease the dead driver held ends with its job, while the server runs on.
        let store = SqliteStore::open_in(&data).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.open_leases().await.unwrap().iter().any(|l| l.job_id == victim) {
            assert!(Instant::now() < deadline, "the dead driver's lease was never released");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_ready(&client).await;
        let after = client.submit(job(5.0), None).await.unwrap().body.id;
        assert_eq!(follow(&client, &after).await.0, JobPhase::Succeeded);

        // The simulator's own ledger: nothing billing, and the spend matches drover's ledger
        // (drover settles from its record of each rental: never below the bill, within a cent).
        let metrics = client.metrics().await.unwrap();
        assert_eq!(sample(&metrics, "drover_simulator_live_instances"), 0.0, "{metrics}");
        assert_eq!(sample(&metrics, "drover_leases_open"), 0.0, "{metrics}");
        let billed = sample(&metrics, "drover_simulator_billed_usd");
        let settled = sample(&metrics, "drover_ledger_usd");
        assert!(billed > 0.0, "{metrics}");
        assert!(settled + 1e-6 >= billed && settled - billed <= 0.01, "{metrics}");
        // Issue 17: what happened above is in the metrics too: the killed driver (a sandbox
        // death by signal, then a restart), the gate's refusal and its allowed rentals, the
        // provider calls, and the build and process metrics.
        for (series, at_least) in [
            ("drover_driver_exits_total{driver=\"container\",reason=\"signal\"}", 1.0),
            ("drover_sandbox_deaths_total{driver=\"container\",cause=\"signal\"}", 1.0),
            ("drover_driver_restarts_total{driver=\"container\"}", 1.0),
            ("drover_driver_sessions_connected{driver=\"container\"}", 1.0),
            (
                "drover_gate_decisions_total{purpose=\"rental\",decision=\"allowed\",reason=\"none\"}",
                3.0,
            ),
            ("drover_provider_calls_total{operation=\"create_instance\",outcome=\"ok\"}", 3.0),
            ("process_resident_memory_bytes", 1.0),
        ] {
            assert!(sample(&metrics, series) >= at_least, "{series} in\n{metrics}");
        }
        let refused = metrics.lines().any(|l| {
            l.starts_with("drover_gate_decisions_total{purpose=\"rental\",decision=\"refused\"")
        });
        assert!(refused, "no refused rental in\n{metrics}");
        assert!(metrics.contains("drover_build_info{version=\""), "{metrics}");
        assert!(metrics.contains("drover_api_request_duration_seconds_bucket{"), "{metrics}");
    });

    // SIGTERM: a graceful exit.
    terminate(&mut serve);

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

#[test]
fn sigterm_ends_running_jobs_and_their_event_streams_then_exits() {
    let token = ApiToken::generate().unwrap();
    let exe = env!("CARGO_BIN_EXE_drover");
    let drivers = format!(
        "\n[[drivers]]\nname = \"example\"\ncommand = [{exe:?}, \"driver\", \"example\"]\n"
    );
    let (_dir, data, config) = config_dir(&token, &drivers);
    let mut serve = start(&config);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
    let id = runtime.block_on(async {
        wait_ready(&client).await;
        let spec = serde_json::json!({"driver": "example", "action": "sleep",
            "params": {"seconds": 3600}, "max_runtime_s": 7200, "budget_usd": 0.0});
        let id = client.submit(serde_json::to_vec(&spec).unwrap(), None).await.unwrap().body.id;
        wait_running(&client, &id).await;
        id
    });
    // A client follows the hour-long job while the server is told to stop.
    let follower = {
        let client = client.clone();
        runtime.spawn(async move { follow(&client, &id).await.0 })
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    terminate(&mut serve);
    assert!(started.elapsed() < Duration::from_secs(30), "shutdown waited for the job");
    let end = runtime.block_on(follower).unwrap();
    assert_eq!(end, JobPhase::Cancelled);
    runtime.block_on(async {
        let store = SqliteStore::open_in(&data).await.unwrap();
        assert!(store.unfinished_jobs().await.unwrap().is_empty());
    });
}
