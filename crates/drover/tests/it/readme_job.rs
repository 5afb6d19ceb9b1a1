//! Issue 15: the README's example job, run 20 times in a row on one `drover serve` with the
//! embedded simulator. Offers rented and released return to the simulated market, so every
//! run finds its GPU (before, the third and every later run failed with "no offer matches").

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;

use common::*;
use drover::client::{ApiClient, Token};
use drover_api::token::ApiToken;
use drover_proto::JobPhase;

/// The `job.json` example in README.md's "Running it for real".
fn readme_job() -> Vec<u8> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let after = readme.split("`job.json` is a job spec").nth(1).expect("the example's intro");
    let block = after.split("```json").nth(1).unwrap().split("```").next().unwrap();
    let job: serde_json::Value = serde_json::from_str(block.trim()).expect("the example is JSON");
    assert_eq!(job["gpu"]["models"][0], "RTX 4090", "{job}");
    serde_json::to_vec(&job).unwrap()
}

#[test]
fn the_readme_example_job_runs_20_times_in_a_row_on_one_serve() {
    let token = ApiToken::generate().unwrap();
    let (_dir, _data, config) = config_dir(&token, "");
    let mut serve = start(&config);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let started = std::time::Instant::now();
    runtime.block_on(async {
        let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
        wait_ready(&client).await;
        let job = readme_job();
        for run in 1..=20 {
            let id = client.submit(job.clone(), None).await.unwrap().body.id;
            let (end, kinds) = follow(&client, &id).await;
            let message = client.job(&id).await.unwrap().body.message.unwrap_or_default();
            assert_eq!(end, JobPhase::Succeeded, "run {run}: {message} {kinds:?}");
        }
        let metrics = client.metrics().await.unwrap();
        assert_eq!(sample(&metrics, "drover_simulator_live_instances"), 0.0, "{metrics}");
        assert_eq!(sample(&metrics, "drover_leases_open"), 0.0, "{metrics}");
    });
    println!("20 README jobs on one serve in {} ms", started.elapsed().as_millis());
    terminate(&mut serve);
}
