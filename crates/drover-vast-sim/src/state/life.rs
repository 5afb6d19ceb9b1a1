//! Simulated time in the world: [`World::advance`] applies every instance's due events in
//! order (provisioning, loading, running, the faults that end or stall them, host price
//! increases taking effect or, rejected, stopping the instance, the dead-man's switch firing),
//! accrues storage and compute billing per second up to each event, and applies late creates
//! at their own moment. Every read and write of the world advances it first.

use super::{Fate, PendingIncrease, Phase, SimInstance, World};

impl World {
    /// Brings every instance and the ledger up to `now`.
    pub(crate) fn advance(&mut self, now: f64) {
        // Late creates due by now happen first, at their own moment.
        if self.late.iter().any(|(t, _, _)| *t <= now) {
            let (due, rest): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.late).into_iter().partition(|(t, _, _)| *t <= now);
            self.late = rest;
            for (t, offer_id, args) in due {
                self.fired("late_create_applied");
                let _ = self.create_now(offer_id, args, t);
            }
        }
        let ids: Vec<u64> = self.instances.keys().copied().collect();
        for id in ids {
            while let (Some(inst), Some(entry)) = (self.instances.get(&id), self.ledger.get(&id)) {
                if inst.destroyed_s.is_some() {
                    break;
                }
                match self.next_event(inst) {
                    Some(t) if t <= now => {
                        let from = entry.accrued_to_s.max(inst.created_s);
                        self.accrue(id, from, t);
                        self.apply_event(id, t);
                    }
                    _ => break,
                }
            }
            if let Some(entry) = self.ledger.get(&id)
                && entry.ended_s.is_none()
            {
                self.accrue(id, entry.accrued_to_s, now);
            }
        }
        let timing = self.timing;
        self.instances.retain(|_, i| i.destroyed_s.is_none_or(|d| now < d + timing.destroy_lag_s));
    }

    pub(super) fn next_event(&self, inst: &SimInstance) -> Option<f64> {
        let t = self.timing;
        let loading_at = inst.created_s + t.provision_s;
        let running_at = loading_at + t.loading_s;
        let increase = self
            .increases
            .iter()
            .filter(|p| p.contract_id == inst.id)
            .map(|p| p.effective_s)
            .fold(None, |acc: Option<f64>, x| Some(acc.map_or(x, |a| a.min(x))));
        let phase_event = match inst.phase {
            Phase::Provisioning => Some(loading_at),
            Phase::Loading if inst.fate != Fate::StuckLoading => Some(running_at),
            Phase::Running => inst.self_destroy_s(),
            _ => None,
        };
        match (phase_event, increase) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn apply_event(&mut self, id: u64, t: f64) {
        let timing = self.timing;
        let mut new_increase = None;
        // A price increase due now takes effect (or, rejected, stops the instance).
        let due: Vec<PendingIncrease> = {
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.increases)
                .into_iter()
                .partition(|p| p.contract_id == id && p.effective_s <= t);
            self.increases = rest;
            due
        };
        let notice = self.faults.price_notice_s.unwrap_or(timing.price_increase_after_s);
        let switch_fires = self.instances.get(&id).is_some_and(|inst| {
            inst.phase == Phase::Running && inst.self_destroy_s().is_some_and(|at| t >= at)
        });
        if switch_fires {
            self.self_destroy(id, t);
            return;
        }
        let Some(inst) = self.instances.get_mut(&id) else { return };
        for p in due {
            if p.answer == Some(false) {
                inst.stopped = true;
            } else {
                inst.compute_per_hour *= p.factor;
            }
        }
        let loading_at = inst.created_s + timing.provision_s;
        let running_at = loading_at + timing.loading_s;
        match inst.phase {
            Phase::Provisioning if t >= loading_at => {
                inst.phase =
                    if inst.fate == Fate::Ghost { Phase::Ended("offline") } else { Phase::Loading };
            }
            Phase::Loading if t >= running_at => match inst.fate {
                Fate::End(s) => inst.phase = Phase::Ended(s),
                Fate::StuckLoading => {}
                Fate::Normal | Fate::Ghost => {
                    inst.phase = Phase::Running;
                    inst.running_s = Some(t);
                    if let Some(factor) = self.faults.price_increase {
                        new_increase = Some((id, factor, t + notice));
                    }
                }
            },
            _ => {}
        }
        if let Some((contract_id, factor, effective_s)) = new_increase {
            let pid = self.next_increase;
            self.next_increase += 1;
            self.increases.push(PendingIncrease {
                id: pid,
                contract_id,
                factor,
                effective_s,
                answer: None,
            });
            self.fired("price_increase");
        }
    }

    /// Bills instance `id` from `from` to `to` at its current rates.
    pub(super) fn accrue(&mut self, id: u64, from: f64, to: f64) {
        let (Some(inst), Some(entry)) = (self.instances.get(&id), self.ledger.get_mut(&id)) else {
            return;
        };
        let secs = (to - from).max(0.0);
        if secs == 0.0 {
            entry.accrued_to_s = entry.accrued_to_s.max(to);
            return;
        }
        let computing = !inst.stopped && matches!(inst.phase, Phase::Loading | Phase::Running);
        if computing {
            entry.compute_usd += inst.compute_per_hour * secs / 3600.0;
        }
        entry.storage_usd += inst.offer.storage_per_hour(inst.disk) * secs / 3600.0;
        entry.accrued_to_s = to;
    }

    /// The dead-man's switch destroys instance `id` at `t`, as its own script would.
    pub(super) fn self_destroy(&mut self, id: u64, t: f64) {
        if let Some(inst) = self.instances.get_mut(&id) {
            inst.destroyed_s = Some(t);
        }
        if let Some(entry) = self.ledger.get_mut(&id) {
            entry.ended_s = Some(t);
            entry.accrued_to_s = entry.accrued_to_s.max(t);
        }
        self.increases.retain(|p| p.contract_id != id);
        self.sold.retain(|_, c| *c != id);
        self.stats.self_destroyed += 1;
        self.fired("deadman");
    }
}
