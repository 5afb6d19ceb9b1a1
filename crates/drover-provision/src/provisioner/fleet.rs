//! Who owns what when several supervisors share one Vast.ai account: the deployment id, the
//! replica id, and the replica's heartbeat.
//!
//! - **Deployment.** Every instance is labelled `drover:<deployment>:<lease>`, and a reaper
//!   looks only at instances of its own deployment: those of any other deployment are never
//!   touched. The id is `supervisor.deployment` when configured (letters, digits, `.`, `_`,
//!   `-`, starting with a letter or digit, at most 64 bytes; anything else is a
//!   [`DeploymentIdError`] naming the key). Unset, it is **generated once per store** and kept
//!   there ([`resolve_deployment`]: `drover-` and 12 random hex digits), so two independent
//!   installs never share one and a restart keeps its own. Replicas meant to share leases
//!   (one store, several processes) share the store, and so the id.
//! - **Replica.** Every running provisioner draws a random replica id at start
//!   ([`new_replica_id`]: `r` and 16 hex digits). Every lease records the replica that owns
//!   it.
//! - **Heartbeat.** A replica writes a heartbeat into the store at start and then every fifth
//!   of `replica_expiry_s` (default 30 real seconds, so every 6 s); it counts as live while its
//!   last heartbeat is younger than `replica_expiry_s` by the store's clock. A clean shutdown
//!   removes its row ([`crate::Provisioner::retire`]).
//! - **Orphans.** An instance of this deployment is an orphan only when no open lease owns
//!   it, or the replica that owns its lease is no longer live: then the reaper takes the
//!   lease over (once: the store lets exactly one replica do it), destroys its instances and
//!   settles it from the provider's bill like any other. A lease whose owner is live is left
//!   to that owner, and so is a release asked of a replica that does not own it. One replica
//!   per deployment reaps at a time (the store's reaper lock, held for a pass and extended by
//!   heartbeats). After a replica is killed, its instances are therefore destroyed
//!   `replica_expiry_s` later at most plus one reaper pass: a waiting reaper wakes when the
//!   earliest such heartbeat expires, not only every `reap_interval_s`. A dead replica's row
//!   is forgotten by the first reaper pass an hour after its heartbeat expired.
//! - **Time.** The replica reads the store's clock at start and after every heartbeat and
//!   keeps its offset from this host's clock ([`crate::clock`] has the rule): the budget day,
//!   a lease's grant time and deadline, and the wake-up for an expiring heartbeat are the
//!   store's time, so replicas with skewed clocks agree on "today" and on deadlines.

use std::sync::atomic::Ordering;

use drover_store::fleet::DEPLOYMENT_ID_KEY;
use drover_store::{Fleet, Store, StoreError};

use super::{Inner, ms_to_s};
use crate::clock::{midpoint_offset_ms, shift_ms, unix_day};

/// The longest deployment id, in bytes.
pub const DEPLOYMENT_MAX_LEN: usize = 64;

/// Why a deployment id is refused. Each message names the configuration key it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentIdError {
    /// Empty.
    #[error("supervisor.deployment: the deployment id is empty")]
    Empty,
    /// Starts with something other than a letter or digit.
    #[error("supervisor.deployment: the deployment id must start with a letter or digit")]
    Start,
    /// Longer than [`DEPLOYMENT_MAX_LEN`].
    #[error("supervisor.deployment: the deployment id is longer than 64 bytes")]
    TooLong,
    /// A character other than letters, digits, `.`, `_` and `-` (a `:` would break labels).
    #[error(
        "supervisor.deployment: the deployment id may hold only letters, digits, '.', '_' and '-'"
    )]
    Character,
}

/// Why the deployment id could not be settled at start.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The configured id is not usable.
    #[error(transparent)]
    Invalid(#[from] DeploymentIdError),
    /// The store could not read or keep the generated id.
    #[error("supervisor.deployment: the generated deployment id could not be kept: {0}")]
    Store(#[from] StoreError),
    /// The system's random source failed.
    #[error("supervisor.deployment: no random id could be drawn")]
    Random,
}

/// Checks a deployment id against its grammar.
pub fn valid_deployment(d: &str) -> Result<(), DeploymentIdError> {
    let mut bytes = d.bytes();
    match bytes.next() {
        None => return Err(DeploymentIdError::Empty),
        Some(b) if !b.is_ascii_alphanumeric() => return Err(DeploymentIdError::Start),
        Some(_) => {}
    }
    if d.len() > DEPLOYMENT_MAX_LEN {
        return Err(DeploymentIdError::TooLong);
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(DeploymentIdError::Character);
    }
    Ok(())
}

/// The deployment id to run as: `configured` if given (validated), else the one generated
/// for this store at its first start and kept in it.
pub async fn resolve_deployment(
    store: &impl Fleet,
    configured: Option<&str>,
) -> Result<String, DeploymentError> {
    if let Some(id) = configured {
        valid_deployment(id)?;
        return Ok(id.to_owned());
    }
    let fresh = format!("drover-{}", random_hex(6)?);
    Ok(store.setting_or_init(DEPLOYMENT_ID_KEY, &fresh).await?)
}

/// A fresh replica id: `r` and 16 random hex digits.
pub fn new_replica_id() -> Result<String, DeploymentError> {
    Ok(format!("r{}", random_hex(8)?))
}

fn random_hex(bytes: usize) -> Result<String, DeploymentError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|_| DeploymentError::Random)?;
    Ok(hex::encode(buf))
}

/// The host's wall clock, Unix ms: the SQLite store's clock, which heartbeats are judged by.
use drover_proto::text::now_unix_ms as wall_ms;

impl<S: Store> Inner<S> {
    /// Reads the store's clock and keeps its offset from this host's (half the round trip
    /// corrected). Done at start and after every heartbeat.
    pub(super) async fn sync_clock(&self) -> Result<(), StoreError> {
        let sent = wall_ms();
        let store_ms = self.store.now_unix_ms().await?;
        let offset = midpoint_offset_ms(sent, store_ms, wall_ms());
        self.store_offset_ms.store(offset, Ordering::Relaxed);
        Ok(())
    }

    /// The store's clock now, as this replica estimates it, Unix ms.
    pub(super) fn store_now_ms(&self) -> u64 {
        shift_ms(wall_ms(), self.store_offset_ms.load(Ordering::Relaxed))
    }

    /// The budget day (Unix days, UTC): always the store's.
    pub(super) fn budget_day(&self) -> u64 {
        unix_day(self.store_now_ms())
    }

    /// Now for a lease's grant time and deadline, Unix ms: the store's clock when this
    /// replica runs on the real clock, the scaled clock itself in tests.
    pub(super) fn lease_now_ms(&self) -> u64 {
        if self.clock.is_real() { self.store_now_ms() } else { self.clock.now_ms() }
    }

    /// [`Self::lease_now_ms`] in seconds.
    pub(super) fn lease_now_s(&self) -> f64 {
        if self.clock.is_real() { ms_to_s(self.store_now_ms()) } else { self.clock.now_s() }
    }

    /// A lease time (see [`Self::lease_now_ms`]) on this host's clock, seconds: for what runs
    /// on the provider's clocks rather than the store's (the instance's dead-man's switch), so
    /// a store clock that is off does not end an instance early.
    pub(super) fn lease_time_here_s(&self, lease_ms: u64) -> f64 {
        let offset = self.store_offset_ms.load(Ordering::Relaxed);
        ms_to_s(if self.clock.is_real() {
            shift_ms(lease_ms, offset.saturating_neg())
        } else {
            lease_ms
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_ids_are_checked_and_name_their_key() {
        assert!(valid_deployment("prod.eu-1_a").is_ok());
        assert!(valid_deployment(&"x".repeat(64)).is_ok());
        for (bad, why) in [
            ("", DeploymentIdError::Empty),
            ("-x", DeploymentIdError::Start),
            ("a:b", DeploymentIdError::Character),
            ("a b", DeploymentIdError::Character),
            (&"x".repeat(65), DeploymentIdError::TooLong),
        ] {
            assert_eq!(valid_deployment(bad), Err(why), "{bad}");
            assert!(why.to_string().starts_with("supervisor.deployment: "), "{why}");
        }
    }

    #[test]
    fn generated_ids_fit_their_grammars_and_differ() {
        let a = new_replica_id().unwrap();
        let b = new_replica_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 17);
        assert!(valid_deployment(&format!("drover-{}", random_hex(6).unwrap())).is_ok());
    }
}
