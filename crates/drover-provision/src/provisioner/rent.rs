//! Renting: the gate's decision and the reservation, then creates with failover until an
//! instance runs (the lifecycle diagram is in [`super`]).

use std::collections::VecDeque;
use std::sync::Arc;

use drover_proto::{AcquireGpu, GpuRequest, Lease, LeaseId, LeasePhase, Pricing};
use drover_store::{ContractRecord, LeaseRecord, ReserveLimits, Store, StoreError};
use serde_json::json;
use tokio::sync::Notify;
use tracing::warn;

use super::{
    AcquireError, Inner, JobContext, Owner, OwnerGuard, label_for, money, ms_to_s, s_to_ms,
    settle_cost,
};
use crate::estimate::{EstimateInputs, GB_PER_GIB};
use crate::gate::{CostGateError, GateReason};
use drover_vast::redact::bounded;
use drover_vast::{
    CreateOutcome, CreateRequest, Instance, InstanceState, Offer, OfferQuery, VastError,
};

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

/// The estimator's inputs for a set of failover candidates: the worst price of each kind
/// among them, so whichever candidate is rented, the estimate holds.
#[allow(clippy::too_many_arguments)]
pub(super) fn estimate_inputs(
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

/// One offer to try, with the price drover will pay.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub(super) offer: Offer,
    /// The bid, for an interruptible lease.
    pub(super) bid: Option<f64>,
    /// Compute plus storage, USD per hour; NaN when the offer lacks a price.
    pub(super) rate: f64,
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

/// The offers one acquire is trying, given back however the acquire ends (a dropped future
/// included).
struct Trying<'a> {
    set: &'a parking_lot::Mutex<std::collections::HashSet<u64>>,
    offers: Vec<u64>,
}

impl Drop for Trying<'_> {
    fn drop(&mut self) {
        let mut set = self.set.lock();
        for id in &self.offers {
            set.remove(id);
        }
    }
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

impl<S: Store> Inner<S> {
    pub(super) fn offer_query(&self, gpu: &GpuRequest, disk_gb: f64) -> OfferQuery {
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

    pub(super) fn candidates(
        &self,
        offers: Vec<Offer>,
        pricing: Pricing,
        disk_gb: f64,
    ) -> Vec<Candidate> {
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

    pub(super) async fn acquire(
        this: &Arc<Self>,
        req: &AcquireGpu,
        ctx: &JobContext,
    ) -> Result<Lease, AcquireError> {
        validate(req, ctx)?;
        let lease_id = this.new_lease_id();
        let label = label_for(&this.cfg.deployment, &lease_id);
        // Owned before the record exists, so the reaper never mistakes it for an orphan.
        this.owners.lock().insert(lease_id.clone(), Owner::Acquiring);
        let mut guard =
            OwnerGuard { owners: &this.owners, lease_id: lease_id.clone(), armed: true };

        let disk_gb = f64::from(req.disk_gib) * GB_PER_GIB;
        let (record, candidates, ceiling) = {
            let _decide = this.decide.lock().await;
            this.decide_and_reserve(req, ctx, &lease_id, &label, disk_gb).await?
        };
        let _trying =
            Trying { set: &this.trying, offers: candidates.iter().map(|c| c.offer.id).collect() };
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
                this.owners.lock().insert(
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
            let mut offers = self.provider.search_offers(&query).await?;
            // Offers another acquire of this replica is trying are left to it (all of them
            // when nothing else is on offer: a race lost is then answered as before).
            {
                let trying = self.trying.lock();
                if offers.iter().any(|o| !trying.contains(&o.id)) {
                    offers.retain(|o| !trying.contains(&o.id));
                }
            }
            let quoted_at = self.clock.now_s();
            let candidates = self.candidates(offers, gpu.pricing, disk_gb);
            let Some(dearest) = candidates.last() else { return Err(AcquireError::NoOffers) };
            // Today is the store's day, and lease times the store's clock (see `fleet`).
            let now_ms = self.lease_now_ms();
            let day = self.budget_day();
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
            let decision = self.gate.decide(&inputs, committed.day_usd);
            self.cfg.metrics.gate_decision(crate::GatePurpose::Rental, decision.as_ref().err());
            let estimate = match decision {
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
                    self.trying.lock().extend(candidates.iter().map(|c| c.offer.id));
                    return Ok((record, candidates, ceiling));
                }
                Err(StoreError::Conflict) => continue,
                Err(StoreError::NotToday { day, today }) => {
                    // This replica's idea of the store's clock is off (or the day just
                    // turned): measure again, and decide again on the store's day.
                    warn!(day, today, "the store's day differs; re-reading its clock");
                    self.sync_clock().await?;
                    continue;
                }
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
            (self.lease_time_here_s(rec.deadline_unix_ms) + grace).ceil() as u64,
        );
        let onstart = money::onstart_with_deadman(after_s, at_s, req.onstart.as_deref())
            .ok_or(AcquireError::Invalid("onstart leaves no room for the dead-man's switch"))?;
        let mut queue: VecDeque<&Candidate> = candidates.iter().collect();
        let mut ambiguous_retries = 0u32;
        while let Some(cand) = queue.pop_front() {
            if self.lease_now_s() >= window_end {
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
                    let now_ms = self.lease_now_ms();
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

    pub(super) async fn record_contract(
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

    pub(super) async fn find_by_label(&self, label: &str) -> Result<Vec<Instance>, VastError> {
        self.provider.list_instances(Some(label)).await
    }

    /// After an ambiguous create: the instances carrying `label`, looked for every poll until
    /// one shows or `create_confirm_s` (or the provisioning window) has passed.
    async fn confirm_create(
        &self,
        label: &str,
        window_end: f64,
    ) -> Result<Vec<Instance>, VastError> {
        let until = (self.lease_now_s() + self.cfg.create_confirm_s).min(window_end);
        loop {
            let found = self.find_by_label(label).await?;
            if !found.is_empty() || self.lease_now_s() + self.cfg.poll_interval_s > until {
                return Ok(found);
            }
            self.clock.sleep(self.cfg.poll_interval_s).await;
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
            if self.lease_now_s() + self.cfg.poll_interval_s > window_end {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_of_prices() {
        assert_eq!(worst_of([Some(1.0), Some(3.0)].into_iter()), Some(3.0));
        assert_eq!(worst_of([Some(1.0), None].into_iter()), None);
        assert!(worst_of([Some(1.0), Some(f64::NAN)].into_iter()).is_some_and(f64::is_nan));
    }
}
