//! Builders shared by the store tests, and the PostgreSQL server they run against.

#![allow(dead_code, unreachable_pub)]

pub mod postgres;

/// One `#[tokio::test]` per case and backend, `sqlite::<case>` and `postgres::<case>`: each
/// case is an `async fn(impl Store)` in the including file.
#[macro_export]
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let store =
                        drover_store::SqliteStore::open_in(&dir.path().join("data")).await.unwrap();
                    super::$case(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case($crate::common::postgres::store().await).await;
                }
            )*
        }
    };
}

use drover_proto::api::JobSpec;
use drover_proto::{CostEstimate, JobId, LeaseId, LeasePhase};
use drover_store::{ContractRecord, LeaseRecord, NewJob};

pub const T0: u64 = 1_795_305_600_000;

/// Today's budget day (Unix days, UTC): the day a reservation must carry on PostgreSQL, which
/// refuses any other day than its own.
pub fn today() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    now.as_secs() / 86_400
}

pub fn spec(driver: &str, labels: &[(&str, &str)]) -> JobSpec {
    let labels: serde_json::Map<String, serde_json::Value> =
        labels.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
    serde_json::from_value(serde_json::json!({
        "driver": driver, "action": "run", "params": {"n": 1},
        "max_runtime_s": 60, "budget_usd": 1.5, "labels": labels,
    }))
    .unwrap()
}

pub fn new_job(id: &str, actor: &str, at: u64) -> NewJob {
    NewJob {
        id: id.parse().unwrap(),
        spec: spec("echo", &[]),
        submitted_by: actor.to_owned(),
        at_unix_ms: at,
        idempotency: None,
    }
}

pub fn job_id(id: &str) -> JobId {
    id.parse().unwrap()
}

pub fn lease(id: &str, job: &str, reserved_usd: f64) -> LeaseRecord {
    LeaseRecord {
        lease_id: id.parse::<LeaseId>().unwrap(),
        job_id: job.parse().unwrap(),
        actor: "ci".to_owned(),
        label: format!("drover:test:{id}"),
        phase: LeasePhase::Provisioning,
        reserved_usd,
        day: today(),
        granted_unix_ms: T0,
        deadline_unix_ms: T0 + 3_600_000,
        pending_offer: Some(77),
        contracts: vec![],
        gpu_model: None,
        gpu_count: None,
        estimate: CostEstimate {
            expected_usd: reserved_usd / 2.0,
            p95_usd: reserved_usd * 0.8,
            worst_usd: reserved_usd,
            confidence: 0.99,
        },
        bandwidth_usd: 0.01,
        settled_usd: None,
        status_message: None,
        owner_replica: Some("replica-a".to_owned()),
    }
}

pub fn contract(id: u64) -> ContractRecord {
    ContractRecord {
        contract_id: id,
        offer_id: 77,
        usd_per_hour: 0.42,
        created_unix_ms: T0 + 10,
        gone_unix_ms: None,
    }
}
