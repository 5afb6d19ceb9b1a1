//! The watchdog of a running lease: its hard deadline, the instance's state, host price
//! changes, and the budget ceiling.

use std::sync::Arc;

use drover_proto::{LeaseId, LeasePhase};
use drover_store::{LeaseRecord, Store};
use serde_json::json;
use tokio::sync::Notify;
use tracing::warn;

use super::{Inner, live_contract, money, ms_to_s, settle_cost};
use drover_vast::InstanceState;
use drover_vast::redact::bounded;

impl<S: Store> Inner<S> {
    pub(super) async fn watchdog(
        this: Arc<Self>,
        lease_id: LeaseId,
        release: Arc<Notify>,
        ceiling: f64,
    ) {
        loop {
            let rec = match this.store.get_lease(&lease_id).await {
                Ok(Some(r)) if r.is_open() && r.owner_replica.as_deref() == Some(&this.replica) => {
                    r
                }
                Ok(_) => {
                    // Settled, or taken over by another replica: no longer this one's.
                    this.owners.lock().remove(&lease_id);
                    return;
                }
                Err(error) => {
                    warn!(lease = %lease_id, %error, "watchdog cannot read the lease");
                    this.clock.sleep(this.cfg.monitor_interval_s).await;
                    continue;
                }
            };
            let deadline = ms_to_s(rec.deadline_unix_ms);
            let now = this.lease_now_s();
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
            if this.lease_now_s() < deadline && this.monitor(&rec, ceiling).await {
                return;
            }
        }
    }

    async fn end_by_watchdog(&self, lease_id: &LeaseId, why: &str) {
        self.owners.lock().remove(lease_id);
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
        let left_s = ms_to_s(rec.deadline_unix_ms.saturating_sub(self.lease_now_ms()))
            + self.cfg.model.teardown_max_s;
        settle_cost(rec, now_ms)
            + rate * left_s / 3600.0
            + rec.bandwidth_usd * self.cfg.model.bandwidth_overrun_max
    }
}
