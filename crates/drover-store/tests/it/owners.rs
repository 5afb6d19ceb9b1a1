//! Who runs each job when replicas share a store (`drover_store::owners`), on both backends:
//! jobs belong to the replica that accepted them, only the owner writes their events, an
//! orphan is taken over by exactly one replica, after which its old owner is fenced off, and
//! a cancel sent to another replica reaches the owner once.

use std::time::Duration;

use crate::common::*;
use drover_proto::JobPhase;
use drover_proto::api::JobEventKind;
use drover_store::{Fleet, Heartbeat, Store, StoreError};

on_both!(
    only_the_owner_writes_a_jobs_events,
    an_orphan_is_taken_over_once_and_fences_its_old_owner,
    a_cancel_left_for_the_owner_reaches_it_once,
);

fn running(job: &str) -> JobEventKind {
    JobEventKind::JobState(drover_proto::JobState {
        job_id: job_id(job),
        state: JobPhase::Running,
        message: None,
    })
}

async fn beat(store: &impl Fleet, replica_id: &str, expiry_ms: u64) {
    store.heartbeat(&Heartbeat { deployment: "prod", replica_id, expiry_ms }).await.unwrap();
}

async fn only_the_owner_writes_a_jobs_events(store: impl Store) {
    let a = store.with_replica("replica-a");
    let b = store.with_replica("replica-b");
    assert_eq!(a.replica(), Some("replica-a"));
    a.submit_job(new_job("job-1", "ci", T0)).await.unwrap();
    assert!(a.owns_job(&job_id("job-1")).await.unwrap());
    assert!(!b.owns_job(&job_id("job-1")).await.unwrap());
    for other in [&b, &store] {
        let err = other.append_event(&job_id("job-1"), T0 + 1, running("job-1")).await.unwrap_err();
        assert!(matches!(err, StoreError::JobTakenOver(_)), "{err}");
    }
    a.append_event(&job_id("job-1"), T0 + 1, running("job-1")).await.unwrap();
    // A job accepted without a replica belongs to handles without one.
    store.submit_job(new_job("job-2", "ci", T0)).await.unwrap();
    store.append_event(&job_id("job-2"), T0 + 1, running("job-2")).await.unwrap();
    let err = a.append_event(&job_id("job-2"), T0 + 2, running("job-2")).await.unwrap_err();
    assert!(matches!(err, StoreError::JobTakenOver(_)), "{err}");
}

async fn an_orphan_is_taken_over_once_and_fences_its_old_owner(store: impl Store) {
    let a = store.with_replica("replica-a");
    let b = store.with_replica("replica-b");
    let c = store.with_replica("replica-c");
    beat(&a, "replica-a", 400).await;
    beat(&b, "replica-b", 60_000).await;
    a.submit_job(new_job("job-1", "ci", T0)).await.unwrap();
    a.submit_job(new_job("job-done", "ci", T0)).await.unwrap();
    let done = JobEventKind::JobState(drover_proto::JobState {
        job_id: job_id("job-done"),
        state: JobPhase::Succeeded,
        message: None,
    });
    a.append_event(&job_id("job-done"), T0 + 1, done).await.unwrap();
    // A job without an owner is everybody's orphan; a live owner's job is nobody's.
    store.submit_job(new_job("job-legacy", "ci", T0)).await.unwrap();
    let ids = |jobs: Vec<drover_store::OwnedJob>| {
        jobs.into_iter().map(|o| (o.job.id.to_string(), o.owner_replica)).collect::<Vec<_>>()
    };
    assert_eq!(ids(b.orphaned_jobs().await.unwrap()), [("job-legacy".to_owned(), None)]);

    tokio::time::sleep(Duration::from_millis(600)).await;
    let orphans = ids(b.orphaned_jobs().await.unwrap());
    assert_eq!(
        orphans,
        [("job-1".to_owned(), Some("replica-a".to_owned())), ("job-legacy".to_owned(), None)],
        "a's heartbeat expired; finished jobs are never orphans"
    );
    assert!(
        a.orphaned_jobs().await.unwrap().iter().all(|o| o.job.id.as_str() != "job-1"),
        "a replica never sees its own jobs as orphans"
    );

    // Exactly one of two racing replicas wins, and only from the owner it saw.
    assert!(!b.take_over_job(&job_id("job-1"), Some("replica-x")).await.unwrap());
    let job = job_id("job-1");
    let (won_b, won_c) = tokio::join!(
        b.take_over_job(&job, Some("replica-a")),
        c.take_over_job(&job, Some("replica-a")),
    );
    assert!(won_b.unwrap() ^ won_c.unwrap(), "exactly one takes it");
    let winner = if b.owns_job(&job_id("job-1")).await.unwrap() { &b } else { &c };
    // The old owner comes back and is fenced off; the new one writes.
    let err = a.append_event(&job_id("job-1"), T0 + 2, running("job-1")).await.unwrap_err();
    assert!(matches!(err, StoreError::JobTakenOver(_)), "{err}");
    winner.append_event(&job_id("job-1"), T0 + 2, running("job-1")).await.unwrap();
    assert!(b.take_over_job(&job_id("job-legacy"), None).await.unwrap());
    assert!(!b.take_over_job(&job_id("job-done"), Some("replica-a")).await.unwrap());
}

async fn a_cancel_left_for_the_owner_reaches_it_once(store: impl Store) {
    let a = store.with_replica("replica-a");
    let b = store.with_replica("replica-b");
    a.submit_job(new_job("job-1", "ci", T0)).await.unwrap();
    b.submit_job(new_job("job-2", "ci", T0)).await.unwrap();
    assert!(b.request_cancel(&job_id("job-1"), "cancelled by ci").await.unwrap());
    assert!(!b.request_cancel(&job_id("nope"), "x").await.unwrap());
    assert!(b.cancel_requests().await.unwrap().is_empty(), "not b's job");
    let asked = a.cancel_requests().await.unwrap();
    assert_eq!(asked, [(job_id("job-1"), "cancelled by ci".to_owned())]);
    assert!(a.cancel_requests().await.unwrap().is_empty(), "each request once");
}
