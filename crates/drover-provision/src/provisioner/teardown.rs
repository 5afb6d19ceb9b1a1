//! Ending a lease: destroy each instance and confirm it gone, sweep its label, settle from
//! the provider's bill (the rules are in [`super::money`]).

use std::sync::Arc;

use drover_proto::{LeaseId, LeasePhase};
use drover_store::{LeaseRecord, MICROS_PER_USD, Store};
use serde_json::json;
use tracing::warn;

use super::{Inner, LeaseError, ms_to_s, settle_cost};
use drover_vast::Billed;

impl<S: Store> Inner<S> {
    /// Destroys a failed attempt's instance and confirms it gone.
    pub(super) async fn end_attempt(
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

    /// Destroys `contract` and waits until it reads back as gone (show answers null and the
    /// label's list no longer has it), retrying with backoff until the teardown deadline.
    /// Returns when the instance stopped billing: when the first destroy that the provider
    /// accepted was sent (the provider ends the bill there, however long it then takes to stop
    /// listing the instance), else when it was confirmed gone.
    pub(super) async fn destroy_confirmed(
        &self,
        contract: u64,
        label: &str,
        actor: &str,
        lease: &str,
    ) -> Result<u64, LeaseError> {
        let deadline = self.clock.now_s() + self.cfg.model.teardown_max_s;
        let mut pause = self.cfg.destroy_confirm_interval_s.max(0.001);
        let resource = format!("instance:{contract}");
        let mut accepted_at = None;
        loop {
            let sent_ms = self.clock.now_ms();
            match self.provider.destroy_instance(contract).await {
                Ok(d) => {
                    if d == drover_vast::Destroyed::Accepted {
                        accepted_at.get_or_insert(sent_ms);
                    }
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
                return Ok(accepted_at.unwrap_or_else(|| self.clock.now_ms()));
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
        Arc::clone(self.teardown_locks.lock().entry(lease_id.clone()).or_default())
    }

    /// Destroys every instance of a lease (known ones, then any found by its label), confirms
    /// each gone, and settles. Idempotent.
    pub(super) async fn teardown(
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
        let settlement = self.settlement(&rec, accrued).await;
        let message = match settlement.basis {
            Basis::ReservedBound => format!(
                "{message}; the provider's bill could not be read, so it is settled at the reserved bound"
            ),
            Basis::Bill | Basis::Accrued => message.to_owned(),
        };
        let settled = settlement.usd;
        let rec = self.store.settle_lease(lease_id, settled, &message, self.clock.now_ms()).await?;
        self.audit("ledger.settle", actor, format!("lease:{lease_id}"), "ok", json!({
            "job": rec.job_id.as_str(), "settled_usd": settled, "reserved_usd": rec.reserved_usd,
            "billed_usd": settlement.billed, "accrued_usd": accrued, "basis": settlement.basis.as_str(),
            "contracts": rec.contracts.iter().map(|c| c.contract_id).collect::<Vec<_>>(), "message": message,
        })).await;
        self.teardown_locks.lock().remove(lease_id);
        Ok(rec)
    }

    /// What a lease settles at (see [`money`](super::money)).
    async fn settlement(&self, rec: &LeaseRecord, accrued: f64) -> Settlement {
        let Some(first_ms) = rec.contracts.iter().map(|c| c.created_unix_ms).min() else {
            return Settlement {
                usd: round_up_to_micros(accrued),
                billed: Some(0.0),
                basis: Basis::Bill,
            };
        };
        // A day either side: the provider's clock and day boundaries are not ours.
        let (from, to) = (ms_to_s(first_ms) - 86_400.0, self.clock.now_s() + 86_400.0);
        let bill = match self.provider.instance_charges(from, to).await {
            Ok(bill) => bill,
            Err(error) => {
                warn!(lease = %rec.lease_id, %error, "the provider's bill could not be read");
                return Settlement {
                    usd: round_up_to_micros(accrued.max(rec.reserved_usd)),
                    billed: None,
                    basis: Basis::ReservedBound,
                };
            }
        };
        let charges: Option<Vec<(Billed, Option<u64>)>> = rec
            .contracts
            .iter()
            .map(|c| bill.get(&c.contract_id).map(|b| (*b, c.gone_unix_ms)))
            .collect();
        let Some(charges) = charges else {
            return Settlement {
                usd: round_up_to_micros(accrued.max(rec.reserved_usd)),
                billed: None,
                basis: Basis::ReservedBound,
            };
        };
        let billed: f64 = charges.iter().map(|(b, _)| b.usd).sum();
        let whole = charges.iter().all(|(b, gone)| match (b.through_s, gone) {
            (Some(through), Some(gone_ms)) => through >= ms_to_s(*gone_ms),
            _ => false,
        });
        let (usd, basis) = if whole {
            (billed + rec.bandwidth_usd, Basis::Bill)
        } else {
            (accrued.max(billed + rec.bandwidth_usd), Basis::Accrued)
        };
        Settlement { usd: round_up_to_micros(usd), billed: Some(billed), basis }
    }
}

/// A lease's settlement.
struct Settlement {
    /// What it settles at, USD.
    usd: f64,
    /// What the provider billed for its instances (`None`: unreadable).
    billed: Option<f64>,
    basis: Basis,
}

/// What a settlement was measured by (see [`money`](super::money)).
#[derive(Clone, Copy)]
enum Basis {
    /// The provider's whole bill.
    Bill,
    /// The accrued cost: the bill did not yet reach the instances' ends.
    Accrued,
    /// The reserved bound: the bill could not be read.
    ReservedBound,
}

impl Basis {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bill => "bill",
            Self::Accrued => "accrued",
            Self::ReservedBound => "reserved_bound",
        }
    }
}

/// `usd` rounded up to the store's unit, the micro-dollar, so that storing it never settles a
/// lease below what was billed.
fn round_up_to_micros(usd: f64) -> f64 {
    (usd * MICROS_PER_USD).ceil() / MICROS_PER_USD
}
