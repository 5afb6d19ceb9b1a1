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

pub mod fleet;
pub mod money;
mod reaper;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use drover_proto::config::GateConfig;
use drover_proto::{
    AcquireGpu, ErrorCode, GpuRequest, Lease, LeaseId, LeaseLog, LeasePhase, Pricing, WireError,
};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::estimate::{CostModel, Estimate, EstimateInputs, GB_PER_GIB};
use crate::gate::{CostGateError, Gate, GateConfigError, GateReason};
use crate::provider::Provider;
use crate::redact::bounded;
use drover_proto::api::AuditEvent;
use drover_store::{ContractRecord, LeaseRecord, ReserveLimits, Store, StoreError};

use crate::clock::rfc3339_ms;
use crate::vast::{
    CreateOutcome, CreateRequest, Instance, InstanceState, Offer, OfferQuery, VastError,
};

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

/// Why a provisioner could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The deployment id is not usable in a label.
    #[error(transparent)]
    Deployment(#[from] fleet::DeploymentIdError),
    /// No replica id could be drawn.
    #[error(transparent)]
    Replica(#[from] fleet::DeploymentError),
    /// The replica's first heartbeat could not be written.
    #[error("the replica's heartbeat could not be stored: {0}")]
    Heartbeat(#[source] StoreError),
    /// The gate configuration is invalid.
    #[error(transparent)]
    Gate(#[from] GateConfigError),
    /// The start-up reaper could not reconcile the account; nothing may be rented until it
    /// can.
    #[error("start-up reconciliation failed: {0}")]
    Reconcile(#[from] LeaseError),
}

/// Why `acquire_gpu` failed. Nothing is left billing: every instance created on the way was
/// destroyed and confirmed gone, or the lease stays open for the reaper.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The request breaks a bound (the schema should have caught it).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The cost gate refused.
    #[error(transparent)]
    Gate(#[from] CostGateError),
    /// No offer matches.
    #[error("no offer matches the request")]
    NoOffers,
    /// The provider failed.
    #[error("provider: {0}")]
    Provider(#[from] VastError),
    /// Offers were bought but none reached `running`.
    #[error("no instance could be started: {reason}")]
    NotProvisioned {
        /// The last attempt's failure.
        reason: String,
    },
    /// The instance was destroyed before the job's budget would be exceeded.
    #[error("the job's budget would be exceeded: {reason}")]
    BudgetCeiling {
        /// What was accrued against which ceiling.
        reason: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl AcquireError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::SchemaViolation,
            Self::Gate(_) | Self::BudgetCeiling { .. } => ErrorCode::CostGateRejected,
            Self::NoOffers | Self::Provider(_) | Self::NotProvisioned { .. } => {
                ErrorCode::ProviderUnavailable
            }
            Self::Store(_) => ErrorCode::Internal,
        }
    }

    /// The error as a driver receives it; the gate's numbers go in `details`.
    pub fn to_wire(&self) -> WireError {
        let message = match self {
            Self::Store(_) => "internal error".to_owned(),
            other => bounded(&other.to_string(), 1000),
        };
        WireError {
            code: self.code(),
            message,
            violations: Vec::new(),
            details: match self {
                Self::Gate(g) => Some(g.details()),
                _ => None,
            },
        }
    }
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// No such lease.
    #[error("no lease {0}")]
    Unknown(LeaseId),
    /// The lease is still being provisioned.
    #[error("lease {0} is still being provisioned")]
    Busy(LeaseId),
    /// The provider failed.
    #[error("provider: {0}")]
    Provider(#[from] VastError),
    /// An instance could not be confirmed gone before the teardown deadline; the lease stays
    /// open and the reaper keeps trying.
    #[error("instance {contract_id} could not be confirmed destroyed")]
    DestroyUnconfirmed {
        /// The instance.
        contract_id: u64,
    },
    /// Another replica, live, owns the lease; only it (or, once its heartbeat expires, the
    /// reaper) may end it.
    #[error("lease {0} is owned by another live replica")]
    OwnedElsewhere(LeaseId),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What one reaper pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReapReport {
    /// Instances listed.
    pub listed: usize,
    /// Instances destroyed (confirmed).
    pub destroyed: Vec<u64>,
    /// Leases settled.
    pub settled: Vec<LeaseId>,
    /// What could not be done (retried next pass).
    pub failures: Vec<String>,
    /// Leases taken over from a replica whose heartbeat had expired (or that had no owner).
    pub taken_over: Vec<LeaseId>,
    /// Open leases left alone because another live replica owns them.
    pub left_to_owners: Vec<LeaseId>,
    /// When the earliest owner of those stops counting as live without another heartbeat,
    /// Unix ms (store clock): the periodic reaper wakes then.
    pub next_takeover_unix_ms: Option<u64>,
    /// True when another replica held the deployment's reaper lock: nothing was done.
    pub skipped: bool,
}

enum Owner {
    Acquiring,
    Held { release: Arc<Notify>, watchdog: AbortHandle },
}

struct Inner<P, S> {
    provider: P,
    store: S,
    gate: Gate,
    cfg: ProvisionerConfig,
    /// This process's replica id (see [`fleet`]).
    replica: String,
    clock: Clock,
    owners: Mutex<HashMap<LeaseId, Owner>>,
    teardown_locks: Mutex<HashMap<LeaseId, Arc<tokio::sync::Mutex<()>>>>,
    decide: tokio::sync::Mutex<()>,
    counter: AtomicU64,
}

/// The gated provisioner. Dropping it stops its reaper and watchdogs without destroying
/// anything (as a crash would); the next start's reaper reconciles. [`Provisioner::shutdown`]
/// releases every lease first.
pub struct Provisioner<P: Provider, S: Store> {
    inner: Arc<Inner<P, S>>,
    reaper: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
}

impl<P: Provider, S: Store> std::fmt::Debug for Provisioner<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("deployment", &self.inner.cfg.deployment)
            .field("replica", &self.inner.replica)
            .finish_non_exhaustive()
    }
}

impl<P: Provider, S: Store> Drop for Provisioner<P, S> {
    fn drop(&mut self) {
        self.reaper.abort();
        self.heartbeat.abort();
        for owner in lock(&self.inner.owners).values() {
            if let Owner::Held { watchdog, .. } = owner {
                watchdog.abort();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps; a panic elsewhere leaves them consistent enough to keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The label of a lease's instances.
pub fn label_for(deployment: &str, lease_id: &LeaseId) -> String {
    format!("drover:{deployment}:{lease_id}")
}

/// The deployment and lease a label names, if it is one of drover's.
pub fn parse_label(label: &str) -> Option<(&str, &str)> {
    label.strip_prefix("drover:")?.split_once(':')
}

/// The worst of several optional prices: `None` if any is missing, NaN if any is NaN.
fn worst_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut acc: Option<f64> = None;
    for v in values {
        let v = v?;
        if v.is_nan() {
            return Some(f64::NAN);
        }
        acc = Some(acc.map_or(v, |a: f64| a.max(v)));
    }
    acc
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

/// The estimator's inputs for a set of failover candidates: the worst price of each kind
/// among them, so whichever candidate is rented, the estimate holds.
#[allow(clippy::too_many_arguments)]
fn estimate_inputs(
    candidates: &[Candidate],
    dearest: &Candidate,
    pricing: Pricing,
    disk_gb: f64,
    bandwidth_gib: f64,
    max_runtime_s: u32,
    quote_age_s: f64,
    remaining_budget_usd: f64,
) -> EstimateInputs {
    EstimateInputs {
        offer_id: dearest.offer.id,
        pricing,
        compute_usd_per_hour: worst_of(candidates.iter().map(|c| match pricing {
            Pricing::OnDemand => c.offer.dph_base,
            Pricing::Interruptible => c.bid,
        })),
        storage_usd_per_gb_month: worst_of(candidates.iter().map(|c| c.offer.storage_cost)),
        inet_up_usd_per_gb: worst_of(candidates.iter().map(|c| c.offer.inet_up_cost)),
        inet_down_usd_per_gb: worst_of(candidates.iter().map(|c| c.offer.inet_down_cost)),
        disk_gb,
        bandwidth_gb: bandwidth_gib * GB_PER_GIB,
        max_runtime_s: f64::from(max_runtime_s),
        quote_age_s,
        remaining_budget_usd,
    }
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

/// One offer to try, with the price drover will pay.
#[derive(Clone, Debug)]
struct Candidate {
    offer: Offer,
    /// The bid, for an interruptible lease.
    bid: Option<f64>,
    /// Compute plus storage, USD per hour; NaN when the offer lacks a price.
    rate: f64,
}

/// How one attempt ended.
enum Attempt {
    Running(Instance),
    /// Failed; the instance (if any) is confirmed gone; the next offer may be tried.
    Next(String),
    /// Failed in a way that forbids another create for this lease.
    Stop(String),
    /// Destroyed (confirmed) before the job's budget would be exceeded.
    Budget(String),
}

/// Creates tried again after an ambiguous create was confirmed not applied, per lease.
const MAX_AMBIGUOUS_RETRIES: u32 = 2;

impl<P: Provider, S: Store> Provisioner<P, S> {
    /// Validates the configuration, reconciles the account (the start-up reaper: every
    /// instance of this deployment that no live lease owns is destroyed, and every lease a
    /// previous run left open is settled), then starts the periodic reaper.
    pub async fn start(
        provider: P,
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
            owners: Mutex::new(HashMap::new()),
            teardown_locks: Mutex::new(HashMap::new()),
            decide: tokio::sync::Mutex::new(()),
            counter: AtomicU64::new(0),
        });
        // Live before anything is reaped or rented, so no other replica takes this one's
        // leases for dead.
        inner.beat().await.map_err(StartError::Heartbeat)?;
        let beating = Arc::clone(&inner);
        let heartbeat = tokio::spawn(async move {
            let every = Duration::from_secs_f64((beating.cfg.replica_expiry_s / 5.0).max(0.001));
            loop {
                tokio::time::sleep(every).await;
                if let Err(error) = beating.beat().await {
                    warn!(%error, replica = %beating.replica, "heartbeat not stored");
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
                    let wait_ms = at.saturating_sub(fleet::wall_ms()) + 50;
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
            let mut owners = lock(&self.inner.owners);
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
        let day = inner.clock.now_ms() / 86_400_000;
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
        let held: Vec<LeaseId> = lock(&self.inner.owners)
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
            let mut owners = lock(self.owners);
            if matches!(owners.get(&self.lease_id), Some(Owner::Acquiring)) {
                owners.remove(&self.lease_id);
            }
        }
    }
}

impl<P: Provider, S: Store> Inner<P, S> {
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

    fn new_lease_id(&self) -> LeaseId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) % 0x1_0000;
        let id = format!("l{:x}{n:04x}", self.clock.now_ms());
        // Hex digits after a letter always fit the lease-id grammar and its 64-byte bound.
        LeaseId::new(id).unwrap_or_else(|_| unreachable!("hex lease ids are valid"))
    }

    fn offer_query(&self, gpu: &GpuRequest, disk_gb: f64) -> OfferQuery {
        OfferQuery {
            gpu_names: gpu.models.clone(),
            num_gpus: u32::from(gpu.count),
            min_gpu_ram_mb: gpu.min_gpu_ram_gib.map(|g| f64::from(g) * 1000.0),
            max_dph_total: gpu.max_usd_per_hour,
            min_reliability: gpu.min_reliability,
            interruptible: gpu.pricing == Pricing::Interruptible,
            disk_gb,
            limit: self.cfg.search_limit.max(1),
        }
    }

    fn candidates(&self, offers: Vec<Offer>, pricing: Pricing, disk_gb: f64) -> Vec<Candidate> {
        let mut cands: Vec<Candidate> = offers
            .into_iter()
            .map(|offer| {
                let bid = match pricing {
                    Pricing::OnDemand => None,
                    Pricing::Interruptible => offer
                        .min_bid
                        .map(|b| (b * (1.0 + self.cfg.bid_headroom) * 1e4).ceil() / 1e4),
                };
                let compute = match pricing {
                    Pricing::OnDemand => offer.dph_base,
                    Pricing::Interruptible => bid,
                };
                let rate = match (compute, offer.storage_cost) {
                    (Some(c), Some(s)) => c + disk_gb * s / 720.0,
                    _ => f64::NAN,
                };
                Candidate { offer, bid, rate }
            })
            .collect();
        // Cheapest first; offers without a price sort last and poison the estimate if chosen.
        cands.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let Some(cheapest) = cands.first().map(|c| c.rate) else { return cands };
        let limit = usize::try_from(self.cfg.model.max_attempts).unwrap_or(1);
        let within = cheapest * (1.0 + self.cfg.failover_price_slack);
        let mut kept: Vec<Candidate> = Vec::new();
        for c in cands {
            if kept.len() >= limit {
                break;
            }
            // A NaN rate is kept: it poisons the estimate, and the gate refuses.
            if kept.is_empty() || c.rate.partial_cmp(&within) != Some(std::cmp::Ordering::Greater) {
                kept.push(c);
            }
        }
        kept
    }

    async fn acquire(
        this: &Arc<Self>,
        req: &AcquireGpu,
        ctx: &JobContext,
    ) -> Result<Lease, AcquireError> {
        validate(req, ctx)?;
        let lease_id = this.new_lease_id();
        let label = label_for(&this.cfg.deployment, &lease_id);
        // Owned before the record exists, so the reaper never mistakes it for an orphan.
        lock(&this.owners).insert(lease_id.clone(), Owner::Acquiring);
        let mut guard =
            OwnerGuard { owners: &this.owners, lease_id: lease_id.clone(), armed: true };

        let disk_gb = f64::from(req.disk_gib) * GB_PER_GIB;
        let (record, candidates, ceiling) = {
            let _decide = this.decide.lock().await;
            this.decide_and_reserve(req, ctx, &lease_id, &label, disk_gb).await?
        };
        let result = this.rent(record, &candidates, req, disk_gb, ctx, ceiling).await;
        match result {
            Ok(rec) => {
                let release = Arc::new(Notify::new());
                let watchdog = tokio::spawn(Self::watchdog(
                    Arc::clone(this),
                    lease_id.clone(),
                    Arc::clone(&release),
                    ceiling,
                ));
                lock(&this.owners).insert(
                    lease_id.clone(),
                    Owner::Held { release, watchdog: watchdog.abort_handle() },
                );
                guard.armed = false;
                Ok(this.to_lease(&rec))
            }
            Err(e) => {
                if let Err(error) =
                    this.teardown(&lease_id, &ctx.actor, &format!("acquire failed: {e}")).await
                {
                    warn!(lease = %lease_id, %error, "teardown after a failed acquire is incomplete; the reaper will finish it");
                }
                Err(e)
            }
        }
    }

    async fn decide_and_reserve(
        &self,
        req: &AcquireGpu,
        ctx: &JobContext,
        lease_id: &LeaseId,
        label: &str,
        disk_gb: f64,
    ) -> Result<(LeaseRecord, Vec<Candidate>, f64), AcquireError> {
        let gpu = &req.gpu;
        let query = self.offer_query(gpu, disk_gb);
        for _ in 0..3 {
            let offers = self.provider.search_offers(&query).await?;
            let quoted_at = self.clock.now_s();
            let candidates = self.candidates(offers, gpu.pricing, disk_gb);
            let Some(dearest) = candidates.last() else { return Err(AcquireError::NoOffers) };
            let now_ms = self.clock.now_ms();
            let day = now_ms / 86_400_000;
            let committed = self.store.committed(&req.job_id, day).await?;
            let inputs = estimate_inputs(
                &candidates,
                dearest,
                gpu.pricing,
                disk_gb,
                req.bandwidth_gib,
                req.max_runtime_s,
                self.clock.now_s() - quoted_at,
                ctx.budget_usd - committed.job_usd,
            );
            let resource = format!("lease:{lease_id}");
            let estimate = match self.gate.decide(&inputs, committed.day_usd) {
                Ok(e) => e,
                Err(rejection) => {
                    self.audit("gate.decide", &ctx.actor, resource, "rejected", json!({
                        "job": req.job_id.as_str(), "reason": rejection.reason_code(),
                        "explanation": rejection.reason.to_string(), "estimate": rejection.estimate,
                        "inputs": inputs, "floor": self.gate.floor(),
                        "day_committed_usd": committed.day_usd, "daily_cap_usd": self.gate.daily_cap_usd(),
                    })).await;
                    return Err(rejection.into());
                }
            };
            self.audit("gate.decide", &ctx.actor, resource.clone(), "allowed", json!({
                "job": req.job_id.as_str(), "estimate": &estimate, "floor": self.gate.floor(),
                "day_committed_usd": committed.day_usd, "daily_cap_usd": self.gate.daily_cap_usd(),
                "candidates": candidates.iter().map(|c| c.offer.id).collect::<Vec<_>>(),
            })).await;
            let window_s = self.cfg.model.provision_max_s + f64::from(req.max_runtime_s);
            let w = inputs.bandwidth_gb
                * inputs
                    .inet_up_usd_per_gb
                    .unwrap_or(0.0)
                    .max(inputs.inet_down_usd_per_gb.unwrap_or(0.0));
            let record = LeaseRecord {
                lease_id: lease_id.clone(),
                job_id: req.job_id.clone(),
                actor: ctx.actor.clone(),
                label: label.to_owned(),
                phase: LeasePhase::Provisioning,
                reserved_usd: estimate.worst_usd,
                day,
                granted_unix_ms: now_ms,
                deadline_unix_ms: now_ms + s_to_ms(window_s),
                pending_offer: None,
                contracts: Vec::new(),
                gpu_model: None,
                gpu_count: None,
                estimate: estimate.to_proto(),
                bandwidth_usd: w,
                settled_usd: None,
                status_message: None,
                owner_replica: Some(self.replica.clone()),
            };
            let limits = ReserveLimits {
                daily_cap_usd: self.gate.daily_cap_usd(),
                job_committed_seen_usd: committed.job_usd,
            };
            match self.store.reserve_lease(&record, limits).await {
                Ok(()) => {
                    self.audit("ledger.reserve", &ctx.actor, format!("lease:{lease_id}"), "ok", json!({
                        "job": req.job_id.as_str(), "reserved_usd": record.reserved_usd, "day": day,
                    })).await;
                    // The ceiling the lease may accrue: its reservation, or the job's
                    // remaining budget if that is less.
                    let ceiling = record.reserved_usd.min(inputs.remaining_budget_usd);
                    return Ok((record, candidates, ceiling));
                }
                Err(StoreError::Conflict) => continue,
                Err(StoreError::DailyCap { committed_usd, cap_usd }) => {
                    let rejection = CostGateError {
                        reason: GateReason::DailyCap {
                            worst_usd: estimate.worst_usd,
                            committed_usd,
                            cap_usd,
                        },
                        estimate: Some(Box::new(estimate)),
                    };
                    self.audit("ledger.reserve", &ctx.actor, format!("lease:{lease_id}"), "rejected", json!({
                        "reason": "daily_cap", "committed_usd": committed_usd, "cap_usd": cap_usd,
                    })).await;
                    return Err(rejection.into());
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    async fn rent(
        &self,
        mut rec: LeaseRecord,
        candidates: &[Candidate],
        req: &AcquireGpu,
        disk_gb: f64,
        ctx: &JobContext,
        ceiling: f64,
    ) -> Result<LeaseRecord, AcquireError> {
        let window_end = ms_to_s(rec.granted_unix_ms) + self.cfg.model.provision_max_s;
        let resource = format!("lease:{}", rec.lease_id);
        let mut last = String::from("no offer was tried");
        // Every instance carries its own end: the lease's runtime after it starts, never past
        // the lease's latest possible deadline, plus the grace.
        let grace = self.cfg.deadman_grace_s.max(0.0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let (after_s, at_s) = (
            (f64::from(req.max_runtime_s) + grace).ceil() as u64,
            (ms_to_s(rec.deadline_unix_ms) + grace).ceil() as u64,
        );
        let onstart = money::onstart_with_deadman(after_s, at_s, req.onstart.as_deref())
            .ok_or(AcquireError::Invalid("onstart leaves no room for the dead-man's switch"))?;
        let mut queue: VecDeque<&Candidate> = candidates.iter().collect();
        let mut ambiguous_retries = 0u32;
        while let Some(cand) = queue.pop_front() {
            if self.clock.now_s() >= window_end {
                last = "the provisioning window closed".into();
                break;
            }
            rec.pending_offer = Some(cand.offer.id);
            self.store.update_lease(&rec).await?;
            let create = CreateRequest {
                client_id: "me",
                image: req.image.clone(),
                disk: disk_gb,
                label: rec.label.clone(),
                onstart: Some(onstart.clone()),
                env: req.env.clone(),
                price: cand.bid,
                runtype: "ssh_direc ssh_proxy",
                cancel_unavail: true,
                target_state: "running",
            };
            let sent_ms = self.clock.now_ms();
            let outcome = self.provider.create_instance(cand.offer.id, &create).await;
            let contract = match outcome {
                CreateOutcome::Created { contract_id } => {
                    self.audit("vast.create", &ctx.actor, resource.clone(), "ok", json!({
                        "offer": cand.offer.id, "contract": contract_id, "bid": cand.bid, "rate_usd_per_hour": cand.rate,
                    })).await;
                    contract_id
                }
                CreateOutcome::CreatedWithError { contract_id, error } => {
                    // An instance exists despite the error: record it, then make it gone.
                    self.record_contract(&mut rec, contract_id, cand.offer.id, cand.rate, sent_ms)
                        .await?;
                    self.audit("vast.create", &ctx.actor, resource.clone(), "error_with_contract", json!({
                        "offer": cand.offer.id, "contract": contract_id, "error": error.to_string(),
                    })).await;
                    last = format!("create failed but left instance {contract_id}: {error}");
                    match self.end_attempt(&mut rec, contract_id, &ctx.actor).await {
                        Ok(()) => continue,
                        Err(_) => return Err(AcquireError::NotProvisioned { reason: last }),
                    }
                }
                CreateOutcome::Refused(error) if error.is_offer_gone() => {
                    self.audit(
                        "vast.create",
                        &ctx.actor,
                        resource.clone(),
                        "offer_gone",
                        json!({
                            "offer": cand.offer.id, "error": error.to_string(),
                        }),
                    )
                    .await;
                    last = error.to_string();
                    continue;
                }
                CreateOutcome::Refused(error) => {
                    self.audit(
                        "vast.create",
                        &ctx.actor,
                        resource.clone(),
                        "refused",
                        json!({
                            "offer": cand.offer.id, "error": error.to_string(),
                        }),
                    )
                    .await;
                    return Err(AcquireError::Provider(error));
                }
                CreateOutcome::Unknown(error) => {
                    self.audit(
                        "vast.create",
                        &ctx.actor,
                        resource.clone(),
                        "unknown",
                        json!({
                            "offer": cand.offer.id, "error": error.to_string(),
                        }),
                    )
                    .await;
                    // Did it happen? Look for the lease's label, for a while (a create can be
                    // applied after its answer was lost); never create blindly again.
                    match self.confirm_create(&rec.label, window_end).await {
                        Ok(found) if found.len() == 1 => found[0].id,
                        Ok(found) if found.is_empty() => {
                            self.audit(
                                "vast.create",
                                &ctx.actor,
                                resource.clone(),
                                "confirmed_absent",
                                json!({
                                    "offer": cand.offer.id, "confirm_s": self.cfg.create_confirm_s,
                                }),
                            )
                            .await;
                            last = format!(
                                "the create's outcome was unknown ({error}) and nothing carries the label"
                            );
                            if ambiguous_retries < MAX_AMBIGUOUS_RETRIES {
                                ambiguous_retries += 1;
                                queue.push_front(cand);
                            }
                            continue;
                        }
                        Ok(found) => {
                            for inst in &found {
                                self.record_contract(&mut rec, inst.id, 0, cand.rate, sent_ms)
                                    .await?;
                            }
                            return Err(AcquireError::NotProvisioned {
                                reason: format!(
                                    "the create's outcome is unknown ({error}); {} instances carry the label",
                                    found.len()
                                ),
                            });
                        }
                        Err(e) => return Err(AcquireError::Provider(e)),
                    }
                }
            };
            self.record_contract(&mut rec, contract, cand.offer.id, cand.rate, sent_ms).await?;
            match self.wait_running(&mut rec, contract, cand, window_end, ceiling).await {
                Attempt::Running(inst) => {
                    let now_ms = self.clock.now_ms();
                    let runtime_ms = u64::from(req.max_runtime_s) * 1000;
                    rec.phase = LeasePhase::Running;
                    rec.deadline_unix_ms = rec.deadline_unix_ms.min(now_ms + runtime_ms);
                    rec.gpu_model = inst.gpu_name.clone();
                    rec.gpu_count = inst.num_gpus.and_then(|n| u8::try_from(n).ok());
                    rec.status_message = inst.status_msg.as_deref().map(|m| bounded(m, 200));
                    rec.pending_offer = None;
                    self.store.update_lease(&rec).await?;
                    self.audit(
                        "lease.running",
                        &ctx.actor,
                        resource.clone(),
                        "ok",
                        json!({
                            "contract": contract, "deadline_unix_ms": rec.deadline_unix_ms,
                            "usd_per_hour": inst.dph_total,
                        }),
                    )
                    .await;
                    return Ok(rec);
                }
                Attempt::Next(reason) => {
                    last = reason;
                }
                Attempt::Stop(reason) => return Err(AcquireError::NotProvisioned { reason }),
                Attempt::Budget(reason) => return Err(AcquireError::BudgetCeiling { reason }),
            }
        }
        Err(AcquireError::NotProvisioned { reason: last })
    }

    async fn record_contract(
        &self,
        rec: &mut LeaseRecord,
        contract_id: u64,
        offer_id: u64,
        rate: f64,
        sent_ms: u64,
    ) -> Result<(), StoreError> {
        if !rec.contracts.iter().any(|c| c.contract_id == contract_id) {
            rec.contracts.push(ContractRecord {
                contract_id,
                offer_id,
                usd_per_hour: if rate.is_finite() { rate } else { 0.0 },
                created_unix_ms: sent_ms,
                gone_unix_ms: None,
            });
        }
        rec.pending_offer = None;
        self.store.update_lease(rec).await
    }

    async fn find_by_label(&self, label: &str) -> Result<Vec<Instance>, VastError> {
        self.provider.list_instances(Some(label)).await
    }

    /// After an ambiguous create: the instances carrying `label`, looked for every poll until
    /// one shows or `create_confirm_s` (or the provisioning window) has passed.
    async fn confirm_create(
        &self,
        label: &str,
        window_end: f64,
    ) -> Result<Vec<Instance>, VastError> {
        let until = (self.clock.now_s() + self.cfg.create_confirm_s).min(window_end);
        loop {
            let found = self.find_by_label(label).await?;
            if !found.is_empty() || self.clock.now_s() + self.cfg.poll_interval_s > until {
                return Ok(found);
            }
            self.clock.sleep(self.cfg.poll_interval_s).await;
        }
    }

    /// Destroys a failed attempt's instance and confirms it gone.
    async fn end_attempt(
        &self,
        rec: &mut LeaseRecord,
        contract: u64,
        actor: &str,
    ) -> Result<(), LeaseError> {
        match self.destroy_confirmed(contract, &rec.label, actor, rec.lease_id.as_str()).await {
            Ok(gone_ms) => {
                if let Some(c) = rec.contracts.iter_mut().find(|c| c.contract_id == contract) {
                    c.gone_unix_ms = Some(gone_ms);
                }
                self.store.update_lease(rec).await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn wait_running(
        &self,
        rec: &mut LeaseRecord,
        contract: u64,
        cand: &Candidate,
        window_end: f64,
        ceiling: f64,
    ) -> Attempt {
        let mut nulls = 0u32;
        let mut errors = 0u32;
        let mut over_budget = false;
        let failure = loop {
            match self.provider.show_instance(contract).await {
                Ok(Some(inst)) => {
                    nulls = 0;
                    errors = 0;
                    // Whatever the instance says it costs is what it is taken to cost, from
                    // its creation on (loading included).
                    if let Some(p) = inst.dph_total.filter(|p| p.is_finite() && *p >= 0.0)
                        && let Some(c) =
                            rec.contracts.iter_mut().find(|c| c.contract_id == contract)
                    {
                        c.usd_per_hour = c.usd_per_hour.max(p);
                    }
                    match inst.state() {
                        InstanceState::Running => {
                            let limit = cand.rate * (1.0 + self.cfg.model.rate_tolerance) + 1e-9;
                            match inst.dph_total {
                                Some(p) if p.is_finite() && p <= limit => {
                                    if let Some(c) =
                                        rec.contracts.iter_mut().find(|c| c.contract_id == contract)
                                    {
                                        c.usd_per_hour = c.usd_per_hour.max(p);
                                    }
                                    return Attempt::Running(inst);
                                }
                                other => {
                                    break format!(
                                        "instance {contract} runs at {other:?} USD/h, above the quote of {:.4} plus {}%",
                                        cand.rate,
                                        self.cfg.model.rate_tolerance * 100.0
                                    );
                                }
                            }
                        }
                        InstanceState::Terminal => {
                            break format!(
                                "instance {contract} will not run: status {:?}",
                                inst.actual_status.as_deref().unwrap_or("none")
                            );
                        }
                        InstanceState::Loading if rec.phase != LeasePhase::Loading => {
                            rec.phase = LeasePhase::Loading;
                            if let Err(error) = self.store.update_lease(rec).await {
                                warn!(%error, "lease phase not stored");
                            }
                        }
                        InstanceState::Loading | InstanceState::Provisioning => {}
                    }
                }
                // The first read of a new instance can be null; a lasting null means it is lost.
                Ok(None) => {
                    nulls += 1;
                    if nulls > 3 {
                        break format!("instance {contract} does not read back");
                    }
                }
                Err(e) if e.is_auth() => break format!("the key was refused: {e}"),
                Err(e) => {
                    errors += 1;
                    if errors > 5 {
                        break format!("instance {contract} cannot be read: {e}");
                    }
                }
            }
            let rate = rec
                .contracts
                .iter()
                .find(|c| c.contract_id == contract)
                .map_or(cand.rate, |c| c.usd_per_hour);
            let accrued = settle_cost(rec, self.clock.now_ms());
            let lookahead = self.cfg.poll_interval_s + self.cfg.model.teardown_expected_s;
            if money::over_ceiling(accrued, rate, lookahead, ceiling) {
                over_budget = true;
                break format!(
                    "instance {contract} had accrued {accrued:.6} USD of a {ceiling:.6} USD ceiling without running"
                );
            }
            if self.clock.now_s() + self.cfg.poll_interval_s > window_end {
                break format!(
                    "instance {contract} did not reach running within the provisioning window"
                );
            }
            self.clock.sleep(self.cfg.poll_interval_s).await;
        };
        warn!(lease = %rec.lease_id, contract, reason = %failure, "attempt failed");
        match self.end_attempt(rec, contract, &rec.actor.clone()).await {
            Ok(()) if over_budget => Attempt::Budget(failure),
            Ok(()) => Attempt::Next(failure),
            Err(e) => Attempt::Stop(format!("{failure}; and its destroy is unconfirmed: {e}")),
        }
    }

    /// Destroys `contract` and waits until it reads back as gone (show answers null and the
    /// label's list no longer has it), retrying with backoff until the teardown deadline.
    async fn destroy_confirmed(
        &self,
        contract: u64,
        label: &str,
        actor: &str,
        lease: &str,
    ) -> Result<u64, LeaseError> {
        let deadline = self.clock.now_s() + self.cfg.model.teardown_max_s;
        let mut pause = self.cfg.destroy_confirm_interval_s.max(0.001);
        let resource = format!("instance:{contract}");
        loop {
            match self.provider.destroy_instance(contract).await {
                Ok(d) => {
                    self.audit(
                        "vast.destroy",
                        actor,
                        resource.clone(),
                        "ok",
                        json!({
                            "lease": lease, "outcome": format!("{d:?}"),
                        }),
                    )
                    .await;
                }
                Err(e) => {
                    self.audit(
                        "vast.destroy",
                        actor,
                        resource.clone(),
                        "error",
                        json!({
                            "lease": lease, "error": e.to_string(),
                        }),
                    )
                    .await;
                    if e.is_auth() {
                        return Err(LeaseError::DestroyUnconfirmed { contract_id: contract });
                    }
                }
            }
            if let Ok(None) = self.provider.show_instance(contract).await
                && let Ok(list) = self.provider.list_instances(Some(label)).await
                && !list.iter().any(|i| i.id == contract)
            {
                return Ok(self.clock.now_ms());
            }
            if self.clock.now_s() + pause > deadline {
                warn!(contract, lease, "destroy not confirmed before the teardown deadline");
                return Err(LeaseError::DestroyUnconfirmed { contract_id: contract });
            }
            self.clock.sleep(pause).await;
            pause = (pause * 2.0).min(30.0);
        }
    }

    fn teardown_lock(&self, lease_id: &LeaseId) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.teardown_locks).entry(lease_id.clone()).or_default())
    }

    /// Destroys every instance of a lease (known ones, then any found by its label), confirms
    /// each gone, and settles. Idempotent.
    async fn teardown(
        &self,
        lease_id: &LeaseId,
        actor: &str,
        message: &str,
    ) -> Result<LeaseRecord, LeaseError> {
        let guard = self.teardown_lock(lease_id);
        let _held = guard.lock().await;
        let mut rec = self
            .store
            .get_lease(lease_id)
            .await?
            .ok_or_else(|| LeaseError::Unknown(lease_id.clone()))?;
        if !rec.is_open() {
            return Ok(rec);
        }
        let pending: Vec<u64> = rec
            .contracts
            .iter()
            .filter(|c| c.gone_unix_ms.is_none())
            .map(|c| c.contract_id)
            .collect();
        for contract in pending {
            if let Err(e) = self.end_attempt(&mut rec, contract, actor).await {
                rec.phase = LeasePhase::Failed;
                rec.status_message = Some(format!("destroy of {contract} unconfirmed; retrying"));
                if let Err(error) = self.store.update_lease(&rec).await {
                    warn!(%error, "lease state not stored");
                }
                return Err(e);
            }
        }
        // Anything else carrying the label (a create whose answer was lost) goes too.
        let stray = self.find_by_label(&rec.label).await?;
        for inst in stray {
            if rec.contracts.iter().any(|c| c.contract_id == inst.id && c.gone_unix_ms.is_some()) {
                continue;
            }
            let rate = inst.dph_total.filter(|p| p.is_finite() && *p >= 0.0).unwrap_or(0.0);
            let granted = rec.granted_unix_ms;
            self.record_contract(&mut rec, inst.id, 0, rate, granted).await?;
            self.end_attempt(&mut rec, inst.id, actor).await?;
        }
        let accrued = settle_cost(&rec, self.clock.now_ms());
        let (settled, billed) = self.settlement(&rec, accrued).await;
        let message = match billed {
            Some(_) => message.to_owned(),
            None => format!(
                "{message}; the provider's bill could not be read, so it is settled at the reserved bound"
            ),
        };
        let rec = self.store.settle_lease(lease_id, settled, &message, self.clock.now_ms()).await?;
        self.audit("ledger.settle", actor, format!("lease:{lease_id}"), "ok", json!({
            "job": rec.job_id.as_str(), "settled_usd": settled, "reserved_usd": rec.reserved_usd,
            "billed_usd": billed, "accrued_usd": accrued,
            "basis": if billed.is_some() { "bill" } else { "reserved_bound" },
            "contracts": rec.contracts.iter().map(|c| c.contract_id).collect::<Vec<_>>(), "message": message,
        })).await;
        lock(&self.teardown_locks).remove(lease_id);
        Ok(rec)
    }

    /// What a lease settles at, and what the provider billed for it (`None`: unreadable). See
    /// [`money`].
    async fn settlement(&self, rec: &LeaseRecord, accrued: f64) -> (f64, Option<f64>) {
        let Some(first_ms) = rec.contracts.iter().map(|c| c.created_unix_ms).min() else {
            return (accrued, Some(0.0));
        };
        // A day either side: the provider's clock and day boundaries are not ours.
        let (from, to) = (ms_to_s(first_ms) - 86_400.0, self.clock.now_s() + 86_400.0);
        let billed = match self.provider.instance_charges(from, to).await {
            Ok(bill) => {
                rec.contracts.iter().map(|c| bill.get(&c.contract_id).copied()).sum::<Option<f64>>()
            }
            Err(error) => {
                warn!(lease = %rec.lease_id, %error, "the provider's bill could not be read");
                None
            }
        };
        match billed {
            Some(b) => (accrued.max(b + rec.bandwidth_usd), Some(b)),
            None => (accrued.max(rec.reserved_usd), None),
        }
    }

    async fn watchdog(this: Arc<Self>, lease_id: LeaseId, release: Arc<Notify>, ceiling: f64) {
        loop {
            let rec = match this.store.get_lease(&lease_id).await {
                Ok(Some(r)) if r.is_open() && r.owner_replica.as_deref() == Some(&this.replica) => {
                    r
                }
                Ok(_) => {
                    // Settled, or taken over by another replica: no longer this one's.
                    lock(&this.owners).remove(&lease_id);
                    return;
                }
                Err(error) => {
                    warn!(lease = %lease_id, %error, "watchdog cannot read the lease");
                    this.clock.sleep(this.cfg.monitor_interval_s).await;
                    continue;
                }
            };
            let deadline = ms_to_s(rec.deadline_unix_ms);
            let now = this.clock.now_s();
            if now >= deadline {
                this.audit(
                    "lease.deadline",
                    "watchdog",
                    format!("lease:{lease_id}"),
                    "expired",
                    json!({
                        "deadline_unix_ms": rec.deadline_unix_ms,
                    }),
                )
                .await;
                this.end_by_watchdog(&lease_id, "deadline reached").await;
                return;
            }
            // Wake before the ceiling too: when the accrued cost plus a teardown would reach it.
            let rate = live_contract(&rec).map_or(0.0, |c| c.usd_per_hour);
            let room = ceiling - settle_cost(&rec, this.clock.now_ms());
            let to_ceiling = if rate > 0.0 {
                room / rate * 3600.0 - this.cfg.model.teardown_expected_s - 1.0
            } else {
                f64::INFINITY
            };
            let nap = (deadline - now).min(this.cfg.monitor_interval_s).min(to_ceiling).max(0.001);
            tokio::select! {
                () = release.notified() => return,
                () = this.clock.sleep(nap) => {}
            }
            if this.clock.now_s() < deadline && this.monitor(&rec, ceiling).await {
                return;
            }
        }
    }

    async fn end_by_watchdog(&self, lease_id: &LeaseId, why: &str) {
        lock(&self.owners).remove(lease_id);
        if let Err(error) = self.teardown(lease_id, "watchdog", why).await {
            warn!(lease = %lease_id, %error, "watchdog teardown incomplete; the reaper will finish it");
        }
    }

    /// One watchdog check. True when it ended the lease.
    async fn monitor(&self, rec: &LeaseRecord, ceiling: f64) -> bool {
        let Some(contract) = live_contract(rec).cloned() else { return false };
        let mut updated = rec.clone();
        let resource = format!("lease:{}", rec.lease_id);
        let mut end: Option<&str> = None;
        match self.provider.show_instance(contract.contract_id).await {
            Ok(Some(inst)) => {
                let phase = match inst.state() {
                    InstanceState::Running => LeasePhase::Running,
                    InstanceState::Terminal if inst.actual_status.as_deref() == Some("exited") => {
                        LeasePhase::Exited
                    }
                    InstanceState::Terminal => LeasePhase::Failed,
                    InstanceState::Loading | InstanceState::Provisioning => rec.phase,
                };
                updated.phase = phase;
                updated.status_message = inst.status_msg.as_deref().map(|m| bounded(m, 200));
                // A price change already in effect (its notice was shorter than a check):
                // it is what the instance costs from now on, and it is answered now.
                if let Some(p) = inst.dph_total.filter(|p| p.is_finite() && *p >= 0.0)
                    && p > contract.usd_per_hour + 1e-12
                {
                    let projected = self.projected(rec, p);
                    let keep = projected <= ceiling;
                    self.audit("vast.price_change", "watchdog", resource.clone(), if keep { "accepted" } else { "rejected" }, json!({
                        "contract": contract.contract_id, "old_usd_per_hour": contract.usd_per_hour,
                        "new_usd_per_hour": p, "projected_usd": projected, "ceiling_usd": ceiling,
                    })).await;
                    if let Some(c) =
                        updated.contracts.iter_mut().find(|c| c.contract_id == contract.contract_id)
                    {
                        c.usd_per_hour = p;
                    }
                    if !keep {
                        end = Some("the host raised the price beyond the job's ceiling");
                    }
                }
            }
            Ok(None) => {
                updated.phase = LeasePhase::Failed;
                updated.status_message = Some("the instance no longer reads back".into());
            }
            Err(error) => warn!(lease = %rec.lease_id, %error, "watchdog read failed"),
        }
        if end.is_none()
            && let Ok(increases) = self.provider.pending_price_increases().await
        {
            for inc in increases.iter().filter(|p| p.contract_id == contract.contract_id) {
                let storage_part =
                    (contract.usd_per_hour - inc.old_gpu_costpersec * 3600.0).max(0.0);
                let new_rate = inc.new_gpu_costpersec * 3600.0 + storage_part;
                let projected = self.projected(rec, new_rate);
                let accept = new_rate.is_finite() && projected <= ceiling;
                let answered = self.provider.answer_price_increase(inc.id, accept).await;
                self.audit(
                    "vast.price_increase",
                    "watchdog",
                    resource.clone(),
                    if accept { "accepted" } else { "rejected" },
                    json!({
                        "contract": contract.contract_id, "new_usd_per_hour": new_rate,
                        "projected_usd": projected, "reserved_usd": rec.reserved_usd,
                        "ceiling_usd": ceiling, "answered": answered.is_ok(),
                    }),
                )
                .await;
                if accept {
                    if let Some(c) =
                        updated.contracts.iter_mut().find(|c| c.contract_id == contract.contract_id)
                    {
                        c.usd_per_hour = c.usd_per_hour.max(new_rate);
                    }
                } else {
                    end = Some("the host raised the price beyond the job's ceiling");
                    break;
                }
            }
        }
        let rate = live_contract(&updated).map_or(0.0, |c| c.usd_per_hour);
        let accrued = settle_cost(&updated, self.clock.now_ms());
        if end.is_none()
            && money::over_ceiling(accrued, rate, self.cfg.model.teardown_expected_s + 1.0, ceiling)
        {
            self.audit(
                "lease.ceiling",
                "watchdog",
                resource.clone(),
                "reached",
                json!({
                    "accrued_usd": accrued, "ceiling_usd": ceiling, "usd_per_hour": rate,
                }),
            )
            .await;
            end = Some("the job's budget would be exceeded");
        }
        if updated != *rec
            && let Err(error) = self.store.update_lease(&updated).await
        {
            warn!(lease = %rec.lease_id, %error, "lease state not stored");
        }
        if let Some(why) = end {
            self.end_by_watchdog(&rec.lease_id, why).await;
            return true;
        }
        false
    }

    /// What a lease will have cost at its deadline (plus a teardown) if it bills `rate` from
    /// now on.
    fn projected(&self, rec: &LeaseRecord, rate: f64) -> f64 {
        let now_ms = self.clock.now_ms();
        let left_s =
            ms_to_s(rec.deadline_unix_ms.saturating_sub(now_ms)) + self.cfg.model.teardown_max_s;
        settle_cost(rec, now_ms)
            + rate * left_s / 3600.0
            + rec.bandwidth_usd * self.cfg.model.bandwidth_overrun_max
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

fn validate(req: &AcquireGpu, ctx: &JobContext) -> Result<(), AcquireError> {
    let limits = drover_proto::limits::GPU_COUNT;
    if req.gpu.count == 0 || u32::from(req.gpu.count) > limits {
        return Err(AcquireError::Invalid("gpu.count must be from 1 to 16"));
    }
    if req.disk_gib < 8 {
        return Err(AcquireError::Invalid("disk_gib must be at least 8"));
    }
    if req.max_runtime_s < 60 || req.max_runtime_s > drover_proto::limits::MAX_RUNTIME_S {
        return Err(AcquireError::Invalid("max_runtime_s is out of range"));
    }
    if !(req.bandwidth_gib.is_finite() && req.bandwidth_gib >= 0.0) {
        return Err(AcquireError::Invalid("bandwidth_gib must be a finite amount >= 0"));
    }
    if !(ctx.budget_usd.is_finite() && ctx.budget_usd >= 0.0) {
        return Err(AcquireError::Invalid("the job budget must be a finite amount >= 0"));
    }
    if req.image.is_empty() {
        return Err(AcquireError::Invalid("image is required"));
    }
    Ok(())
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

    #[test]
    fn worst_of_prices() {
        assert_eq!(worst_of([Some(1.0), Some(3.0)].into_iter()), Some(3.0));
        assert_eq!(worst_of([Some(1.0), None].into_iter()), None);
        assert!(worst_of([Some(1.0), Some(f64::NAN)].into_iter()).is_some_and(f64::is_nan));
    }
}
