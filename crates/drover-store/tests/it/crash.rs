//! Crash test: a writer is killed with SIGKILL at many points while it submits jobs, moves
//! them through their states and reserves, updates and settles leases. After every kill the
//! store is reopened and checked: every job the writer acknowledged is there, every job it
//! finished is terminal, every job's history is numbered without gaps and nothing follows a
//! terminal state, and the ledger balances.
//!
//! The writer is this same test binary, started again with `DROVER_CRASH_CHILD` set; it
//! prints `ack <id>` only after `submit_job` returned (the acknowledgement a client would
//! get) and `done <id>` after the terminal state committed.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;
use drover_proto::api::JobEventKind;
use drover_proto::{JobPhase, JobState, LeasePhase};
use drover_store::{Idempotency, JobFilter, ReserveLimits, SqliteStore, Store};

const CHILD_ENV: &str = "DROVER_CRASH_CHILD";
const ROUND_ENV: &str = "DROVER_CRASH_ROUND";
const ROUNDS: u32 = 24;

#[test]
fn kill_9_at_many_points_loses_no_acknowledged_job_and_the_ledger_balances() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round: u32 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
        return child(std::path::Path::new(&dir), round);
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut acked_total = 0;
    let mut interrupted_rounds = 0;
    for round in 0..ROUNDS {
        let (acked, done, finished_run) = run_child_and_kill(dir.path(), round);
        if !finished_run {
            interrupted_rounds += 1;
        }
        acked_total += acked.len();
        runtime.block_on(check(dir.path(), round, &acked, &done));
    }
    // The kills must have landed while the writer was working, not after it was done.
    assert!(interrupted_rounds >= ROUNDS - 2, "only {interrupted_rounds} rounds were interrupted");
    assert!(acked_total > 0, "no job was ever acknowledged");
}

/// Starts a writer for `round`, kills it at a point chosen by the round, and returns the
/// jobs it acknowledged and finished.
fn run_child_and_kill(dir: &std::path::Path, round: u32) -> (Vec<String>, Vec<String>, bool) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::kill_9_at_many_points_loses_no_acknowledged_job_and_the_ledger_balances",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Kill after a number of acknowledgements that varies with the round, plus a delay that
    // varies in microseconds, so kills land inside transactions, between them, and during
    // lease settlement.
    let acks_before_kill = (round * 7) % 23;
    let extra_delay = Duration::from_micros(u64::from((round * 1_733) % 6_000));
    let mut acked = Vec::new();
    let mut done = Vec::new();
    let mut finished_run = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.len() < acks_before_kill as usize && Instant::now() < deadline {
        match lines_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => record(&line, &mut acked, &mut done, &mut finished_run),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    std::thread::sleep(extra_delay);
    if let Some(status) = child.try_wait().unwrap() {
        panic!("round {round}: the writer exited by itself ({status}); run it alone to see why");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    // Everything the writer printed before it died was acknowledged.
    for line in lines_rx.try_iter() {
        record(&line, &mut acked, &mut done, &mut finished_run);
    }
    (acked, done, finished_run)
}

fn record(line: &str, acked: &mut Vec<String>, done: &mut Vec<String>, finished: &mut bool) {
    match line.split_once(' ') {
        Some(("ack", id)) => acked.push(id.to_owned()),
        Some(("done", id)) => done.push(id.to_owned()),
        _ if line == "finished" => *finished = true,
        _ => {}
    }
}

async fn check(dir: &std::path::Path, round: u32, acked: &[String], done: &[String]) {
    let store = SqliteStore::open_in(dir).await.unwrap();
    for id in acked {
        let job = store.get_job(&job_id(id)).await.unwrap();
        assert!(job.is_some(), "round {round}: acknowledged job {id} is missing");
    }
    for id in done {
        let job = store.get_job(&job_id(id)).await.unwrap().unwrap();
        assert!(job.state.is_terminal(), "round {round}: finished job {id} is {:?}", job.state);
    }
    // Every job's history: 1..=n without gaps, `queued` first, nothing after a terminal
    // state, and the job's state is its last state event.
    let mut filter = JobFilter { limit: 500, ..JobFilter::default() };
    loop {
        let page = store.list_jobs(&filter).await.unwrap();
        for job in &page.jobs {
            let events = store.events_after(&job.id, 0, 10_000).await.unwrap();
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            let expected: Vec<u64> = (1..=events.len() as u64).collect();
            assert_eq!(seqs, expected, "round {round}: {} has gaps", job.id);
            let states: Vec<JobPhase> = events
                .iter()
                .filter_map(|e| match &e.event {
                    JobEventKind::JobState(s) => Some(s.state),
                    _ => None,
                })
                .collect();
            assert_eq!(states.first(), Some(&JobPhase::Queued), "round {round}: {}", job.id);
            assert_eq!(states.last(), Some(&job.state), "round {round}: {}", job.id);
            if let Some(end) = states.iter().position(|s| s.is_terminal()) {
                assert_eq!(
                    end,
                    states.len() - 1,
                    "round {round}: {} went on after its end",
                    job.id
                );
            }
        }
        match page.next_cursor {
            Some(cursor) => filter.before = Some(cursor),
            None => break,
        }
    }
    let report = store.ledger_report().await.unwrap();
    assert!(report.balances(), "round {round}: the ledger does not balance: {report:?}");
    store.close().await;
}

/// The writer: works until killed. Each job is submitted with an idempotency key (and every
/// third one submitted twice), moved to `running`, given a lease that is reserved, updated
/// and settled, and finished.
fn child(dir: &std::path::Path, round: u32) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open_in(dir).await.unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0..400u64 {
            let id = format!("job-r{round}-{i}");
            let mut new = new_job(&id, "crash", T0 + i);
            new.idempotency = Some(Idempotency {
                key: format!("key-{round}-{i}"),
                request_sha256: "0".repeat(64),
            });
            let submitted = store.submit_job(new.clone()).await.unwrap();
            writeln!(out, "ack {}", submitted.job.id).unwrap();
            out.flush().unwrap();
            if i % 3 == 0 {
                let replay = store.submit_job(new).await.unwrap();
                assert!(replay.replayed);
            }
            let job = job_id(&id);
            let set = |phase| {
                JobEventKind::JobState(JobState {
                    job_id: job.clone(),
                    state: phase,
                    message: None,
                })
            };
            store.append_event(&job, T0 + i, set(JobPhase::Running)).await.unwrap();

            let lease_id = format!("lease-r{round}-{i}");
            let mut record = lease(&lease_id, &id, 0.5 + (i % 5) as f64 * 0.25);
            let seen = store.committed(&job, today()).await.unwrap().job_usd;
            let limits = ReserveLimits { daily_cap_usd: 1_000_000.0, job_committed_seen_usd: seen };
            store.reserve_lease(&record, limits).await.unwrap();
            record.phase = LeasePhase::Running;
            record.pending_offer = None;
            record.contracts = vec![contract(10_000 + i)];
            store.update_lease(&record).await.unwrap();
            if i % 4 != 3 {
                record.contracts[0].gone_unix_ms = Some(T0 + i + 5);
                store.update_lease(&record).await.unwrap();
                store
                    .settle_lease(&record.lease_id, 0.1 * (i % 7) as f64, "released", T0 + i)
                    .await
                    .unwrap();
            }
            let end = if i % 5 == 4 { JobPhase::Failed } else { JobPhase::Succeeded };
            store.append_event(&job, T0 + i, set(end)).await.unwrap();
            writeln!(out, "done {id}").unwrap();
            out.flush().unwrap();
        }
        writeln!(out, "finished").unwrap();
        out.flush().unwrap();
        // Stay alive until killed, like a supervisor would.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}
