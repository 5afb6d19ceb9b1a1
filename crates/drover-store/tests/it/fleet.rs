//! What replicas of one deployment share through the store (`drover_store::fleet`): the
//! deployment id chosen once, heartbeats and their expiry, one reaper at a time, and a lease
//! taken over by exactly one replica, after which its old owner's writes are refused; on both
//! backends.

use std::time::Duration;

use crate::common::*;
use drover_store::fleet::DEPLOYMENT_ID_KEY;
use drover_store::{Fleet, Heartbeat, ReserveLimits, SqliteStore, Store, StoreError};

on_both!(
    a_replica_is_live_until_its_heartbeat_expires_or_it_retires,
    one_reaper_at_a_time_per_deployment,
    a_lease_is_taken_over_once_and_fences_its_old_owner,
);

const LIMITS: ReserveLimits = ReserveLimits { daily_cap_usd: 100.0, job_committed_seen_usd: 0.0 };

fn beat<'a>(replica_id: &'a str, expiry_ms: u64) -> Heartbeat<'a> {
    Heartbeat { deployment: "prod", replica_id, expiry_ms }
}

#[tokio::test]
async fn a_setting_is_chosen_once_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    assert_eq!(store.setting_or_init(DEPLOYMENT_ID_KEY, "first").await.unwrap(), "first");
    assert_eq!(store.setting_or_init(DEPLOYMENT_ID_KEY, "second").await.unwrap(), "first");
    store.close().await;
    let reopened = SqliteStore::open_in(dir.path()).await.unwrap();
    assert_eq!(reopened.setting_or_init(DEPLOYMENT_ID_KEY, "third").await.unwrap(), "first");
}

async fn a_replica_is_live_until_its_heartbeat_expires_or_it_retires(store: impl Store) {
    store.heartbeat(&beat("a", 300)).await.unwrap();
    store.heartbeat(&beat("b", 60_000)).await.unwrap();
    store
        .heartbeat(&Heartbeat { deployment: "staging", replica_id: "c", expiry_ms: 60_000 })
        .await
        .unwrap();
    let live = |rs: Vec<drover_store::Replica>| {
        rs.into_iter().filter(|r| r.live).map(|r| r.replica_id).collect::<Vec<_>>()
    };
    assert_eq!(live(store.replicas("prod").await.unwrap()), ["a", "b"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let all = store.replicas("prod").await.unwrap();
    assert_eq!(all.len(), 2, "an expired replica keeps its row: {all:?}");
    assert_eq!(live(all), ["b"]);
    // A beat brings it back.
    store.heartbeat(&beat("a", 60_000)).await.unwrap();
    assert_eq!(live(store.replicas("prod").await.unwrap()), ["a", "b"]);
    store.retire_replica("a").await.unwrap();
    assert_eq!(live(store.replicas("prod").await.unwrap()), ["b"]);
    // Long-expired rows are forgotten; live ones and other deployments' are not.
    store.heartbeat(&beat("d", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.prune_replicas("prod", 10).await.unwrap(), 1);
    assert_eq!(store.prune_replicas("prod", 10).await.unwrap(), 0);
    let ids: Vec<_> =
        store.replicas("prod").await.unwrap().into_iter().map(|r| r.replica_id).collect();
    assert_eq!(ids, ["b"]);
    assert_eq!(store.replicas("staging").await.unwrap().len(), 1);
}

async fn one_reaper_at_a_time_per_deployment(store: impl Store) {
    assert!(store.try_reaper_lock("prod", "a", 300).await.unwrap());
    assert!(!store.try_reaper_lock("prod", "b", 60_000).await.unwrap(), "a holds it");
    assert!(store.try_reaper_lock("staging", "c", 60_000).await.unwrap(), "per deployment");
    assert!(store.try_reaper_lock("prod", "a", 300).await.unwrap(), "the holder may renew");
    // A heartbeat extends the lock its replica holds.
    store.heartbeat(&beat("a", 60_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!store.try_reaper_lock("prod", "b", 60_000).await.unwrap(), "extended by the beat");
    store.release_reaper_lock("prod", "b").await.unwrap();
    assert!(!store.try_reaper_lock("prod", "b", 60_000).await.unwrap(), "only the holder frees it");
    store.release_reaper_lock("prod", "a").await.unwrap();
    assert!(store.try_reaper_lock("prod", "b", 300).await.unwrap());
    // An expired lock goes to the next asker.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.try_reaper_lock("prod", "a", 60_000).await.unwrap());
    // Retiring a replica frees its lock.
    store.retire_replica("a").await.unwrap();
    assert!(store.try_reaper_lock("prod", "b", 60_000).await.unwrap());
}

async fn a_lease_is_taken_over_once_and_fences_its_old_owner(store: impl Store) {
    let owned = lease("lease-1", "job-1", 1.0);
    assert_eq!(owned.owner_replica.as_deref(), Some("replica-a"));
    store.reserve_lease(&owned, LIMITS).await.unwrap();
    assert_eq!(
        store.get_lease(&owned.lease_id).await.unwrap().unwrap().owner_replica.as_deref(),
        Some("replica-a")
    );
    // Only from the owner the caller saw, and only once.
    assert!(!store.take_over_lease(&owned.lease_id, Some("replica-x"), "replica-b").await.unwrap());
    assert!(store.take_over_lease(&owned.lease_id, Some("replica-a"), "replica-b").await.unwrap());
    assert!(!store.take_over_lease(&owned.lease_id, Some("replica-a"), "replica-c").await.unwrap());
    let err = store.update_lease(&owned).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseTakenOver(_)), "{err}");
    let mut now_b = store.get_lease(&owned.lease_id).await.unwrap().unwrap();
    assert_eq!(now_b.owner_replica.as_deref(), Some("replica-b"));
    now_b.contracts = vec![contract(7)];
    store.update_lease(&now_b).await.unwrap();
    // A lease without an owner (written before owners were recorded) is taken from `None`.
    let mut legacy = lease("lease-2", "job-2", 1.0);
    legacy.owner_replica = None;
    store.reserve_lease(&legacy, LIMITS).await.unwrap();
    assert!(store.take_over_lease(&legacy.lease_id, None, "replica-b").await.unwrap());
    // A settled lease is nobody's to take.
    store.settle_lease(&now_b.lease_id, 0.5, "done", T0 + 1).await.unwrap();
    assert!(!store.take_over_lease(&now_b.lease_id, Some("replica-b"), "replica-c").await.unwrap());
}
