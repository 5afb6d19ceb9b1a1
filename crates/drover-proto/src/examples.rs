//! One realistic, valid frame of every message type.
//!
//! Used by the tests (every type round-trips through the schemas), by the fuzzers' seed
//! corpus, by the benchmarks, and by driver authors as a reference for what each frame looks
//! like on the wire (`drover_proto::examples::frames()` serialized is exactly that).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::frame::{Frame, MessageType};
use crate::ids::MsgId;
use crate::messages::*;

/// Unix time used by the examples: 2026-11-22T00:00:00Z, in milliseconds.
pub const EXAMPLE_UNIX_MS: u64 = 1_795_305_600_000;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Parses an identifier literal of the examples.
#[allow(clippy::expect_used)]
fn must<T: std::str::FromStr>(literal: &str) -> T {
    // Invariant: every literal in this module matches its grammar; the tests build every
    // example, so a bad literal fails them before it could fail anywhere else.
    literal.parse().ok().expect("example identifiers are valid literals")
}

fn id(value: &str) -> crate::ids::JobId {
    must(value)
}

fn lease_id() -> crate::ids::LeaseId {
    must("lease-7")
}

/// The GPU request used by the examples.
pub fn gpu_request() -> GpuRequest {
    GpuRequest {
        count: 1,
        models: vec!["RTX 4090".to_owned(), "RTX 3090".to_owned()],
        min_gpu_ram_gib: Some(24),
        max_usd_per_hour: Some(0.6),
        min_reliability: Some(0.98),
        pricing: Pricing::OnDemand,
    }
}

/// A `job_log` frame of `lines` lines of about 75 bytes each (500 lines is about 40 KB).
pub fn job_log(lines: usize) -> Frame {
    Frame::event(JobLog {
        job_id: id("job-42"),
        stream: LogStream::Stdout,
        lines: (0..lines)
            .map(|i| {
                format!(
                    "epoch 3 step {i:>6}: loss=0.{:04} lr=3.0e-4 tokens/s=18234 gpu_util=97%",
                    i % 9973
                )
            })
            .collect(),
        dropped: 0,
    })
}

/// A `job_progress` frame of about 150 bytes.
pub fn job_progress() -> Frame {
    Frame::event(JobProgress {
        job_id: id("job-42"),
        current: 1250.0,
        total: Some(10_000.0),
        unit: Some("steps".to_owned()),
        message: Some("training epoch 3 of 8".to_owned()),
    })
}

/// One valid frame of each message type, in [`MessageType::ALL`] order.
pub fn frames() -> Vec<Frame> {
    let request_id = MsgId::FIRST;
    MessageType::ALL
        .iter()
        .map(|&message_type| match message_type {
            MessageType::Hello => Frame::request(
                request_id,
                Hello {
                    protocol_versions: vec![1],
                    driver: DriverInfo {
                        name: must("container"),
                        version: "0.1.0".to_owned(),
                    },
                    capabilities: vec![must("cancel")],
                    actions: BTreeMap::from([(
                        must("run"),
                        ParamsSchema(json!({
                            "type": "object",
                            "properties": {"image": {"type": "string"}, "command": {"type": "array", "items": {"type": "string"}}},
                            "required": ["image"],
                        })),
                    )]),
                    schema_sha256: "0".repeat(64),
                    max_frame_bytes: Some(1 << 20),
                },
            ),
            MessageType::Welcome => Frame::reply(
                request_id,
                Welcome {
                    protocol_version: 1,
                    session_id: must("sess-1"),
                    heartbeat_ms: 5000,
                    max_frame_bytes: 1 << 20,
                },
            ),
            MessageType::Ping => Frame::request(request_id, Ping {}),
            MessageType::Pong => Frame::reply(request_id, Pong {}),
            MessageType::Ack => Frame::reply(request_id, Ack {}),
            MessageType::RunJob => Frame::request(
                request_id,
                RunJob {
                    job_id: id("job-42"),
                    action: must("run"),
                    params: object(json!({"image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime", "command": ["python", "train.py"]})),
                    gpu: Some(gpu_request()),
                    deadline_unix_ms: EXAMPLE_UNIX_MS + 3_600_000,
                },
            ),
            MessageType::CancelJob => Frame::request(
                request_id,
                CancelJob { job_id: id("job-42"), reason: "cancelled by the client".to_owned() },
            ),
            MessageType::JobState => Frame::event(JobState {
                job_id: id("job-42"),
                state: JobPhase::Running,
                message: None,
            }),
            MessageType::JobProgress => job_progress(),
            MessageType::JobLog => job_log(3),
            MessageType::JobResult => Frame::event(JobResult {
                job_id: id("job-42"),
                outcome: Outcome::Succeeded,
                output: Some(json!({"exit_code": 0, "artifacts": ["model.safetensors"]})),
                message: None,
            }),
            MessageType::Log => Frame::event(Log {
                level: Level::Info,
                message: "pulled image".to_owned(),
                fields: object(json!({"image": "pytorch/pytorch:2.4.0", "seconds": 12.5})),
            }),
            MessageType::AcquireGpu => Frame::request(
                request_id,
                AcquireGpu {
                    job_id: id("job-42"),
                    gpu: gpu_request(),
                    image: "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime".to_owned(),
                    onstart: Some("python train.py".to_owned()),
                    env: BTreeMap::from([("EPOCHS".to_owned(), "8".to_owned())]),
                    disk_gib: 20,
                    max_runtime_s: 3600,
                    bandwidth_gib: 5.0,
                },
            ),
            MessageType::LeaseStatus => {
                Frame::request(request_id, LeaseStatus { lease_id: lease_id() })
            }
            MessageType::LeaseLogs => {
                Frame::request(request_id, LeaseLogs { lease_id: lease_id(), tail: 200 })
            }
            MessageType::ReleaseGpu => Frame::request(request_id, ReleaseGpu { lease_id: lease_id() }),
            MessageType::Lease => Frame::reply(
                request_id,
                Lease {
                    lease_id: lease_id(),
                    job_id: id("job-42"),
                    state: LeasePhase::Running,
                    deadline_unix_ms: EXAMPLE_UNIX_MS + 3_600_000,
                    gpu_model: Some("RTX 4090".to_owned()),
                    gpu_count: Some(1),
                    usd_per_hour: Some(0.3528),
                    estimate: Some(CostEstimate {
                        expected_usd: 0.37,
                        p95_usd: 0.41,
                        worst_usd: 0.45,
                        confidence: 0.999,
                    }),
                    cost_usd: Some(0.02),
                    status_message: Some("running".to_owned()),
                },
            ),
            MessageType::LeaseLog => Frame::reply(
                request_id,
                LeaseLog {
                    lease_id: lease_id(),
                    lines: vec!["ready".to_owned(), "step 1".to_owned()],
                    truncated: false,
                },
            ),
            MessageType::Shutdown => Frame::request(request_id, Shutdown { grace_ms: 10_000 }),
            MessageType::Error => Frame::reply(
                request_id,
                WireError {
                    code: ErrorCode::UnknownJob,
                    message: "no job job-43 on this session".to_owned(),
                    violations: vec![],
                    details: None,
                },
            ),
        })
        .collect()
}
