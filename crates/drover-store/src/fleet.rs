//! What several supervisors (replicas) of one deployment share through the store: the
//! deployment id chosen once, each replica's heartbeat, the reaper lock, and the owner of each
//! lease.
//!
//! Times are the store's clock, never the caller's: a heartbeat is stamped and judged by the
//! store (for SQLite, the clock of the host its file lives on, which every replica sharing the
//! file shares), so replicas whose clocks disagree still agree on who is alive.
//!
//! # Rules
//!
//! - A replica is **live** while its last heartbeat's expiry (`heartbeat + expiry`, both
//!   stamped by the store) is in the future. A replica that stops beating (killed, hung,
//!   partitioned) is dead once its expiry passes; one that shuts down cleanly removes its row
//!   at once ([`Fleet::retire_replica`]).
//! - A lease belongs to the replica named in its `owner_replica`. Another replica may take it
//!   over only with [`Fleet::take_over_lease`], which succeeds for exactly one caller and only
//!   while the owner is still the one the caller saw; [`crate::Store::update_lease`] then
//!   refuses the previous owner's writes ([`crate::StoreError::LeaseTakenOver`]).
//! - At most one replica per deployment reaps at a time: [`Fleet::try_reaper_lock`] grants the
//!   lock to one caller until it releases it or its expiry passes; a heartbeat extends the
//!   lock its replica holds.

use std::future::Future;

use drover_proto::LeaseId;

use crate::StoreError;

/// The settings key of the deployment id.
pub const DEPLOYMENT_ID_KEY: &str = "deployment_id";

/// One heartbeat of a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat<'a> {
    /// The replica's deployment.
    pub deployment: &'a str,
    /// The replica.
    pub replica_id: &'a str,
    /// How long after this beat (store clock) the replica counts as dead without another, ms.
    pub expiry_ms: u64,
}

/// A replica as the store sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The replica.
    pub replica_id: String,
    /// Its deployment.
    pub deployment: String,
    /// Its first heartbeat, Unix ms (store clock).
    pub started_unix_ms: u64,
    /// Its last heartbeat, Unix ms (store clock).
    pub heartbeat_unix_ms: u64,
    /// When it counts as dead without another beat, Unix ms (store clock).
    pub expires_unix_ms: u64,
    /// Whether `expires_unix_ms` was still ahead of the store's clock when this was read.
    pub live: bool,
}

/// The store's part in running several supervisors of one deployment. See the module docs.
pub trait Fleet: Send + Sync {
    /// The value of setting `key`; if it has none, stores `value` first. Two callers racing
    /// both get the one value that was stored.
    fn setting_or_init(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Records a heartbeat (creating the replica's row on its first) and extends the reaper
    /// lock the replica holds, if any, to the same expiry.
    fn heartbeat(
        &self,
        beat: &Heartbeat<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every replica of `deployment` the store has a row for, live or not.
    fn replicas(
        &self,
        deployment: &str,
    ) -> impl Future<Output = Result<Vec<Replica>, StoreError>> + Send;

    /// Removes a replica's row and any reaper lock it holds (a clean shutdown): whatever it
    /// still owns may be taken over at once.
    fn retire_replica(
        &self,
        replica_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets the replicas of `deployment` whose heartbeat expired more than `expired_for_ms`
    /// ago (killed processes never retire themselves); returns how many. A replica without a
    /// row counts as dead, as an expired one does, so this changes no decision.
    fn prune_replicas(
        &self,
        deployment: &str,
        expired_for_ms: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Takes `deployment`'s reaper lock for `replica_id` for `ttl_ms` (store clock), if no
    /// other replica holds it unexpired; true when this replica now holds it.
    fn try_reaper_lock(
        &self,
        deployment: &str,
        replica_id: &str,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives the reaper lock back, if `replica_id` holds it.
    fn release_reaper_lock(
        &self,
        deployment: &str,
        replica_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes `to` the owner of an open lease whose owner is still `from` (`None`: no owner);
    /// true when it did. Exactly one of several racing callers succeeds.
    fn take_over_lease(
        &self,
        lease_id: &LeaseId,
        from: Option<&str>,
        to: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
