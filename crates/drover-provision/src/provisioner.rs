//! The lease lifecycle: estimate, gate, reserve, rent with failover, watchdog, confirmed
//! destroy, settle, and the reaper.
//!
//! ```text
//! acquire ─> search ─> estimate ─> gate ──reject──> CostGateError (audited; nothing rented)
//!                                    │allow (audited)
//!                                    v
//!                     reserve worst_usd in the store (lease record written)
//!                                    v
//!        ┌──> record attempt ─> create (labelled drover:<deployment>:<lease>)
//!        │        │ contract named (even in an error) ─> recorded at once
//!        │        │ offer gone ─────────────────────────────────────────┐
//!        │        │ unknown (timeout, 502/504) ─> look up by label       │
//!        │        v                                                      │
//!        │    wait for running (provisioning window)                     │
//!        │        │ terminal / stuck / price above quote                 │
//!        │        v                                                      │
//!        └── destroy, confirmed gone (else: stop, never a 2nd instance) <┘
//!                                    │running
//!                                    v
//!               lease (running) ─> watchdog: deadline, state, price increases, ceiling
//!                                    v
//!         release / deadline ─> destroy, confirmed ─> label sweep ─> settle from the bill
//! ```
//!
//! An "unknown" create is confirmed by label for up to `create_confirm_s` (a create can be
//! applied upstream after its answer was lost): an instance found is the lease's; nothing
//! found means nothing was created, and the create is tried again (at most twice per lease).
//! The money rules (ceiling, settlement from the bill, dead-man's switch) are in [`money`].
//!
//! Invariants: at most one live instance per lease (a create waits until the previous
//! instance is confirmed gone, and stops if it cannot be); a lease is settled only after
//! every instance it had is confirmed gone; every instance of this deployment that no live
//! lease owns is destroyed by the reaper, at start-up and every `reap_interval_s`, and a lease
//! whose replica stopped beating is taken over and settled; other deployments' instances, and
//! leases of live replicas, are never touched ([`fleet`]).

mod error;
pub mod fleet;
pub mod money;
mod reaper;
mod rent;
mod teardown;
mod watchdog;

pub use error::{AcquireError, LeaseError, ReapReport, StartError};
use rent::estimate_inputs;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use drover_proto::config::GateConfig;
use drover_proto::{AcquireGpu, GpuRequest, Lease, LeaseId, LeaseLog};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::estimate::{CostModel, Estimate, GB_PER_GIB};
use crate::gate::{CostGateError, Gate};
use drover_proto::api::AuditEvent;
use drover_store::{ContractRecord, LeaseRecord, Store};
use drover_vast::VastClient;
use drover_vast::redact::bounded;

use drover_proto::text::rfc3339_ms;
use drover_vast::VastError;

/// How the provisioner behaves. Durations are clock seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct ProvisionerConfig {
    /// This deployment's id, in every instance label; the reaper touches only its own.
    /// Letters, digits, `.`, `_`, `-`; at most 64 (see [`fleet`] for the default `serve`
    /// gives it).
    pub deployment: String,
    /// How long a replica's heartbeat keeps it live, in real seconds (not clock seconds: it
    /// is judged by the store's clock); heartbeats are written every fifth of it. Default 30.
    pub replica_expiry_s: f64,
    /// The gate: confidence floor, quote age, daily cap.
    pub gate: GateConfig,
    /// The cost model (its provisioning window and teardown deadline are enforced here too).
    pub model: CostModel,
    /// Polls while waiting for an instance to run. Default 5.
    pub poll_interval_s: f64,
    /// Watchdog checks of a running lease (state, price changes, the ceiling). Default 10, so
    /// that a host's price increase with a 30-second notice is answered within it.
    pub monitor_interval_s: f64,
    /// Periodic reaper. Default 60.
    pub reap_interval_s: f64,
    /// First pause while confirming a destroy; doubles up to 30. Default 2.
    pub destroy_confirm_interval_s: f64,
    /// Failover candidates are offers within this fraction of the cheapest. Default 0.10.
    pub failover_price_slack: f64,
    /// An interruptible bid is `min_bid * (1 + bid_headroom)`. Default 0.05.
    pub bid_headroom: f64,
    /// Offers asked for per search. Default 16.
    pub search_limit: u32,
    /// How long an ambiguous create is confirmed by label before it counts as not applied.
    /// Default 60.
    pub create_confirm_s: f64,
    /// How long past its lease's hard deadline an instance's own dead-man's switch waits
    /// before ending it. Default 60.
    pub deadman_grace_s: f64,
    /// Where gate decisions are counted (see [`crate::metrics`]). Default: counted for nobody.
    pub metrics: crate::ProvisionMetrics,
}

impl ProvisionerConfig {
    /// Defaults for a deployment.
    pub fn new(deployment: impl Into<String>) -> Self {
        Self {
            deployment: deployment.into(),
            replica_expiry_s: 30.0,
            gate: GateConfig::default(),
            model: CostModel::default(),
            poll_interval_s: 5.0,
            monitor_interval_s: 10.0,
            reap_interval_s: 60.0,
            destroy_confirm_interval_s: 2.0,
            failover_price_slack: 0.10,
            bid_headroom: 0.05,
            search_limit: 16,
            create_confirm_s: 60.0,
            deadman_grace_s: 60.0,
            metrics: crate::ProvisionMetrics::default(),
        }
    }
}

/// Who is asking, and how much the job may spend.
#[derive(Clone, Debug, PartialEq)]
pub struct JobContext {
    /// The job's whole budget, USD; what its earlier leases committed is subtracted.
    pub budget_usd: f64,
    /// The actor for audit events (a driver or token name, never a credential).
    pub actor: String,
}

enum Owner {
    Acquiring,
    Held { release: Arc<Notify>, watchdog: AbortHandle },
}

struct Inner<S> {
    provider: VastClient,
    store: S,
    gate: Gate,
    cfg: ProvisionerConfig,
    /// This process's replica id (see [`fleet`]).
    replica: String,
    clock: Clock,
    /// How far the store's clock is ahead of this host's, ms (see [`fleet`]).
    store_offset_ms: AtomicI64,
    owners: Mutex<HashMap<LeaseId, Owner>>,
    teardown_locks: Mutex<HashMap<LeaseId, Arc<tokio::sync::Mutex<()>>>>,
    decide: tokio::sync::Mutex<()>,
    /// Offers an acquire of this replica is trying now: later decisions leave them out, so
    /// concurrent rentals of one replica do not all race for the same cheapest offers.
    trying: Mutex<std::collections::HashSet<u64>>,
    counter: AtomicU64,
}

/// The gated provisioner. Dropping it stops its reaper and watchdogs without destroying
/// anything (as a crash would); the next start's reaper reconciles. [`Provisioner::shutdown`]
/// releases every lease first.
pub struct Provisioner<S: Store> {
    inner: Arc<Inner<S>>,
    reaper: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
}

impl<S: Store> std::fmt::Debug for Provisioner<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("deployment", &self.inner.cfg.deployment)
            .field("replica", &self.inner.replica)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Drop for Provisioner<S> {
    fn drop(&mut self) {
        self.reaper.abort();
        self.heartbeat.abort();
        for owner in self.inner.owners.lock().values() {
            if let Owner::Held { watchdog, .. } = owner {
                watchdog.abort();
            }
        }
    }
}

/// The label of a lease's instances.
pub fn label_for(deployment: &str, lease_id: &LeaseId) -> String {
    format!("drover:{deployment}:{lease_id}")
}

/// The deployment and lease a label names, if it is one of drover's.
pub fn parse_label(label: &str) -> Option<(&str, &str)> {
    label.strip_prefix("drover:")?.split_once(':')
}

fn ms_to_s(ms: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let s = ms as f64 / 1000.0;
    s
}

fn s_to_ms(s: f64) -> u64 {
    // Durations here are bounded by the runtime cap (days); the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = (s.max(0.0) * 1000.0).round() as u64;
    ms
}

/// What a dry run decided: the gate's answer for a rental that is never made.
#[derive(Debug)]
pub struct DryRun {
    /// The estimate the gate allowed, or its refusal (which carries the estimate when one was
    /// made).
    pub decision: Result<Estimate, CostGateError>,
    /// The offer the estimate priced (the dearest failover candidate): GPU model, GPU count,
    /// compute plus storage in USD per hour.
    pub offer: Option<(String, u32, f64)>,
    /// The confidence floor.
    pub floor: f64,
}

impl<S: Store> Provisioner<S> {
    /// Validates the configuration, reconciles the account (the start-up reaper: every
    /// instance of this deployment that no live lease owns is destroyed, and every lease a
    /// previous run left open is settled), then starts the periodic reaper.
    pub async fn start(
        provider: VastClient,
        store: S,
        cfg: ProvisionerConfig,
        clock: Clock,
    ) -> Result<Self, StartError> {
        fleet::valid_deployment(&cfg.deployment)?;
        let gate = Gate::new(&cfg.gate, cfg.model)?;
        let replica = fleet::new_replica_id()?;
        let inner = Arc::new(Inner {
            provider,
            store,
            gate,
            cfg,
            replica,
            clock,
            store_offset_ms: AtomicI64::new(0),
            owners: Mutex::new(HashMap::new()),
            teardown_locks: Mutex::new(HashMap::new()),
            decide: tokio::sync::Mutex::new(()),
            trying: Mutex::new(std::collections::HashSet::new()),
            counter: AtomicU64::new(0),
        });
        // Live before anything is reaped or rented, so no other replica takes this one's
        // leases for dead.
        inner.beat().await.map_err(StartError::Heartbeat)?;
        inner.sync_clock().await.map_err(StartError::StoreClock)?;
        let beating = Arc::clone(&inner);
        let heartbeat = tokio::spawn(async move {
            let every = Duration::from_secs_f64((beating.cfg.replica_expiry_s / 5.0).max(0.001));
            loop {
                tokio::time::sleep(every).await;
                if let Err(error) = beating.beat().await {
                    warn!(%error, replica = %beating.replica, "heartbeat not stored");
                } else if let Err(error) = beating.sync_clock().await {
                    warn!(%error, "the store's clock was not read; the last offset stays");
                }
            }
        });
        let report = match Inner::reap_once(&inner).await {
            Ok(report) => report,
            Err(error) => {
                heartbeat.abort();
                return Err(error.into());
            }
        };
        if !report.failures.is_empty() {
            heartbeat.abort();
            return Err(StartError::Reconcile(LeaseError::Provider(VastError::Config {
                reason: format!(
                    "{} instances or leases could not be reconciled",
                    report.failures.len()
                ),
            })));
        }
        info!(deployment = %inner.cfg.deployment, replica = %inner.replica, destroyed = report.destroyed.len(), settled = report.settled.len(), left_to_owners = report.left_to_owners.len(), "provisioner started");
        let periodic = Arc::clone(&inner);
        let reaper = tokio::spawn(async move {
            let mut next_takeover = report.next_takeover_unix_ms;
            loop {
                // Every `reap_interval_s`, and as soon as a live owner's heartbeat would
                // expire (real time: it is judged by the store's clock).
                let mut nap = periodic.clock.real(periodic.cfg.reap_interval_s);
                if let Some(at) = next_takeover {
                    let wait_ms = at.saturating_sub(periodic.store_now_ms()) + 50;
                    nap = nap.min(Duration::from_millis(wait_ms));
                }
                tokio::time::sleep(nap).await;
                next_takeover = None;
                match Inner::reap_once(&periodic).await {
                    Ok(r) => {
                        next_takeover = r.next_takeover_unix_ms;
                        if !r.destroyed.is_empty() || !r.settled.is_empty() {
                            info!(destroyed = ?r.destroyed, settled = ?r.settled, taken_over = ?r.taken_over, "reaper pass");
                        }
                    }
                    Err(error) => {
                        warn!(%error, "reaper pass failed; nothing was destroyed on partial data")
                    }
                }
            }
        });
        Ok(Self { inner, reaper, heartbeat })
    }

    /// This deployment's id.
    pub fn deployment(&self) -> &str {
        &self.inner.cfg.deployment
    }

    /// This process's replica id.
    pub fn replica_id(&self) -> &str {
        &self.inner.replica
    }

    /// Stops the heartbeat and the periodic reaper and removes this replica from the store,
    /// so that anything it still owns is taken over by another replica's reaper at once
    /// rather than after `replica_expiry_s`. Call it last at a clean shutdown, after the
    /// releases.
    pub async fn retire(&self) {
        self.reaper.abort();
        self.heartbeat.abort();
        if let Err(error) = self.inner.store.retire_replica(&self.inner.replica).await {
            warn!(%error, "the replica's row was not removed; it expires by itself");
        }
    }

    /// Rents GPUs for a job, or refuses. Returns once the instance runs.
    pub async fn acquire(&self, req: &AcquireGpu, ctx: &JobContext) -> Result<Lease, AcquireError> {
        Inner::acquire(&self.inner, req, ctx).await
    }

    /// A lease's state.
    pub async fn status(&self, lease_id: &LeaseId) -> Result<Lease, LeaseError> {
        let rec = self
            .inner
            .store
            .get_lease(lease_id)
            .await?
            .ok_or_else(|| LeaseError::Unknown(lease_id.clone()))?;
        Ok(self.inner.to_lease(&rec))
    }

    /// Releases a lease: destroy, confirm, settle. Releasing twice is harmless.
    pub async fn release(&self, lease_id: &LeaseId, actor: &str) -> Result<Lease, LeaseError> {
        let held = {
            let mut owners = self.inner.owners.lock();
            match owners.get(lease_id) {
                Some(Owner::Acquiring) => return Err(LeaseError::Busy(lease_id.clone())),
                Some(Owner::Held { .. }) => owners.remove(lease_id),
                None => None,
            }
        };
        if let Some(Owner::Held { watchdog, release }) = held {
            watchdog.abort();
            release.notify_waiters();
        } else {
            self.inner.claim_for_release(lease_id).await?;
        }
        let rec = self.inner.teardown(lease_id, actor, "released").await?;
        Ok(self.inner.to_lease(&rec))
    }

    /// The last `tail` lines of a lease's instance log.
    pub async fn logs(&self, lease_id: &LeaseId, tail: u32) -> Result<LeaseLog, LeaseError> {
        let rec = self
            .inner
            .store
            .get_lease(lease_id)
            .await?
            .ok_or_else(|| LeaseError::Unknown(lease_id.clone()))?;
        let Some(c) = live_contract(&rec) else {
            return Ok(LeaseLog {
                lease_id: lease_id.clone(),
                lines: Vec::new(),
                truncated: false,
            });
        };
        let text = self.inner.provider.instance_logs(c.contract_id, tail).await?;
        let all: Vec<&str> = text.lines().collect();
        let keep = usize::try_from(tail).unwrap_or(usize::MAX).min(all.len());
        let max_line = usize::try_from(drover_proto::limits::LOG_LINE_LEN).unwrap_or(16384);
        let lines = all[all.len() - keep..].iter().map(|l| bounded(l, max_line)).collect();
        Ok(LeaseLog { lease_id: lease_id.clone(), lines, truncated: keep < all.len() })
    }

    /// A dry run of `acquire`'s decision: a fresh quote, the estimate and the gate, exactly
    /// as a rental would be judged (with `budget_usd` as the remaining budget and today's
    /// committed spend), but nothing is reserved and nothing is rented. Audited as
    /// `gate.estimate`. Errors are what `acquire` would fail with before deciding (no
    /// offers, the provider unreachable, the store).
    pub async fn dry_run(
        &self,
        gpu: &GpuRequest,
        max_runtime_s: u32,
        disk_gib: u32,
        bandwidth_gib: f64,
        budget_usd: f64,
        actor: &str,
    ) -> Result<DryRun, AcquireError> {
        let inner = &self.inner;
        let disk_gb = f64::from(disk_gib) * GB_PER_GIB;
        let offers = inner.provider.search_offers(&inner.offer_query(gpu, disk_gb)).await?;
        let quoted_at = inner.clock.now_s();
        let candidates = inner.candidates(offers, gpu.pricing, disk_gb);
        let Some(dearest) = candidates.last() else { return Err(AcquireError::NoOffers) };
        let day = inner.budget_day();
        // Only today's total is used; the job part of the answer is ignored.
        let nobody = drover_proto::JobId::new("dry-run").map_err(|_| AcquireError::NoOffers)?;
        let day_usd = inner.store.committed(&nobody, day).await?.day_usd;
        let inputs = estimate_inputs(
            &candidates,
            dearest,
            gpu.pricing,
            disk_gb,
            bandwidth_gib,
            max_runtime_s,
            inner.clock.now_s() - quoted_at,
            budget_usd,
        );
        let decision = inner.gate.decide(&inputs, day_usd);
        inner.cfg.metrics.gate_decision(crate::GatePurpose::Estimate, decision.as_ref().err());
        let (result, reason) = match &decision {
            Ok(_) => ("allowed", Value::Null),
            Err(rejection) => ("rejected", Value::from(rejection.reason_code())),
        };
        inner
            .audit(
                "gate.estimate",
                actor,
                "estimate".to_owned(),
                result,
                json!({
                    "reason": reason, "inputs": inputs, "floor": inner.gate.floor(),
                    "day_committed_usd": day_usd, "daily_cap_usd": inner.gate.daily_cap_usd(),
                }),
            )
            .await;
        let offer = Some((dearest.offer.gpu_name.clone(), dearest.offer.num_gpus, dearest.rate));
        Ok(DryRun { decision, offer, floor: inner.gate.floor() })
    }

    /// Audits a lease request refused before it reached the provisioner (by the supervisor:
    /// a driver asking outside its job's GPU request), as `lease.refused`.
    pub async fn audit_refusal(
        &self,
        actor: &str,
        job: &drover_proto::JobId,
        code: &str,
        field: Value,
        message: &str,
    ) {
        let metadata =
            json!({"job": job.as_str(), "field": field, "message": bounded(message, 500)});
        self.inner.audit("lease.refused", actor, format!("job:{job}"), code, metadata).await;
    }

    /// One reaper pass, now.
    pub async fn reap_once(&self) -> Result<ReapReport, LeaseError> {
        Inner::reap_once(&self.inner).await
    }

    /// Releases every held lease, then stops.
    pub async fn shutdown(self) {
        let held: Vec<LeaseId> = self
            .inner
            .owners
            .lock()
            .iter()
            .filter(|(_, o)| matches!(o, Owner::Held { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for id in held {
            if let Err(error) = self.release(&id, "shutdown").await {
                warn!(lease = %id, %error, "release at shutdown failed; the next start reconciles it");
            }
        }
        self.retire().await;
    }
}

/// Removes the `Acquiring` mark when an acquire ends, however it ends (a dropped future
/// included), so the reaper takes over anything left open.
struct OwnerGuard<'a> {
    owners: &'a Mutex<HashMap<LeaseId, Owner>>,
    lease_id: LeaseId,
    armed: bool,
}

impl Drop for OwnerGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut owners = self.owners.lock();
            if matches!(owners.get(&self.lease_id), Some(Owner::Acquiring)) {
                owners.remove(&self.lease_id);
            }
        }
    }
}

impl<S: Store> Inner<S> {
    async fn audit(
        &self,
        action: &str,
        actor: &str,
        resource: String,
        result: &str,
        metadata: Value,
    ) {
        let metadata = match metadata {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let shown = Value::Object(metadata.clone());
        info!(target: "drover_provision::audit", action, actor, %resource, result, metadata = %shown, "audit");
        let event = AuditEvent {
            timestamp: rfc3339_ms(self.clock.now_ms()),
            request_id: None,
            actor: bounded(actor, 64),
            action: action.to_owned(),
            resource: bounded(&resource, 256),
            result: result.to_owned(),
            metadata,
        };
        if let Err(error) = self.store.append_audit(&event).await {
            warn!(%error, action, "audit event could not be stored");
        }
    }

    fn to_lease(&self, rec: &LeaseRecord) -> Lease {
        let now_ms = self.clock.now_ms();
        let cost =
            if rec.is_open() { settle_cost(rec, now_ms) } else { rec.settled_usd.unwrap_or(0.0) };
        Lease {
            lease_id: rec.lease_id.clone(),
            job_id: rec.job_id.clone(),
            state: rec.phase,
            deadline_unix_ms: rec.deadline_unix_ms.max(1),
            gpu_model: rec.gpu_model.clone(),
            gpu_count: rec.gpu_count,
            usd_per_hour: live_contract(rec).map(|c| c.usd_per_hour),
            estimate: Some(rec.estimate.clone()),
            cost_usd: Some(cost.clamp(0.0, drover_proto::limits::MAX_USD)),
            status_message: rec.status_message.as_deref().map(|m| bounded(m, 1000)),
        }
    }

    /// `l`, the time, a counter and 32 random bits, in hex: unique across the replicas of a
    /// fleet too (two replicas minting ids in the same millisecond with the same counter value
    /// collided in the store when the id was time and counter alone).
    fn new_lease_id(&self) -> LeaseId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) % 0x1_0000;
        let mut salt = [0u8; 4];
        // Without the OS's randomness the counter still keeps this replica's ids apart.
        let _ = getrandom::fill(&mut salt);
        let salt = u32::from_be_bytes(salt);
        let id = format!("l{:x}{n:04x}{salt:08x}", self.clock.now_ms());
        // Hex digits after a letter always fit the lease-id grammar and its 64-byte bound.
        LeaseId::new(id).unwrap_or_else(|_| unreachable!("hex lease ids are valid"))
    }
}

/// The instance in use: the last contract not confirmed gone.
pub fn live_contract(rec: &LeaseRecord) -> Option<&ContractRecord> {
    rec.contracts.iter().rev().find(|c| c.gone_unix_ms.is_none())
}

/// The settled cost: each instance's highest seen rate over its life (create sent to destroy
/// confirmed, or to `now_ms` while it may exist), plus the declared bandwidth. It is an upper
/// bound of what the provider bills for the lease's instances.
fn settle_cost(rec: &LeaseRecord, now_ms: u64) -> f64 {
    let time: f64 = rec
        .contracts
        .iter()
        .map(|c| {
            let end = c.gone_unix_ms.unwrap_or(now_ms).max(c.created_unix_ms);
            c.usd_per_hour * ms_to_s(end - c.created_unix_ms) / 3600.0
        })
        .sum();
    time + rec.bandwidth_usd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let l = LeaseId::new("l18c2").unwrap();
        let label = label_for("prod-1", &l);
        assert_eq!(label, "drover:prod-1:l18c2");
        assert_eq!(parse_label(&label), Some(("prod-1", "l18c2")));
        assert_eq!(parse_label("gp-job-42"), None);
    }
}
