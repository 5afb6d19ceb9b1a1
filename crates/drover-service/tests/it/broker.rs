//! [`ProvisionerBroker`] over the real provisioner and the Vast.ai simulator: a lease is
//! rented through the gate, and only the driver that acquired it can see or release it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_proto::api::JobEventKind;
use drover_proto::config::GateConfig;
use drover_proto::{
    AcquireGpu, ErrorCode, GpuRequest, JobId, JobPhase, JobState, LeasePhase, Pricing,
};
use drover_provision::{Clock, CostModel, Provisioner, ProvisionerConfig};
use drover_service::ProvisionerBroker;
use drover_store::{NewJob, SqliteStore, Store};
use drover_supervisor::{GpuBroker, LeaseOwner};
use drover_vast::{ApiKey, RetryPolicy, VastClient};
use drover_vast_sim::{SimConfig, Simulator};

const KEY: &str = "drv-broker-test-key-0123456789abcdef";

fn owner(driver: &str, job: &str) -> LeaseOwner {
    LeaseOwner { driver: driver.parse().unwrap(), job_id: job.parse().unwrap() }
}

fn request(job: &str) -> AcquireGpu {
    AcquireGpu {
        job_id: job.parse().unwrap(),
        gpu: GpuRequest {
            count: 1,
            models: vec!["RTX 4090".into()],
            min_gpu_ram_gib: None,
            max_usd_per_hour: None,
            min_reliability: None,
            pricing: Pricing::OnDemand,
        },
        image: "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime".into(),
        onstart: None,
        env: BTreeMap::new(),
        disk_gib: 20,
        max_runtime_s: 600,
        bandwidth_gib: 1.0,
    }
}

/// The simulator (with `faults`), a store and a broker over the real provisioner.
struct Rig {
    sim: Simulator,
    store: SqliteStore,
    broker: ProvisionerBroker<SqliteStore>,
    _dir: tempfile::TempDir,
}

async fn rig(faults: &str) -> Rig {
    // Simulated time runs 200x faster, so provisioning takes milliseconds.
    let clock = Clock::scaled(200.0);
    let sim = Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            api_key: Some(ApiKey::new(KEY).unwrap()),
            seed: 7,
            clock,
            faults: faults.parse().unwrap(),
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    let client =
        VastClient::new(sim.base_url(), ApiKey::new(KEY).unwrap(), RetryPolicy::default()).unwrap();
    let config = ProvisionerConfig {
        gate: GateConfig { daily_cap_usd: 50.0, ..GateConfig::default() },
        model: CostModel { provision_max_s: 120.0, ..CostModel::default() },
        poll_interval_s: 2.0,
        monitor_interval_s: 5.0,
        reap_interval_s: 1.0e6,
        destroy_confirm_interval_s: 1.0,
        ..ProvisionerConfig::new("test")
    };
    let provisioner = Provisioner::start(client, store.clone(), config, clock).await.unwrap();
    let broker = ProvisionerBroker::new(Arc::new(provisioner), store.clone());
    Rig { sim, store, broker, _dir: dir }
}

/// Stores job `id` as submitted (queued).
async fn stored_job(store: &SqliteStore, id: &str) -> JobId {
    let spec = serde_json::from_value(serde_json::json!({
        "driver": "alpha", "action": "run", "max_runtime_s": 600, "budget_usd": 5.0,
        "gpu": {"count": 1}
    }))
    .unwrap();
    let job = NewJob {
        id: id.parse().unwrap(),
        spec,
        submitted_by: "t".to_owned(),
        at_unix_ms: 1_795_305_600_000,
        idempotency: None,
    };
    store.submit_job(job).await.unwrap();
    id.parse().unwrap()
}

/// Ends job `id` as its driver's death would.
async fn end_job(store: &SqliteStore, id: &JobId) {
    let state = JobEventKind::JobState(JobState {
        job_id: id.clone(),
        state: JobPhase::Failed,
        message: Some("the driver died".to_owned()),
    });
    store.append_event(id, 1_795_305_601_000, state).await.unwrap();
}

/// A job that has ended gets no GPU, and one that ends while its GPU is being rented (its
/// driver killed mid-acquire: the service released the job's leases before this one
/// existed) has the lease released as it comes back, instead of billing until the lease's
/// deadline. Found under load by serve's "dead driver's lease was never released".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ended_keeps_no_gpu_even_one_rented_as_it_ended() {
    let Rig { sim, store, broker, _dir } = rig("slow_create=1500").await;

    let ended = stored_job(&store, "job-ended").await;
    end_job(&store, &ended).await;
    let err = broker.acquire(&owner("alpha", "job-ended"), 5.0, request("job-ended")).await;
    assert_eq!(err.unwrap_err().code, ErrorCode::UnknownJob);
    assert!(store.open_leases().await.unwrap().is_empty());
    assert!(sim.ledger().entries.is_empty(), "an instance was rented for an ended job");

    let dying = stored_job(&store, "job-dying").await;
    let broker = Arc::new(broker);
    let acquiring = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            broker.acquire(&owner("alpha", "job-dying"), 5.0, request("job-dying")).await
        })
    };
    // The lease is reserved and its create is on its way (delayed by the simulator).
    while store.open_leases().await.unwrap().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    end_job(&store, &dying).await;
    let err = acquiring.await.unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownJob, "{err:?}");
    assert!(store.open_leases().await.unwrap().is_empty(), "the ended job still holds a lease");
    assert!(sim.ledger().live().is_empty(), "an instance of an ended job is still billing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_rented_through_the_gate_and_stay_with_their_driver() {
    let Rig { sim, store, broker, _dir } = rig("none").await;

    let alpha = owner("alpha", "job-a");
    let lease = broker.acquire(&alpha, 2.0, request("job-a")).await.unwrap();
    assert_eq!(lease.job_id.as_str(), "job-a");
    assert_eq!(lease.state, LeasePhase::Running);
    assert!(lease.estimate.as_ref().unwrap().confidence >= 0.95);

    // Another driver learns nothing about it, not even that it exists.
    let beta = owner("beta", "job-b");
    let missing: drover_proto::LeaseId = "no-such-lease".parse().unwrap();
    let theirs = broker.status(&beta, lease.lease_id.clone()).await.unwrap_err();
    let nothing = broker.status(&beta, missing.clone()).await.unwrap_err();
    assert_eq!((theirs.code, nothing.code), (ErrorCode::UnknownLease, ErrorCode::UnknownLease));
    assert_eq!(
        theirs.message.replace(lease.lease_id.as_str(), "ID"),
        nothing.message.replace(missing.as_str(), "ID")
    );
    let err = broker.logs(&beta, lease.lease_id.clone(), 10).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownLease);
    let err = broker.release(&beta, lease.lease_id.clone()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownLease);
    assert_eq!(
        broker.status(&alpha, lease.lease_id.clone()).await.unwrap().state,
        LeasePhase::Running
    );

    // Its owner releases it: destroyed and confirmed; a second release is harmless.
    let released = broker.release(&alpha, lease.lease_id.clone()).await.unwrap();
    assert_eq!(released.state, LeasePhase::Released);
    let again = broker.release(&alpha, lease.lease_id.clone()).await.unwrap();
    assert_eq!(again.state, LeasePhase::Released);
    assert!(sim.ledger().live().is_empty(), "an instance is still billing");

    // A request the gate cannot approve rents nothing and says why.
    let mut greedy = request("job-c");
    greedy.max_runtime_s = 86_400;
    let err = broker.acquire(&owner("alpha", "job-c"), 0.01, greedy).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::CostGateRejected, "{err:?}");
    assert!(sim.ledger().live().is_empty());

    // A request the session refused for going outside its job's GPU request is audited,
    // naming the field.
    let job = GpuRequest {
        models: vec!["RTX 3060".into()],
        max_usd_per_hour: Some(0.2),
        ..request("j").gpu
    };
    let asked = GpuRequest { models: vec!["H100 SXM".into()], ..request("j").gpu };
    let refusal = drover_supervisor::broker::authorize(&job, &asked).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::Forbidden);
    broker.refused(&owner("alpha", "job-d"), &refusal).await;
    let audit = store.audit_after(0, 10_000).await.unwrap();
    let row = audit.iter().map(|(_, e)| e).find(|e| e.action == "lease.refused").expect("audited");
    assert_eq!(row.result, "forbidden");
    assert_eq!(row.resource, "job:job-d");
    assert_eq!(row.metadata["field"], "gpu.models");
    assert_eq!(row.actor, "driver:alpha");
}
