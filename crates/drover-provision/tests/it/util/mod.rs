//! Shared set-up for the provisioner's tests against the simulator: a simulator and a
//! provisioner on one sped-up clock, and the ledger checks every test ends with.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use drover_proto::api::AuditEvent;
use drover_proto::config::GateConfig;
use drover_proto::{AcquireGpu, GpuRequest, JobId, Pricing};
use drover_provision::{Clock, CostModel, JobContext, Provisioner, ProvisionerConfig};
use drover_store::{LeaseRecord, SqliteStore, Store};
use drover_vast::{ApiKey, RetryPolicy, VastClient};
use drover_vast_sim::{Faults, SimConfig, Simulator};

/// Simulated seconds per real second. A 60-second lease lasts 0.3 s.
pub(crate) const SPEED: f64 = 200.0;

/// The key of every test (never printed; the log-scrub test hunts for it).
pub(crate) const KEY: &str = "drv-TEST+key/with=chars~5d41402abc4b2a76b9719d911017c592";

pub(crate) type Prov = Provisioner<SqliteStore>;

pub(crate) struct Rig {
    pub(crate) sim: Simulator,
    pub(crate) store: SqliteStore,
    pub(crate) prov: Prov,
    pub(crate) clock: Clock,
    /// The store's directory, removed when the rig is dropped.
    pub(crate) dir: tempfile::TempDir,
}

/// A real SQLite store in a fresh directory.
pub(crate) async fn store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    (store, dir)
}

/// Fast retries: the simulator answers in microseconds.
pub(crate) fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        initial_backoff: Duration::from_millis(5),
        multiplier: 2.0,
        max_backoff: Duration::from_millis(80),
        overall: Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
    }
}

pub(crate) fn config() -> ProvisionerConfig {
    ProvisionerConfig {
        gate: GateConfig { daily_cap_usd: 50.0, ..GateConfig::default() },
        model: CostModel { provision_max_s: 120.0, ..CostModel::default() },
        poll_interval_s: 2.0,
        monitor_interval_s: 5.0,
        // The periodic reaper is exercised on purpose only.
        reap_interval_s: 1.0e6,
        destroy_confirm_interval_s: 1.0,
        failover_price_slack: 10.0,
        // Real seconds: a dropped (killed) provisioner's leases are taken over this soon.
        replica_expiry_s: 0.3,
        ..ProvisionerConfig::new("test")
    }
}

pub(crate) async fn simulator(faults: &str, clock: Clock) -> Simulator {
    let faults: Faults = faults.parse().unwrap();
    Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            api_key: Some(ApiKey::new(KEY).unwrap()),
            seed: 7,
            faults,
            clock,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap()
}

pub(crate) fn client(sim: &Simulator) -> VastClient {
    VastClient::new(sim.base_url(), ApiKey::new(KEY).unwrap(), retry()).unwrap()
}

pub(crate) async fn rig(faults: &str) -> Rig {
    rig_with(faults, config()).await
}

pub(crate) async fn rig_with(faults: &str, cfg: ProvisionerConfig) -> Rig {
    rig_at(faults, cfg, SPEED).await
}

/// A rig whose clock runs `speed` times real time: slower than [`SPEED`] for tests whose
/// assertions race simulated moments a few seconds apart.
pub(crate) async fn rig_at(faults: &str, cfg: ProvisionerConfig, speed: f64) -> Rig {
    let clock = Clock::scaled(speed);
    let sim = simulator(faults, clock).await;
    let (store, dir) = store().await;
    let prov = Provisioner::start(client(&sim), store.clone(), cfg, clock).await.unwrap();
    Rig { sim, store, prov, clock, dir }
}

pub(crate) fn request(job: &str) -> AcquireGpu {
    AcquireGpu {
        job_id: JobId::new(job).unwrap(),
        gpu: GpuRequest {
            count: 1,
            models: vec!["RTX 4090".into()],
            min_gpu_ram_gib: None,
            max_usd_per_hour: None,
            min_reliability: None,
            pricing: Pricing::OnDemand,
        },
        image: "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime".into(),
        onstart: Some("echo ready".into()),
        env: BTreeMap::from([("JOB_ID".into(), job.into())]),
        disk_gib: 20,
        max_runtime_s: 600,
        bandwidth_gib: 1.0,
    }
}

pub(crate) const BUDGET: f64 = 2.0;

pub(crate) fn ctx() -> JobContext {
    JobContext { budget_usd: BUDGET, actor: "driver:test".into() }
}

/// Waits (real time, bounded) until `f` holds.
pub(crate) async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The checks every fault test ends with, from the simulator's own ledger: nothing billing,
/// every lease settled, no lease billed beyond its reservation or its settlement (settled >=
/// billed), no job billed beyond its budget, and the day's settlements within the daily cap
/// (the cap that binds every job).
pub(crate) async fn assert_no_leak_no_overspend(rig: &Rig) {
    assert_no_leak_no_overspend_within(rig, BUDGET).await;
}

/// [`assert_no_leak_no_overspend`] for jobs whose budget is `budget`.
pub(crate) async fn assert_no_leak_no_overspend_within(rig: &Rig, budget: f64) {
    let ledger = rig.sim.ledger();
    assert!(ledger.live().is_empty(), "instances left billing: {:?}", ledger.live());
    let report = rig.store.ledger_report().await.unwrap();
    assert!(report.balances(), "the store's ledger does not balance: {report:?}");
    let leases = leases(&rig.store).await;
    let mut per_job: BTreeMap<String, f64> = BTreeMap::new();
    let mut settled_per_day: BTreeMap<u64, f64> = BTreeMap::new();
    for lease in &leases {
        assert!(!lease.is_open(), "lease {} is still open", lease.lease_id);
        let billed = billed_for(rig, lease);
        let settled = lease.settled_usd.unwrap();
        assert!(
            billed <= lease.reserved_usd + 1e-6,
            "lease {} billed {billed} over its reservation {}",
            lease.lease_id,
            lease.reserved_usd
        );
        assert!(
            billed <= settled + 1e-9,
            "lease {} billed {billed} over its settlement {settled}",
            lease.lease_id
        );
        *per_job.entry(lease.job_id.to_string()).or_default() += billed;
        *settled_per_day.entry(lease.day).or_default() += settled;
    }
    for (job, billed) in per_job {
        assert!(billed <= budget + 1e-9, "job {job} billed {billed} over its budget {budget}");
    }
    let cap = config().gate.daily_cap_usd;
    for (day, settled) in settled_per_day {
        assert!(settled <= cap, "day {day} settled {settled} over the daily cap {cap}");
    }
    // Every instance the simulator ever billed belongs to a lease of this deployment or was
    // made by the test itself (labelled `test-owned`).
    for e in &ledger.entries {
        let label = e.label.as_deref().unwrap_or("");
        assert!(
            label.starts_with("drover:test:") || label.starts_with("test-owned"),
            "unexpected instance {e:?}"
        );
    }
}

/// What the simulator billed for a lease's instances.
pub(crate) fn billed_for(rig: &Rig, lease: &LeaseRecord) -> f64 {
    rig.sim.ledger().with_label(&lease.label).iter().map(|e| e.total_usd()).sum()
}

/// Every audit event in the store, oldest first.
pub(crate) async fn audit_events(store: &SqliteStore) -> Vec<AuditEvent> {
    store.audit_after(0, 100_000).await.unwrap().into_iter().map(|(_, e)| e).collect()
}

pub(crate) async fn audit_actions(store: &SqliteStore) -> Vec<(String, String)> {
    audit_events(store).await.into_iter().map(|e| (e.action, e.result)).collect()
}

/// Every lease the store has, open or settled (found through the audit log's reservations).
pub(crate) async fn leases(store: &SqliteStore) -> Vec<LeaseRecord> {
    let mut ids: Vec<String> = Vec::new();
    for e in audit_events(store).await {
        if e.action == "ledger.reserve" && e.result == "ok" {
            let id = e.resource.trim_start_matches("lease:").to_owned();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let mut out = Vec::new();
    for id in ids {
        out.push(store.get_lease(&id.parse().unwrap()).await.unwrap().unwrap());
    }
    out
}

/// One lease.
pub(crate) async fn stored(store: &SqliteStore, id: &drover_proto::LeaseId) -> LeaseRecord {
    store.get_lease(id).await.unwrap().unwrap()
}
