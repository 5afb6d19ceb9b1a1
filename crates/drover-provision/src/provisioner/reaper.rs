//! The reaper: one pass destroys every orphan of this deployment and settles every lease no
//! live replica owns. The ownership rules are in [`super::fleet`].

use std::sync::Arc;

use drover_proto::LeaseId;
use drover_store::{LeaseRecord, Store};
use serde_json::json;
use tracing::warn;

use super::{Inner, LeaseError, Owner, ReapReport, live_contract, parse_label};

/// How long after its heartbeat expired a replica's row is forgotten (by the next pass).
pub(super) const PRUNE_AFTER_MS: u64 = 3_600_000;

impl<S: Store> Inner<S> {
    /// One pass, if this replica gets the deployment's reaper lock (otherwise another replica
    /// is reaping: `skipped`).
    pub(super) async fn reap_once(this: &Arc<Self>) -> Result<ReapReport, LeaseError> {
        let (deployment, replica) = (&this.cfg.deployment, &this.replica);
        if !this.store.try_reaper_lock(deployment, replica, this.expiry_ms()).await? {
            return Ok(ReapReport { skipped: true, ..ReapReport::default() });
        }
        let pass = Self::reap_locked(this).await;
        if let Err(error) = this.store.release_reaper_lock(deployment, replica).await {
            warn!(%error, "the reaper lock was not given back; it expires by itself");
        }
        pass
    }

    async fn reap_locked(this: &Arc<Self>) -> Result<ReapReport, LeaseError> {
        // Order matters: instances, then open leases, then owners. Any instance listed was
        // created by an acquire that reserved its lease (owner recorded) and registered itself
        // before creating, so it is in the open leases, or in this process's owner snapshot,
        // unless that acquire has ended.
        let instances = this.provider.list_instances(None).await?;
        let open: Vec<LeaseRecord> = this
            .store
            .open_leases()
            .await?
            .into_iter()
            .filter(|r| parse_label(&r.label).is_some_and(|(d, _)| d == this.cfg.deployment))
            .collect();
        if let Err(error) = this.store.prune_replicas(&this.cfg.deployment, PRUNE_AFTER_MS).await {
            warn!(%error, "long-dead replicas not pruned");
        }
        let replicas = this.store.replicas(&this.cfg.deployment).await?;
        // Replicas other than this one that are live: their leases are theirs.
        let others_live: Vec<_> =
            replicas.iter().filter(|r| r.live && r.replica_id != this.replica).collect();
        let owned_elsewhere = |rec: &LeaseRecord| {
            rec.owner_replica
                .as_deref()
                .is_some_and(|o| others_live.iter().any(|r| r.replica_id == o))
        };
        let (acquiring, held): (Vec<LeaseId>, Vec<LeaseId>) = {
            let owners = this.owners.lock();
            let mut a = Vec::new();
            let mut h = Vec::new();
            for (id, o) in owners.iter() {
                match o {
                    Owner::Acquiring => a.push(id.clone()),
                    Owner::Held { .. } => h.push(id.clone()),
                }
            }
            (a, h)
        };
        let mut report = ReapReport { listed: instances.len(), ..ReapReport::default() };
        for inst in &instances {
            let Some((deployment, lease)) = inst.label.as_deref().and_then(parse_label) else {
                continue;
            };
            if deployment != this.cfg.deployment {
                continue;
            }
            if acquiring.iter().any(|l| l.as_str() == lease) {
                continue;
            }
            let record = open.iter().find(|r| r.lease_id.as_str() == lease);
            if record.is_some_and(&owned_elsewhere) {
                // Its owner is live: its instances are its own business.
                continue;
            }
            let keep = held.iter().any(|l| l.as_str() == lease)
                && record
                    .is_some_and(|r| live_contract(r).is_some_and(|c| c.contract_id == inst.id));
            if keep || record.is_some_and(|r| !held.iter().any(|l| l == &r.lease_id)) {
                // Kept, or an open lease no live replica holds: its teardown below destroys
                // this instance.
                continue;
            }
            this.audit(
                "reaper.destroy",
                "reaper",
                format!("instance:{}", inst.id),
                "orphan",
                json!({
                    "label": inst.label, "lease": lease,
                }),
            )
            .await;
            match this
                .destroy_confirmed(inst.id, inst.label.as_deref().unwrap_or(""), "reaper", lease)
                .await
            {
                Ok(_) => report.destroyed.push(inst.id),
                Err(e) => report.failures.push(format!("instance {}: {e}", inst.id)),
            }
        }
        for rec in
            open.iter().filter(|r| !held.contains(&r.lease_id) && !acquiring.contains(&r.lease_id))
        {
            if owned_elsewhere(rec) {
                report.left_to_owners.push(rec.lease_id.clone());
                let expires = others_live
                    .iter()
                    .filter(|r| rec.owner_replica.as_deref() == Some(r.replica_id.as_str()))
                    .map(|r| r.expires_unix_ms)
                    .min();
                report.next_takeover_unix_ms = match (report.next_takeover_unix_ms, expires) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                continue;
            }
            if rec.owner_replica.as_deref() != Some(this.replica.as_str()) {
                let from = rec.owner_replica.as_deref();
                if !this.store.take_over_lease(&rec.lease_id, from, &this.replica).await? {
                    // Another replica took it first, or it was settled meanwhile.
                    continue;
                }
                let why = match from {
                    None => "no owner recorded",
                    Some(_) => "its owner's heartbeat expired",
                };
                this.audit(
                    "lease.takeover",
                    "reaper",
                    format!("lease:{}", rec.lease_id),
                    "ok",
                    json!({"from_replica": from, "to_replica": &this.replica, "reason": why}),
                )
                .await;
                report.taken_over.push(rec.lease_id.clone());
            }
            let before: Vec<u64> = rec
                .contracts
                .iter()
                .filter(|c| c.gone_unix_ms.is_none())
                .map(|c| c.contract_id)
                .collect();
            match this.teardown(&rec.lease_id, "reaper", "reaped: no live owner").await {
                Ok(done) => {
                    report.destroyed.extend(
                        done.contracts
                            .iter()
                            .filter(|c| before.contains(&c.contract_id) || c.offer_id == 0)
                            .map(|c| c.contract_id),
                    );
                    report.settled.push(rec.lease_id.clone());
                }
                Err(e) => report.failures.push(format!("lease {}: {e}", rec.lease_id)),
            }
        }
        Ok(report)
    }
}

impl<S: Store> Inner<S> {
    /// The store-clock lifetime of a heartbeat (and of the reaper lock), ms.
    pub(super) fn expiry_ms(&self) -> u64 {
        // Bounded by the configuration (at most an hour); the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = (self.cfg.replica_expiry_s.max(0.001) * 1000.0).ceil() as u64;
        ms
    }

    /// Writes this replica's heartbeat.
    pub(super) async fn beat(&self) -> Result<(), drover_store::StoreError> {
        let beat = drover_store::Heartbeat {
            deployment: &self.cfg.deployment,
            replica_id: &self.replica,
            expiry_ms: self.expiry_ms(),
        };
        self.store.heartbeat(&beat).await
    }

    /// Before releasing a lease this process does not hold: refused while another live
    /// replica (or another deployment) owns it; taken over when its owner is dead or unknown.
    pub(super) async fn claim_for_release(&self, lease_id: &LeaseId) -> Result<(), LeaseError> {
        let Some(rec) = self.store.get_lease(lease_id).await? else { return Ok(()) };
        if !rec.is_open() || rec.owner_replica.as_deref() == Some(self.replica.as_str()) {
            return Ok(());
        }
        if parse_label(&rec.label).is_none_or(|(d, _)| d != self.cfg.deployment) {
            return Err(LeaseError::OwnedElsewhere(lease_id.clone()));
        }
        let owner = rec.owner_replica.as_deref();
        let replicas = self.store.replicas(&self.cfg.deployment).await?;
        if replicas.iter().any(|r| r.live && Some(r.replica_id.as_str()) == owner) {
            return Err(LeaseError::OwnedElsewhere(lease_id.clone()));
        }
        if !self.store.take_over_lease(lease_id, owner, &self.replica).await? {
            return Err(LeaseError::OwnedElsewhere(lease_id.clone()));
        }
        self.audit(
            "lease.takeover",
            "release",
            format!("lease:{lease_id}"),
            "ok",
            json!({"from_replica": owner, "to_replica": &self.replica,
                   "reason": if owner.is_some() { "its owner's heartbeat expired" } else { "no owner recorded" }}),
        )
        .await;
        Ok(())
    }
}
