//! The SQLite store on a real file: jobs, events, idempotency, leases and the ledger, audit,
//! durability across reopening.

use crate::common::*;

use drover_proto::JobPhase;
use drover_store::{DEFAULT_FILE_NAME, ReserveLimits, SqliteStore, Store};

async fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(&dir.path().join("data")).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn zero_setup_creates_a_private_directory_and_survives_reopen() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, store) = open().await;
    let data = dir.path().join("data");
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(data.join(DEFAULT_FILE_NAME).exists());
    store.submit_job(new_job("job-1", "ci", T0)).await.unwrap();
    store.close().await;

    let again = SqliteStore::open_in(&data).await.unwrap();
    let job = again.get_job(&job_id("job-1")).await.unwrap().unwrap();
    assert_eq!(job.state, JobPhase::Queued);
    assert_eq!(job.submitted_by, "ci");
    assert_eq!(job.spec.params["n"], 1);
    // WAL mode is on.
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(
            &sqlx::SqlitePool::connect(&format!(
                "sqlite://{}",
                data.join(DEFAULT_FILE_NAME).display()
            ))
            .await
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn the_ledger_report_notices_an_entry_without_its_lease_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .reserve_lease(
            &lease("lease-1", "job-1", 2.0),
            ReserveLimits { daily_cap_usd: 10.0, job_committed_seen_usd: 0.0 },
        )
        .await
        .unwrap();
    assert!(store.ledger_report().await.unwrap().balances());
    // A charge written without settling the lease (what a torn settlement would leave).
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("INSERT INTO ledger (lease_id, job_id, day, kind, amount_micros, at_unix_ms) VALUES ('lease-1', 'job-1', 1, 'charge', 5, 1)")
        .execute(&raw)
        .await
        .unwrap();
    let report = store.ledger_report().await.unwrap();
    assert!(!report.balances());
    assert_eq!(report.unbalanced.len(), 1);
}
