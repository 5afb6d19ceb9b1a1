//! "Today" and lease times come from the store's clock, not the replica's (issue 16): a
//! provisioner whose store's clock is a day off books its reservation on the store's day,
//! stamps its lease with the store's time, and still judges the lease's deadline (and its
//! instance's dead-man's switch) consistently, so the lease runs and settles as usual.
//!
//! The store is a real SQLite store whose clock ([`Store::now_unix_ms`]) reads a day off, as
//! a PostgreSQL server with a skewed clock would; everything else is the SQLite store's.

use std::time::Duration;

use crate::util::*;
use drover_proto::api::{AuditEvent, Job, JobEvent, JobEventKind};
use drover_proto::{JobId, LeaseId, LeasePhase};
use drover_provision::{Clock, Provisioner, ProvisionerConfig};
use drover_store::{
    Committed, Fleet, Heartbeat, JobFilter, JobOwners, JobPage, LeaseRecord, LedgerReport, NewJob,
    OwnedJob, Replica, ReserveLimits, SqliteStore, Store, StoreError, Submitted,
};
use drover_vast::ApiKey;
use drover_vast_sim::{SimConfig, SimTiming, Simulator};

const DAY_MS: i64 = 86_400_000;

/// A SQLite store whose clock reads `skew_ms` off the host's.
#[derive(Clone, Debug)]
struct SkewedStore {
    inner: SqliteStore,
    skew_ms: i64,
}

#[tokio::test]
async fn a_store_clock_a_day_ahead_books_on_the_stores_day() {
    lease_on_a_skewed_store(DAY_MS).await;
}

#[tokio::test]
async fn a_store_clock_a_day_behind_books_on_the_stores_day_and_the_lease_still_runs() {
    lease_on_a_skewed_store(-DAY_MS).await;
}

async fn lease_on_a_skewed_store(skew_ms: i64) {
    // The real clock: the store's offset applies to lease times only there.
    let clock = Clock::system();
    let timing =
        SimTiming { provision_s: 0.2, loading_s: 0.2, destroy_lag_s: 0.1, ..SimTiming::default() };
    let sim = Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            api_key: Some(ApiKey::new(KEY).unwrap()),
            seed: 7,
            timing,
            clock,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let (sqlite, _dir) = store().await;
    let store = SkewedStore { inner: sqlite, skew_ms };
    let cfg = ProvisionerConfig {
        poll_interval_s: 0.1,
        monitor_interval_s: 0.1,
        destroy_confirm_interval_s: 0.1,
        replica_expiry_s: 30.0,
        ..config()
    };
    let prov = Provisioner::start(client(&sim), store.clone(), cfg, clock).await.unwrap();

    let lease = prov.acquire(&request("job-skew"), &ctx()).await.unwrap();
    let rec = store.get_lease(&lease.lease_id).await.unwrap().unwrap();
    let store_now = store.now_unix_ms().await.unwrap();
    let store_day = store_now / 86_400_000;
    let host_day = clock.now_ms() / 86_400_000;
    assert_ne!(store_day, host_day);
    assert_eq!(rec.day, store_day, "booked on the replica's day, not the store's");
    assert_eq!(store.committed(&rec.job_id, store_day).await.unwrap().day_usd, rec.reserved_usd);
    assert_eq!(store.committed(&rec.job_id, host_day).await.unwrap().day_usd, 0.0);
    assert!(
        rec.granted_unix_ms.abs_diff(store_now) < 10_000,
        "granted at {} on the replica's clock, not near the store's {store_now}",
        rec.granted_unix_ms
    );
    assert!(rec.deadline_unix_ms > store_now, "the deadline is in the store's past");

    // The watchdog judges the deadline on the same clock, and the instance's dead-man's switch
    // on the host's: the lease keeps running.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rec = store.get_lease(&lease.lease_id).await.unwrap().unwrap();
    assert!(rec.is_open(), "the lease ended early: {:?}", rec.status_message);
    assert_eq!(rec.phase, LeasePhase::Running);
    let instance = rec.contracts[0].contract_id;
    assert!(sim.instance_exists(instance), "the instance ended itself early");

    let settled = prov.release(&lease.lease_id, "driver:test").await.unwrap();
    assert!(!sim.instance_exists(instance));
    assert!(settled.cost_usd.unwrap() > 0.0);
    assert!(store.ledger_report().await.unwrap().balances(), "the ledger does not balance");
}

impl Store for SkewedStore {
    async fn now_unix_ms(&self) -> Result<u64, StoreError> {
        Ok(self.inner.now_unix_ms().await?.saturating_add_signed(self.skew_ms))
    }
    async fn submit_job(&self, job: NewJob) -> Result<Submitted, StoreError> {
        self.inner.submit_job(job).await
    }
    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.inner.get_job(id).await
    }
    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        self.inner.list_jobs(filter).await
    }
    async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.inner.unfinished_jobs().await
    }
    async fn append_event(
        &self,
        id: &JobId,
        at_unix_ms: u64,
        event: JobEventKind,
    ) -> Result<JobEvent, StoreError> {
        self.inner.append_event(id, at_unix_ms, event).await
    }
    async fn events_after(
        &self,
        id: &JobId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        self.inner.events_after(id, after, limit).await
    }
    async fn purge_idempotency_keys(&self, before_unix_ms: u64) -> Result<u64, StoreError> {
        self.inner.purge_idempotency_keys(before_unix_ms).await
    }
    async fn reserve_lease(
        &self,
        lease: &LeaseRecord,
        limits: ReserveLimits,
    ) -> Result<(), StoreError> {
        self.inner.reserve_lease(lease, limits).await
    }
    async fn update_lease(&self, lease: &LeaseRecord) -> Result<(), StoreError> {
        self.inner.update_lease(lease).await
    }
    async fn settle_lease(
        &self,
        id: &LeaseId,
        settled_usd: f64,
        message: &str,
        at_unix_ms: u64,
    ) -> Result<LeaseRecord, StoreError> {
        self.inner.settle_lease(id, settled_usd, message, at_unix_ms).await
    }
    async fn get_lease(&self, id: &LeaseId) -> Result<Option<LeaseRecord>, StoreError> {
        self.inner.get_lease(id).await
    }
    async fn open_leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        self.inner.open_leases().await
    }
    async fn committed(&self, job: &JobId, day: u64) -> Result<Committed, StoreError> {
        self.inner.committed(job, day).await
    }
    async fn ledger_report(&self) -> Result<LedgerReport, StoreError> {
        self.inner.ledger_report().await
    }
    async fn append_audit(&self, event: &AuditEvent) -> Result<i64, StoreError> {
        self.inner.append_audit(event).await
    }
    async fn append_audit_batch(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.inner.append_audit_batch(events).await
    }
    async fn audit_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, AuditEvent)>, StoreError> {
        self.inner.audit_after(after, limit).await
    }
    async fn writable(&self) -> Result<(), StoreError> {
        self.inner.writable().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

impl Fleet for SkewedStore {
    async fn setting_or_init(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.inner.setting_or_init(key, value).await
    }
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<(), StoreError> {
        self.inner.heartbeat(beat).await
    }
    async fn replicas(&self, deployment: &str) -> Result<Vec<Replica>, StoreError> {
        self.inner.replicas(deployment).await
    }
    async fn retire_replica(&self, replica_id: &str) -> Result<(), StoreError> {
        self.inner.retire_replica(replica_id).await
    }
    async fn prune_replicas(
        &self,
        deployment: &str,
        expired_for_ms: u64,
    ) -> Result<u64, StoreError> {
        self.inner.prune_replicas(deployment, expired_for_ms).await
    }
    async fn try_reaper_lock(
        &self,
        deployment: &str,
        replica_id: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        self.inner.try_reaper_lock(deployment, replica_id, ttl_ms).await
    }
    async fn release_reaper_lock(
        &self,
        deployment: &str,
        replica_id: &str,
    ) -> Result<(), StoreError> {
        self.inner.release_reaper_lock(deployment, replica_id).await
    }
    async fn take_over_lease(
        &self,
        lease_id: &LeaseId,
        from: Option<&str>,
        to: &str,
    ) -> Result<bool, StoreError> {
        self.inner.take_over_lease(lease_id, from, to).await
    }
}

impl JobOwners for SkewedStore {
    fn with_replica(&self, replica_id: &str) -> Self {
        Self { inner: self.inner.with_replica(replica_id), skew_ms: self.skew_ms }
    }
    fn replica(&self) -> Option<&str> {
        self.inner.replica()
    }
    async fn orphaned_jobs(&self) -> Result<Vec<OwnedJob>, StoreError> {
        self.inner.orphaned_jobs().await
    }
    async fn take_over_job(&self, id: &JobId, from: Option<&str>) -> Result<bool, StoreError> {
        self.inner.take_over_job(id, from).await
    }
    async fn owns_job(&self, id: &JobId) -> Result<bool, StoreError> {
        self.inner.owns_job(id).await
    }
    async fn request_cancel(&self, id: &JobId, reason: &str) -> Result<bool, StoreError> {
        self.inner.request_cancel(id, reason).await
    }
    async fn cancel_requests(&self) -> Result<Vec<(JobId, String)>, StoreError> {
        self.inner.cancel_requests().await
    }
}
