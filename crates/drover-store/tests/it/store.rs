//! The store test suite, run against both backends: SQLite on a real file and PostgreSQL on
//! a real server this binary starts (tests/common/postgres.rs). Each case is an `async fn`
//! over `impl Store`, instantiated once per backend by `on_both!`; the cases at the end are
//! PostgreSQL's own, where writers in several processes race.

use crate::common::*;
use drover_proto::api::{AuditEvent, JobEventKind};
use drover_proto::{JobPhase, JobProgress, JobResult, JobState, LeasePhase, Outcome};
use drover_store::{Idempotency, JobFilter, ReserveLimits, Store, StoreError};

on_both!(
    duplicate_job_ids_are_refused,
    idempotency_keys_replay_the_same_request_and_refuse_a_different_one,
    list_filters_and_paginates_newest_first,
    events_are_numbered_without_gaps_and_nothing_follows_a_terminal_state,
    leases_reserve_within_caps_and_settle_once_with_a_balanced_ledger,
    audit_events_are_appended_and_read_back_in_order,
    an_audit_batch_is_appended_in_order_after_single_events,
    the_store_clock_is_the_system_clock_within_seconds,
);

fn state(job: &str, phase: JobPhase) -> JobEventKind {
    JobEventKind::JobState(JobState { job_id: job_id(job), state: phase, message: None })
}

async fn duplicate_job_ids_are_refused(store: impl Store) {
    store.submit_job(new_job("job-1", "ci", T0)).await.unwrap();
    let err = store.submit_job(new_job("job-1", "ci", T0)).await.unwrap_err();
    assert!(matches!(err, StoreError::DuplicateJob(_)), "{err}");
}

async fn idempotency_keys_replay_the_same_request_and_refuse_a_different_one(store: impl Store) {
    let with_key = |id: &str, actor: &str, digest: &str| {
        let mut job = new_job(id, actor, T0);
        job.idempotency =
            Some(Idempotency { key: "key-1".to_owned(), request_sha256: digest.to_owned() });
        job
    };
    let first = store.submit_job(with_key("job-1", "ci", "aa")).await.unwrap();
    assert!(!first.replayed);
    let again = store.submit_job(with_key("job-2", "ci", "aa")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.job.id, first.job.id);
    assert!(store.get_job(&job_id("job-2")).await.unwrap().is_none());

    let err = store.submit_job(with_key("job-3", "ci", "bb")).await.unwrap_err();
    assert!(matches!(err, StoreError::IdempotencyConflict), "{err}");

    // Keys are per actor: another token's identical key is a new job.
    let other = store.submit_job(with_key("job-4", "ops", "bb")).await.unwrap();
    assert!(!other.replayed);

    // Purged keys no longer replay.
    assert_eq!(store.purge_idempotency_keys(T0 + 1).await.unwrap(), 2);
    let fresh = store.submit_job(with_key("job-5", "ci", "cc")).await.unwrap();
    assert!(!fresh.replayed);
}

async fn list_filters_and_paginates_newest_first(store: impl Store) {
    for i in 0..7 {
        let mut job = new_job(&format!("job-{i}"), "ci", T0 + i);
        job.spec = spec(
            if i % 2 == 0 { "echo" } else { "torch" },
            &[("team", if i < 3 { "a" } else { "b" })],
        );
        store.submit_job(job).await.unwrap();
    }
    store
        .append_event(&job_id("job-6"), T0 + 100, state("job-6", JobPhase::Running))
        .await
        .unwrap();

    let mut filter = JobFilter { limit: 3, ..JobFilter::default() };
    let mut seen = Vec::new();
    loop {
        let page = store.list_jobs(&filter).await.unwrap();
        seen.extend(page.jobs.iter().map(|j| j.id.to_string()));
        match page.next_cursor {
            Some(cursor) => filter.before = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, ["job-6", "job-5", "job-4", "job-3", "job-2", "job-1", "job-0"]);

    let ids = |page: drover_store::JobPage| {
        page.jobs.into_iter().map(|j| j.id.to_string()).collect::<Vec<_>>()
    };
    let torch = JobFilter { driver: Some("torch".into()), limit: 10, ..JobFilter::default() };
    assert_eq!(ids(store.list_jobs(&torch).await.unwrap()), ["job-5", "job-3", "job-1"]);
    let running = JobFilter { state: Some(JobPhase::Running), limit: 10, ..JobFilter::default() };
    assert_eq!(ids(store.list_jobs(&running).await.unwrap()), ["job-6"]);
    let team_a = JobFilter {
        label: Some(("team".into(), "a".into())),
        driver: Some("echo".into()),
        limit: 10,
        ..JobFilter::default()
    };
    assert_eq!(ids(store.list_jobs(&team_a).await.unwrap()), ["job-2", "job-0"]);
}

async fn events_are_numbered_without_gaps_and_nothing_follows_a_terminal_state(store: impl Store) {
    store.submit_job(new_job("job-1", "ci", T0)).await.unwrap();
    let id = job_id("job-1");
    store.append_event(&id, T0 + 1, state("job-1", JobPhase::Running)).await.unwrap();
    let progress = JobEventKind::JobProgress(JobProgress {
        job_id: id.clone(),
        current: 3.0,
        total: Some(10.0),
        unit: None,
        message: None,
    });
    store.append_event(&id, T0 + 2, progress).await.unwrap();
    let result = JobEventKind::JobResult(JobResult {
        job_id: id.clone(),
        outcome: Outcome::Succeeded,
        output: Some(serde_json::json!({"answer": 42})),
        message: None,
    });
    store.append_event(&id, T0 + 3, result).await.unwrap();
    let last = store.append_event(&id, T0 + 4, state("job-1", JobPhase::Succeeded)).await.unwrap();
    assert_eq!(last.seq, 5);

    let err = store.append_event(&id, T0 + 5, state("job-1", JobPhase::Running)).await.unwrap_err();
    assert!(matches!(err, StoreError::JobFinished { state: JobPhase::Succeeded, .. }), "{err}");

    let job = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobPhase::Succeeded);
    assert_eq!(job.output, Some(serde_json::json!({"answer": 42})));
    assert_eq!(job.updated_unix_ms, T0 + 4);

    let all = store.events_after(&id, 0, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(all[0].event.name(), "job_state");
    let tail = store.events_after(&id, 3, 100).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    assert!(store.unfinished_jobs().await.unwrap().is_empty());

    let missing = store.append_event(&job_id("nope"), T0, state("nope", JobPhase::Running)).await;
    assert!(matches!(missing, Err(StoreError::JobNotFound(_))));
}

async fn leases_reserve_within_caps_and_settle_once_with_a_balanced_ledger(store: impl Store) {
    let limits = |seen: f64| ReserveLimits { daily_cap_usd: 10.0, job_committed_seen_usd: seen };

    store.reserve_lease(&lease("lease-1", "job-1", 4.0), limits(0.0)).await.unwrap();
    // The job's committed amount moved since the gate looked.
    let err = store.reserve_lease(&lease("lease-2", "job-1", 1.0), limits(0.0)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err}");
    store.reserve_lease(&lease("lease-2", "job-1", 5.0), limits(4.0)).await.unwrap();
    let err = store.reserve_lease(&lease("lease-3", "job-2", 1.5), limits(0.0)).await.unwrap_err();
    assert!(matches!(err, StoreError::DailyCap { .. }), "{err}");
    let dup = store.reserve_lease(&lease("lease-1", "job-2", 0.5), limits(0.0)).await.unwrap_err();
    assert!(matches!(dup, StoreError::DuplicateLease(_)), "{dup}");

    let mut running = lease("lease-1", "job-1", 4.0);
    running.phase = LeasePhase::Running;
    running.pending_offer = None;
    running.contracts = vec![contract(9001)];
    running.gpu_model = Some("RTX 4090".into());
    running.gpu_count = Some(1);
    store.update_lease(&running).await.unwrap();
    let stored = store.get_lease(&running.lease_id).await.unwrap().unwrap();
    assert_eq!(stored, running);

    let settled =
        store.settle_lease(&running.lease_id, 1.25, "released", T0 + 60_000).await.unwrap();
    assert_eq!(settled.settled_usd, Some(1.25));
    assert_eq!(settled.phase, LeasePhase::Released);
    // Idempotent, and a settled lease no longer changes.
    let again = store.settle_lease(&running.lease_id, 9.0, "again", T0 + 70_000).await.unwrap();
    assert_eq!(again.settled_usd, Some(1.25));
    let closed = store.update_lease(&running).await.unwrap_err();
    assert!(matches!(closed, StoreError::LeaseClosed(_)), "{closed}");

    let committed = store.committed(&job_id("job-1"), today()).await.unwrap();
    assert_eq!(committed.job_usd, 6.25);
    assert_eq!(committed.day_usd, 6.25);
    let open: Vec<_> =
        store.open_leases().await.unwrap().into_iter().map(|l| l.lease_id.to_string()).collect();
    assert_eq!(open, ["lease-2"]);

    let report = store.ledger_report().await.unwrap();
    assert!(report.balances(), "{report:?}");
    assert_eq!((report.leases, report.open), (2, 1));
    assert_eq!(report.committed_micros, 6_250_000);
}

async fn audit_events_are_appended_and_read_back_in_order(store: impl Store) {
    for i in 0..3 {
        store.append_audit(&audit_event(i)).await.unwrap();
    }
    let events = store.audit_after(1, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].1.request_id.as_deref(), Some("req-1"));
    assert!(events[0].0 < events[1].0);
    store.ping().await.unwrap();
}

async fn an_audit_batch_is_appended_in_order_after_single_events(store: impl Store) {
    let event = audit_event;
    let first = store.append_audit(&event(0)).await.unwrap();
    store.append_audit_batch(&[]).await.unwrap();
    let batch: Vec<AuditEvent> = (1..=5).map(event).collect();
    store.append_audit_batch(&batch).await.unwrap();
    let events = store.audit_after(first - 1, 100).await.unwrap();
    let ids: Vec<_> = events.iter().map(|(_, e)| e.request_id.clone().unwrap()).collect();
    assert_eq!(ids, ["req-0", "req-1", "req-2", "req-3", "req-4", "req-5"]);
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "positions ascend");
}

fn audit_event(i: usize) -> AuditEvent {
    AuditEvent {
        timestamp: "2026-11-22T00:00:00.000Z".to_owned(),
        request_id: Some(format!("req-{i}")),
        actor: "ci".to_owned(),
        action: "job.submit".to_owned(),
        resource: format!("job:job-{i}"),
        result: "ok".to_owned(),
        metadata: serde_json::Map::new(),
    }
}

// --- PostgreSQL: several replicas writing at once ---------------------------------------------

/// Two stores on one database: what two supervisor replicas hold.
async fn two_replicas() -> (drover_store::PgStore, drover_store::PgStore) {
    let options = crate::common::postgres::fresh_database().await;
    let first = drover_store::PgStore::connect_with(options.clone()).await.unwrap();
    let second = drover_store::PgStore::connect_with(options).await.unwrap();
    (first, second)
}

async fn the_store_clock_is_the_system_clock_within_seconds(store: impl Store) {
    // The test's PostgreSQL server runs on this host, so its clock is this host's.
    let before = system_ms();
    let store_ms = store.now_unix_ms().await.unwrap();
    let after = system_ms();
    assert!(
        store_ms + 2_000 >= before && store_ms <= after + 2_000,
        "store clock {store_ms} is not within 2 s of the system clock ({before}..{after})"
    );
}

fn system_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    u64::try_from(now.as_millis()).unwrap()
}

#[tokio::test]
async fn postgres_a_reservation_on_another_day_than_the_databases_is_refused() {
    let store = crate::common::postgres::store().await;
    let limits = ReserveLimits { daily_cap_usd: 10.0, job_committed_seen_usd: 0.0 };
    let today = store.now_unix_ms().await.unwrap() / 86_400_000;
    // A replica whose clock is a day behind (or ahead) books nothing.
    for day in [today - 1, today + 1] {
        let mut skewed = lease("lease-skewed", "job-1", 4.0);
        skewed.day = day;
        let err = store.reserve_lease(&skewed, limits).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotToday { day: d, today: t } if d == day && t == today),
            "{err}"
        );
        assert_eq!(store.committed(&job_id("job-1"), day).await.unwrap().day_usd, 0.0);
    }
    assert!(store.get_lease(&"lease-skewed".parse().unwrap()).await.unwrap().is_none());
    // The database's own day is booked.
    let mut booked = lease("lease-today", "job-1", 4.0);
    booked.day = today;
    store.reserve_lease(&booked, limits).await.unwrap();
    assert_eq!(store.committed(&job_id("job-1"), today).await.unwrap().day_usd, 4.0);
}

#[tokio::test]
async fn postgres_replicas_racing_for_the_last_dollars_never_exceed_the_daily_cap() {
    let (a, b) = two_replicas().await;
    let limits = ReserveLimits { daily_cap_usd: 10.0, job_committed_seen_usd: 0.0 };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            store
                .reserve_lease(&lease(&format!("lease-{i}"), &format!("job-{i}"), 1.0), limits)
                .await
        });
    }
    let (mut granted, mut capped) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(()) => granted += 1,
            Err(StoreError::DailyCap { .. }) => capped += 1,
            Err(other) => panic!("unexpected refusal: {other}"),
        }
    }
    assert_eq!((granted, capped), (10, 30));
    assert_eq!(a.committed(&job_id("job-0"), today()).await.unwrap().day_usd, 10.0);
    let report = b.ledger_report().await.unwrap();
    assert!(report.balances(), "{report:?}");
    assert_eq!(report.committed_micros, 10_000_000);
}

#[tokio::test]
async fn postgres_one_idempotency_key_sent_to_two_replicas_makes_one_job() {
    let (a, b) = two_replicas().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let mut job = new_job(&format!("job-{i}"), "ci", T0);
        job.idempotency =
            Some(Idempotency { key: "retry-me".to_owned(), request_sha256: "aa".to_owned() });
        tasks.spawn(async move { store.submit_job(job).await });
    }
    let mut fresh = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    while let Some(result) = tasks.join_next().await {
        let submitted = result.unwrap().unwrap();
        ids.insert(submitted.job.id.to_string());
        if !submitted.replayed {
            fresh.push(submitted.job.id.to_string());
        }
    }
    assert_eq!(fresh.len(), 1, "exactly one submission creates the job");
    assert_eq!(ids.len(), 1, "every answer names the same job: {ids:?}");
    let page = a.list_jobs(&JobFilter { limit: 100, ..JobFilter::default() }).await.unwrap();
    assert_eq!(page.jobs.len(), 1);
}

#[tokio::test]
async fn postgres_events_from_two_replicas_are_numbered_without_gaps_and_end_at_the_terminal_one() {
    let (a, b) = two_replicas().await;
    a.submit_job(new_job("job-1", "ci", T0)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            if i == 20 {
                let done = state("job-1", JobPhase::Succeeded);
                return store.append_event(&job_id("job-1"), T0 + 1, done).await;
            }
            let progress = JobEventKind::JobProgress(JobProgress {
                job_id: job_id("job-1"),
                current: f64::from(i),
                total: None,
                unit: None,
                message: None,
            });
            store.append_event(&job_id("job-1"), T0 + 1, progress).await
        });
    }
    let mut refused = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => {}
            Err(StoreError::JobFinished { .. }) => refused += 1,
            Err(other) => panic!("unexpected refusal: {other}"),
        }
    }
    let events = b.events_after(&job_id("job-1"), 0, 100).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=41 - refused).collect::<Vec<_>>(), "numbered without gaps");
    let last = events.last().unwrap();
    assert_eq!(last.event, state("job-1", JobPhase::Succeeded), "nothing after the terminal state");
}

#[tokio::test]
async fn postgres_the_ledger_report_notices_an_entry_without_its_lease_state() {
    use sqlx::Connection as _;
    let options = crate::common::postgres::fresh_database().await;
    let store = drover_store::PgStore::connect_with(options.clone()).await.unwrap();
    let limits = ReserveLimits { daily_cap_usd: 10.0, job_committed_seen_usd: 0.0 };
    store.reserve_lease(&lease("lease-1", "job-1", 2.0), limits).await.unwrap();
    assert!(store.ledger_report().await.unwrap().balances());
    let mut raw = sqlx::PgConnection::connect_with(&options).await.unwrap();
    sqlx::query("INSERT INTO ledger (lease_id, job_id, day, kind, amount_micros, at_unix_ms) VALUES ('lease-1', 'job-1', 1, 'charge', 5, 1)")
        .execute(&mut raw)
        .await
        .unwrap();
    let report = store.ledger_report().await.unwrap();
    assert!(!report.balances());
    assert_eq!(report.unbalanced.len(), 1);
}
