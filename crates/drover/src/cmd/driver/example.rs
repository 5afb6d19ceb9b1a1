//! The bundled example driver, `drover driver example`: every feature of the SDK in a few
//! dozen lines, and the Rust driver that `drover driver-check` is tested against.
//!
//! | Action | Params | What it does |
//! |---|---|---|
//! | `echo` | `{text}` | logs `text` and returns `{"text": text}` |
//! | `sleep` | `{seconds, fail?}` | sleeps in tenths of a second with progress, a log line a second; stops at once when cancelled; `fail` makes it fail at the end |
//! | `rent` | `{max_runtime_s?}` (default 600) | acquires one GPU, waits up to 60 s for it to run, reads 10 lines of its log, always releases it; returns the lease id, model and cost |

use std::time::Duration;

use drover_driver::{Action, Driver, Job, JobContext, JobError, JobOutcome};
use drover_proto::{AcquireGpu, GpuRequest, LeasePhase, Pricing};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

/// The example driver.
#[derive(Debug)]
pub struct Example;

/// Params of `echo`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({"text": "hello"}))]
pub struct Echo {
    /// The text to log and return.
    #[schemars(length(max = 4096))]
    pub text: String,
}

/// Params of `sleep`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({"seconds": 30}))]
pub struct Sleep {
    /// How long, in seconds.
    #[schemars(range(min = 0.0, max = 3600.0))]
    pub seconds: f64,
    /// Fail at the end instead of succeeding.
    #[serde(default)]
    pub fail: bool,
}

/// Params of `rent`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({"max_runtime_s": 600}))]
pub struct Rent {
    /// Hard cap on the lease, in seconds. Default 600.
    #[serde(default)]
    #[schemars(range(min = 60, max = 86_400))]
    pub max_runtime_s: Option<u32>,
}

/// The image `rent` asks for.
const RENT_IMAGE: &str = "nvidia/cuda:12.4.1-base-ubuntu22.04";

impl Driver for Example {
    const NAME: &'static str = "example";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn actions(&self) -> Vec<Action> {
        vec![Action::of::<Echo>("echo"), Action::of::<Rent>("rent"), Action::of::<Sleep>("sleep")]
    }

    async fn run(&self, ctx: JobContext, job: Job) -> JobOutcome {
        match job.action.as_str() {
            "echo" => {
                let Echo { text } = job.params()?;
                ctx.log(&text);
                Ok(Some(json!({ "text": text })))
            }
            "sleep" => sleep(&ctx, job.params()?).await,
            "rent" => rent(&ctx, job.params()?).await,
            other => Err(JobError::failed(format!("no action {other}"))),
        }
    }
}

async fn sleep(ctx: &JobContext, params: Sleep) -> JobOutcome {
    // `seconds` is at most 3600 (the schema says so) and the value is clamped, so the tick
    // count is a whole number from 0 to 36 000 and the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ticks = (params.seconds * 10.0).round().clamp(0.0, 36_000.0) as u64;
    ctx.log(&format!("sleeping {} s", params.seconds));
    for tick in 0..ticks {
        #[allow(clippy::cast_precision_loss)]
        ctx.progress(tick as f64, Some(ticks as f64), None);
        if tick % 10 == 0 {
            ctx.log(&format!("tick {tick}"));
        }
        tokio::select! {
            () = ctx.cancelled() => {
                ctx.log_stderr(&format!("cancelled after {tick} ticks"));
                return Err(JobError::Cancelled);
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    if params.fail {
        return Err(JobError::failed("asked to fail"));
    }
    #[allow(clippy::cast_precision_loss)]
    ctx.progress(ticks as f64, Some(ticks.max(1) as f64), Some("done"));
    Ok(Some(json!({ "ticks": ticks })))
}

async fn rent(ctx: &JobContext, params: Rent) -> JobOutcome {
    let request = AcquireGpu {
        job_id: ctx.job_id().clone(),
        gpu: GpuRequest {
            count: 1,
            models: Vec::new(),
            min_gpu_ram_gib: None,
            max_usd_per_hour: None,
            min_reliability: None,
            pricing: Pricing::OnDemand,
        },
        image: RENT_IMAGE.to_owned(),
        onstart: None,
        env: Default::default(),
        disk_gib: 16,
        max_runtime_s: params.max_runtime_s.unwrap_or(600),
        bandwidth_gib: 0.0,
    };
    let lease = ctx.acquire_gpu(request).await?;
    ctx.log(&format!("lease {} is {:?}", lease.lease_id, lease.state));
    // Whatever happens from here on, the lease is given back.
    let outcome = use_lease(ctx, &lease.lease_id).await;
    let released = ctx.release_gpu(&lease.lease_id).await?;
    ctx.log(&format!("lease {} released", lease.lease_id));
    outcome.map(|model| {
        Some(json!({
            "lease_id": lease.lease_id,
            "gpu_model": model,
            "cost_usd": released.cost_usd,
        }))
    })
}

async fn use_lease(
    ctx: &JobContext,
    lease_id: &drover_proto::LeaseId,
) -> Result<Option<String>, JobError> {
    for _ in 0..60 {
        let lease = ctx.lease_status(lease_id).await?;
        match lease.state {
            LeasePhase::Running => {
                let log = ctx.lease_logs(lease_id, 10).await?;
                for line in &log.lines {
                    ctx.log(line);
                }
                return Ok(lease.gpu_model);
            }
            LeasePhase::Failed | LeasePhase::Exited | LeasePhase::Released => {
                return Err(JobError::failed(format!("the lease ended as {:?}", lease.state)));
            }
            LeasePhase::Provisioning | LeasePhase::Loading => {}
        }
        tokio::select! {
            () = ctx.cancelled() => return Err(JobError::Cancelled),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    Err(JobError::failed("the lease was not running after 60 s"))
}
