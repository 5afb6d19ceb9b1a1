//! A drover driver in Rust: `sleep` with params, progress, logs and cancel.
use std::time::Duration;

use drover_driver::{Action, Driver, Job, JobContext, JobError, JobOutcome};
use schemars::JsonSchema;
use serde::Deserialize;

/// Params of `sleep`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"seconds": 5}))]
struct Sleep {
    /// How long, in seconds.
    #[schemars(range(min = 0.0, max = 3600.0))]
    seconds: f64,
}

struct Sleeper;

impl Driver for Sleeper {
    const NAME: &'static str = "sleeper";
    const VERSION: &'static str = "1.0.0";

    fn actions(&self) -> Vec<Action> {
        vec![Action::of::<Sleep>("sleep")]
    }

    async fn run(&self, ctx: JobContext, job: Job) -> JobOutcome {
        let params: Sleep = job.params()?;
        let (mut tick, ticks) = (0.0, (params.seconds * 10.0).round());
        while tick < ticks {
            ctx.progress(tick, Some(ticks), None);
            tick += 1.0;
            tokio::select! {
                () = ctx.cancelled() => {
                    ctx.log_stderr(&format!("cancelled after {tick} ticks"));
                    return Err(JobError::Cancelled);
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        ctx.log("woke up");
        Ok(Some(serde_json::json!({ "slept": params.seconds })))
    }
}

fn main() -> std::process::ExitCode {
    drover_driver::main(Sleeper)
}
