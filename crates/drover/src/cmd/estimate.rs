//! `drover estimate FILE|-`: a dry-run cost estimate through the server's estimator and gate.
//! Nothing is rented and nothing is reserved.
//!
//! FILE is either an estimate request (`{"gpu", "max_runtime_s", "budget_usd", "disk_gib"?,
//! "bandwidth_gib"?}`, the body of `POST /v1/estimates`) or a job spec as `drover jobs submit`
//! takes it, whose `gpu`, `max_runtime_s` and `budget_usd` are used (and `params.disk` /
//! `params.disk_gib` when present; disk defaults to 16 GiB, bandwidth to 0, as the API's).
//!
//! ```text
//! $ drover estimate job.json
//! decision         allowed
//! confidence       0.9990 (floor 0.95)
//! expected         $0.3120
//! p95              $0.4410
//! worst case       $0.6020
//! budget           $2.50
//! offer            1 x RTX 4090 at $0.41/h
//! ```
//!
//! Exit codes: 0 the gate would allow it; 1 the gate would refuse it (or the server refused
//! the request); 2 the command could not run.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use drover_proto::api::{EstimateRequest, EstimateResponse};
use serde_json::Value;

use crate::cmd::jobs::{ServerArgs, outcome_code, read_json, write_table};

/// Arguments of `drover estimate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server options.
    #[command(flatten)]
    pub server: ServerArgs,
    /// An estimate request or a job spec (`-` for stdin).
    pub file: PathBuf,
}

/// Why a document cannot be turned into an estimate request.
#[derive(Debug, thiserror::Error)]
pub enum EstimateInputError {
    /// The job spec asks for no GPU, so there is nothing to estimate.
    #[error("field /gpu: the job asks for no GPU, so it rents nothing and costs nothing")]
    NoGpu,
    /// A field has the wrong type or is missing.
    #[error("field {field}: {message}")]
    Field {
        /// JSON pointer to the field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Turns a job spec or an estimate request into an estimate request.
pub fn to_request(value: &Value) -> Result<EstimateRequest, EstimateInputError> {
    if value.get("driver").is_none() {
        return serde_json::from_value(value.clone())
            .map_err(|e| EstimateInputError::Field { field: "(body)", message: e.to_string() });
    }
    let gpu = match value.get("gpu") {
        None | Some(Value::Null) => return Err(EstimateInputError::NoGpu),
        Some(gpu) => serde_json::from_value(gpu.clone())
            .map_err(|e| EstimateInputError::Field { field: "/gpu", message: e.to_string() })?,
    };
    let number = |field: &'static str, key: &str| {
        value
            .get(key)
            .and_then(Value::as_f64)
            .ok_or(EstimateInputError::Field { field, message: "a number is required".to_owned() })
    };
    let runtime = number("/max_runtime_s", "max_runtime_s")?;
    let budget_usd = number("/budget_usd", "budget_usd")?;
    let params = value.get("params");
    let disk = params
        .and_then(|p| p.get("disk_gib").or_else(|| p.get("disk")))
        .and_then(Value::as_u64)
        .unwrap_or(16);
    // The estimate route accepts at least 60 s of runtime; a shorter job is priced at 60 s.
    if !(runtime.is_finite() && runtime <= f64::from(u32::MAX)) {
        return Err(EstimateInputError::Field {
            field: "/max_runtime_s",
            message: "out of range".to_owned(),
        });
    }
    // Finite and at most u32::MAX after the check above, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let max_runtime_s = runtime.max(60.0).ceil() as u32;
    Ok(EstimateRequest {
        gpu,
        max_runtime_s,
        disk_gib: u32::try_from(disk).unwrap_or(u32::MAX),
        bandwidth_gib: 0.0,
        budget_usd,
    })
}

/// Runs `drover estimate`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let (_, value) = read_json(&args.file)?;
    let request = to_request(&value).with_context(|| format!("{}", args.file.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    outcome_code(runtime.block_on(async move {
        let answer = client.estimate(&request).await?;
        let mut out = std::io::stdout().lock();
        if args.server.json {
            writeln!(out, "{}", answer.raw)?;
        } else {
            write_table(&mut out, &rows(&answer.body, request.budget_usd))?;
        }
        Ok(if answer.body.allowed { ExitCode::SUCCESS } else { ExitCode::from(1) })
    }))
}

/// The gate's decision as key/value rows.
pub fn rows(answer: &EstimateResponse, budget_usd: f64) -> Vec<[String; 2]> {
    let mut rows = vec![[
        "decision".to_owned(),
        if answer.allowed { "allowed".to_owned() } else { "refused".to_owned() },
    ]];
    if let Some(estimate) = &answer.estimate {
        rows.push([
            "confidence".to_owned(),
            format!("{:.4} (floor {})", estimate.confidence, answer.confidence_floor),
        ]);
        rows.push(["expected".to_owned(), format!("${:.4}", estimate.expected_usd)]);
        rows.push(["p95".to_owned(), format!("${:.4}", estimate.p95_usd)]);
        rows.push(["worst case".to_owned(), format!("${:.4}", estimate.worst_usd)]);
    } else {
        rows.push(["confidence floor".to_owned(), format!("{}", answer.confidence_floor)]);
    }
    rows.push(["budget".to_owned(), format!("${budget_usd:.2}")]);
    if let Some(offer) = &answer.offer {
        rows.push([
            "offer".to_owned(),
            format!("{} x {} at ${:.3}/h", offer.gpu_count, offer.gpu_model, offer.usd_per_hour),
        ]);
    }
    if let Some(reason) = &answer.reason {
        rows.push(["reason".to_owned(), reason.clone()]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_spec_becomes_an_estimate_request() {
        let spec = serde_json::json!({"driver": "container", "action": "run",
            "params": {"image": "x", "disk": 32}, "gpu": {"count": 1},
            "max_runtime_s": 30, "budget_usd": 1.5});
        let request = to_request(&spec).unwrap();
        assert_eq!(request.max_runtime_s, 60);
        assert_eq!(request.disk_gib, 32);
        assert!((request.budget_usd - 1.5).abs() < f64::EPSILON);
    }

    #[test]
    fn missing_fields_are_named() {
        let spec = serde_json::json!({"driver": "container", "action": "run",
            "max_runtime_s": 30, "budget_usd": 1.5});
        assert!(to_request(&spec).unwrap_err().to_string().starts_with("field /gpu"));
        let spec = serde_json::json!({"driver": "container", "action": "run",
            "gpu": {"count": 1}, "max_runtime_s": 30});
        assert!(to_request(&spec).unwrap_err().to_string().starts_with("field /budget_usd"));
    }
}
