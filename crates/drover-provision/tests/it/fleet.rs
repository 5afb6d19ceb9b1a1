//! Replicas of one deployment sharing one SQLite file and one (simulated) Vast.ai account
//! (`drover_provision::fleet`): a live replica's lease is never reaped by another; once its
//! heartbeat has expired, the lease is taken over, its instance destroyed and the lease
//! settled at least at what the provider billed. And the deployment id: checked, generated
//! once per store, kept across restarts, different between stores.

use std::time::Duration;

use crate::util::*;
use drover_provision::fleet::{DeploymentError, DeploymentIdError, resolve_deployment};
use drover_provision::provisioner::StartError;
use drover_provision::{Clock, LeaseError, Provisioner, ProvisionerConfig};
use drover_store::SqliteStore;

/// Two replicas of deployment "test": one store file (two handles, as two processes would
/// open it), one simulator.
async fn two_replicas(expiry_s: f64) -> (Rig, Prov) {
    let clock = Clock::scaled(SPEED);
    let sim = simulator("none", clock).await;
    let (store, dir) = store().await;
    let cfg = ProvisionerConfig { replica_expiry_s: expiry_s, ..config() };
    let a = Provisioner::start(client(&sim), store.clone(), cfg.clone(), clock).await.unwrap();
    let other_handle = SqliteStore::open_in(dir.path()).await.unwrap();
    let b = Provisioner::start(client(&sim), other_handle, cfg, clock).await.unwrap();
    assert_eq!(a.deployment(), b.deployment());
    assert_ne!(a.replica_id(), b.replica_id());
    (Rig { sim, store, prov: a, clock, dir }, b)
}

#[tokio::test]
async fn a_live_replicas_lease_is_left_alone_and_taken_over_once_its_heartbeat_expires() {
    let (rig, b) = two_replicas(1.0).await;
    let lease = rig.prov.acquire(&request("job-a"), &ctx()).await.unwrap();
    let rec = stored(&rig.store, &lease.lease_id).await;
    assert_eq!(rec.owner_replica.as_deref(), Some(rig.prov.replica_id()));
    let instance = rec.contracts[0].contract_id;

    // B reaps while A is live (heartbeats every 0.2 s): nothing of A's is touched, on any
    // pass, and B may not release it either.
    for _ in 0..3 {
        let report = b.reap_once().await.unwrap();
        assert!(report.destroyed.is_empty() && report.settled.is_empty(), "{report:?}");
        assert_eq!(report.left_to_owners, vec![lease.lease_id.clone()]);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let refused = b.release(&lease.lease_id, "driver:other").await.unwrap_err();
    assert!(matches!(refused, LeaseError::OwnedElsewhere(_)), "{refused}");
    assert!(rig.sim.instance_exists(instance), "B destroyed A's live instance");
    assert!(stored(&rig.store, &lease.lease_id).await.is_open());

    // A is killed: no heartbeat, no watchdog, no release. Before its heartbeat expires B
    // still leaves the lease alone; after, B takes it over, destroys and settles.
    let Rig { sim, store, prov: a, clock, dir } = rig;
    drop(a);
    assert!(b.reap_once().await.unwrap().settled.is_empty(), "taken over before expiry");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let report = b.reap_once().await.unwrap();
    assert_eq!(report.taken_over, vec![lease.lease_id.clone()], "{report:?}");
    assert_eq!(report.settled, vec![lease.lease_id.clone()]);
    assert!(report.destroyed.contains(&instance));
    assert!(!sim.instance_exists(instance));
    let rec = stored(&store, &lease.lease_id).await;
    assert_eq!(rec.owner_replica.as_deref(), Some(b.replica_id()));
    let actions = audit_actions(&store).await;
    assert!(actions.contains(&("lease.takeover".into(), "ok".into())), "{actions:?}");
    let rig = Rig { sim, store, prov: b, clock, dir };
    // Settled at least at the bill, nothing billing, the ledger balanced.
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn a_replica_started_next_to_a_live_lease_takes_it_over_when_its_owner_dies() {
    // B starts while A holds a lease: B's start-up reaper leaves it to A, and B's periodic
    // reaper (every 1e6 clock seconds in these tests) still wakes when A's heartbeat expires.
    let clock = Clock::scaled(SPEED);
    let sim = simulator("none", clock).await;
    let (store, dir) = store().await;
    let cfg = ProvisionerConfig { replica_expiry_s: 0.5, ..config() };
    let a = Provisioner::start(client(&sim), store.clone(), cfg.clone(), clock).await.unwrap();
    let lease = a.acquire(&request("job-a"), &ctx()).await.unwrap();
    let instance = stored(&store, &lease.lease_id).await.contracts[0].contract_id;
    let b_store = SqliteStore::open_in(dir.path()).await.unwrap();
    let b = Provisioner::start(client(&sim), b_store, cfg, clock).await.unwrap();
    assert!(sim.instance_exists(instance), "B's start-up reaper destroyed A's live instance");
    assert!(stored(&store, &lease.lease_id).await.is_open());
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stored(&store, &lease.lease_id).await.is_open() {
        assert!(std::time::Instant::now() < deadline, "never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!sim.instance_exists(instance));
    let rig = Rig { sim, store, prov: b, clock, dir };
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn a_released_replica_is_taken_over_at_once() {
    // A clean shutdown retires the replica: what it could not release is anyone's at once.
    let (rig, b) = two_replicas(60.0).await;
    let lease = rig.prov.acquire(&request("job-a"), &ctx()).await.unwrap();
    let Rig { sim, store, prov: a, clock, dir } = rig;
    a.retire().await;
    drop(a);
    let report = b.reap_once().await.unwrap();
    assert_eq!(report.settled, vec![lease.lease_id.clone()], "{report:?}");
    let rig = Rig { sim, store, prov: b, clock, dir };
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn deployment_ids_are_validated_with_the_field_named() {
    let clock = Clock::scaled(SPEED);
    let sim = simulator("none", clock).await;
    let (store, _dir) = store().await;
    for (bad, why) in [("", DeploymentIdError::Empty), ("prod:eu", DeploymentIdError::Character)] {
        let cfg = ProvisionerConfig { deployment: bad.into(), ..config() };
        let err = Provisioner::start(client(&sim), store.clone(), cfg, clock).await.unwrap_err();
        assert!(matches!(err, StartError::Deployment(e) if e == why), "{bad:?}");
        let err = resolve_deployment(&store, Some(bad)).await.unwrap_err();
        assert!(matches!(err, DeploymentError::Invalid(e) if e == why));
        assert!(err.to_string().starts_with("supervisor.deployment: "), "{err}");
    }
    assert_eq!(resolve_deployment(&store, Some("prod-eu.1")).await.unwrap(), "prod-eu.1");
}

#[tokio::test]
async fn the_default_deployment_id_is_kept_by_its_store_and_differs_between_stores() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let first =
        resolve_deployment(&SqliteStore::open_in(one.path()).await.unwrap(), None).await.unwrap();
    assert!(first.starts_with("drover-") && first.len() == 19, "{first}");
    let store = SqliteStore::open_in(one.path()).await.unwrap();
    assert_eq!(resolve_deployment(&store, None).await.unwrap(), first, "kept across restarts");
    // A configured id wins but does not replace the kept one.
    assert_eq!(resolve_deployment(&store, Some("staging")).await.unwrap(), "staging");
    assert_eq!(resolve_deployment(&store, None).await.unwrap(), first);
    let other =
        resolve_deployment(&SqliteStore::open_in(two.path()).await.unwrap(), None).await.unwrap();
    assert_ne!(first, other, "two fresh installs share a deployment id");
}
