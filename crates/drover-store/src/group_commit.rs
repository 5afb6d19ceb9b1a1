//! Group commit of job submissions: concurrent [`Store::submit_job`](crate::Store::submit_job)
//! calls share one transaction and one fsync.
//!
//! With `synchronous = FULL` every commit waits for the disk, and on a real disk that wait,
//! not SQLite's work, bounds how many jobs a second one writer can accept. So submissions
//! queue here, and one batch at a time takes every submission waiting at that moment (at most
//! [`MAX_BATCH`]), inserts each job with its first event in one `BEGIN IMMEDIATE`
//! transaction, commits once, and only then answers each caller. A batch runs as a task on the
//! caller's tokio runtime, started by the submission that finds none running and ending when
//! the queue is empty, so a caller that goes away mid-commit strands no one.
//!
//! The answers are those of one transaction per job:
//!
//! - submissions are applied in arrival order, so a second submission with the same
//!   idempotency key in one batch replays the first's job, and a repeated job id is
//!   [`StoreError::DuplicateJob`];
//! - a refusal (a repeated job id, an idempotency key reused for a different request) is
//!   decided before that job writes anything, so the rest of the batch goes on;
//! - any other failure rolls the whole batch back and runs its submissions again, one
//!   transaction each, so every caller gets its own answer and nothing is acknowledged that
//!   was not committed.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sqlx::SqlitePool;
use tokio::sync::oneshot;

use crate::error::{Context, StoreError};
use crate::model::{NewJob, Submitted};
use crate::sqlite::{Inserted, insert_job};

/// The most submissions one transaction takes; the rest wait for the next.
pub(crate) const MAX_BATCH: usize = 128;

/// The queue of submissions waiting for a commit.
#[derive(Debug, Default)]
pub(crate) struct Submissions {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Pending>,
    /// Whether a batch task is running (it empties the queue before it ends).
    running: bool,
    /// Transactions committed so far, for tests.
    #[cfg(test)]
    commits: usize,
}

/// One submission and where its answer goes.
#[derive(Debug)]
pub(crate) struct Pending {
    job: NewJob,
    reply: oneshot::Sender<Result<Submitted, StoreError>>,
}

impl Submissions {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue holds no invariant a panic elsewhere could break half-way.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` for the next commit and waits for its answer.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        writer: &SqlitePool,
        job: NewJob,
    ) -> Result<Submitted, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push(Pending { job, reply });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            let this = Arc::clone(self);
            let writer = writer.clone();
            tokio::spawn(async move { this.run(writer).await });
        }
        // The batch task ended without answering: it panicked or its runtime shut down.
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Backend {
                operation: "accepting a job",
                source: sqlx::Error::WorkerCrashed,
            })
        })
    }

    /// Commits batches until the queue is empty.
    async fn run(&self, writer: SqlitePool) {
        let _running = Running(self);
        loop {
            let batch = {
                let mut queue = self.lock();
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                let n = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..n).collect::<Vec<_>>()
            };
            self.commit(&writer, batch).await;
        }
    }

    /// Commits `batch` in one transaction, or, if that fails, each in its own; answers all.
    pub(crate) async fn commit(&self, writer: &SqlitePool, batch: Vec<Pending>) {
        match self.transaction(writer, &batch).await {
            Ok(outcomes) => {
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    let answer = outcome.map(|inserted| inserted.into_submitted(pending.job));
                    // A caller that went away no longer wants its answer; the job stands.
                    let _ = pending.reply.send(answer);
                }
            }
            Err(_) if batch.len() > 1 => {
                for pending in batch {
                    let answer =
                        match self.transaction(writer, std::slice::from_ref(&pending)).await {
                            Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| {
                                Err(StoreError::Corrupt { what: "a batch without its outcome" })
                            }),
                            Err(error) => Err(error),
                        };
                    let _ = pending.reply.send(answer.map(|i| i.into_submitted(pending.job)));
                }
            }
            Err(error) => {
                if let Some(pending) = batch.into_iter().next() {
                    let _ = pending.reply.send(Err(error));
                }
            }
        }
    }

    /// One transaction over `batch`: each submission's outcome, or the failure that rolled
    /// the whole transaction back.
    async fn transaction(
        &self,
        writer: &SqlitePool,
        batch: &[Pending],
    ) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.during("accepting a job")?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for pending in batch {
            match insert_job(&mut tx, &pending.job).await {
                Ok(inserted) => outcomes.push(Ok(inserted)),
                Err(refusal @ (StoreError::DuplicateJob(_) | StoreError::IdempotencyConflict)) => {
                    outcomes.push(Err(refusal));
                }
                // Dropping the transaction rolls it back.
                Err(failure) => return Err(failure),
            }
        }
        // The acknowledgement point: after this commit (fsynced, synchronous = FULL) every job
        // of the batch survives any crash; no caller has been answered before it.
        tx.commit().await.during("committing a job")?;
        #[cfg(test)]
        {
            self.lock().commits += 1;
        }
        Ok(outcomes)
    }
}

/// Marks the batch task stopped however it ends. On a panic or a cancelled task the queued
/// submissions are dropped, so their callers get an error instead of waiting forever.
struct Running<'a>(&'a Submissions);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        if queue.running {
            queue.running = false;
            queue.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::Idempotency;
    use crate::{SqliteStore, Store};
    use drover_proto::api::JobSpec;

    fn job(id: &str, idempotency: Option<(&str, &str)>) -> NewJob {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "driver": "echo", "action": "run", "max_runtime_s": 60, "budget_usd": 1.0,
            "labels": {"team": "store"}
        }))
        .unwrap();
        NewJob {
            id: id.parse().unwrap(),
            spec,
            submitted_by: "ci".to_owned(),
            at_unix_ms: 1_700_000_000_000,
            idempotency: idempotency.map(|(key, digest)| Idempotency {
                key: key.to_owned(),
                request_sha256: digest.to_owned(),
            }),
        }
    }

    fn pending(job: NewJob) -> (Pending, oneshot::Receiver<Result<Submitted, StoreError>>) {
        let (reply, answer) = oneshot::channel();
        (Pending { job, reply }, answer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submissions_share_commits_and_each_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        let submits = (0..64).map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.submit_job(job(&format!("job-{n}"), None)).await })
        });
        for (n, handle) in submits.collect::<Vec<_>>().into_iter().enumerate() {
            let submitted = handle.await.unwrap().unwrap();
            assert_eq!(submitted.job.id.as_str(), format!("job-{n}"));
            assert!(!submitted.replayed);
        }
        let commits = store.submissions.lock().commits;
        assert!(commits < 64, "64 concurrent submissions took {commits} commits");
        store.close().await;
        // Every job, its label and its first event are on disk.
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        for n in 0..64 {
            let id = format!("job-{n}").parse().unwrap();
            let stored = store.get_job(&id).await.unwrap().unwrap();
            assert_eq!(stored.spec.labels["team"], "store");
            let events = store.events_after(&id, 0, 10).await.unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].seq, 1);
        }
    }

    #[tokio::test]
    async fn one_batch_answers_as_one_transaction_per_job_would() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        let (first, first_answer) = pending(job("job-a", Some(("k", "d1"))));
        let (replay, replay_answer) = pending(job("job-b", Some(("k", "d1"))));
        let (conflict, conflict_answer) = pending(job("job-c", Some(("k", "d2"))));
        let (duplicate, duplicate_answer) = pending(job("job-a", None));
        let (other, other_answer) = pending(job("job-d", None));
        store
            .submissions
            .commit(&store.writer, vec![first, replay, conflict, duplicate, other])
            .await;
        assert_eq!(store.submissions.lock().commits, 1, "one transaction for the batch");
        let first = first_answer.await.unwrap().unwrap();
        assert!(!first.replayed);
        let replay = replay_answer.await.unwrap().unwrap();
        assert!(replay.replayed, "the same key and request replays the first job");
        assert_eq!(replay.job.id, first.job.id);
        assert!(matches!(conflict_answer.await.unwrap(), Err(StoreError::IdempotencyConflict)));
        assert!(matches!(duplicate_answer.await.unwrap(), Err(StoreError::DuplicateJob(_))));
        assert!(!other_answer.await.unwrap().unwrap().replayed);
        for (id, stored) in [("job-a", true), ("job-b", false), ("job-c", false), ("job-d", true)] {
            let found = store.get_job(&id.parse().unwrap()).await.unwrap();
            assert_eq!(found.is_some(), stored, "{id}");
        }
    }
}
