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
//!
//! A batch of several jobs without idempotency keys, none repeating another's id, is written
//! with one multi-row statement per table (jobs, labels, first events) instead of one per job:
//! sqlx runs SQLite on a thread of its own and every statement is a round trip to it, which
//! the benchmark's profile showed costing more than SQLite's work. A batch with an idempotency
//! key in it takes the statement-per-job path, where each key is looked up in order.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use drover_proto::api::JobEventKind;
use drover_proto::{JobPhase, JobState};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};
use tokio::sync::oneshot;

use super::{Inserted, get, insert_job, phase_str, to_i64, to_json};
use crate::error::{Context, StoreError};
use crate::model::{NewJob, Submitted};

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
    /// The replica that accepts it (its owner), if the store handle speaks for one.
    owner: Option<Arc<str>>,
    reply: oneshot::Sender<Result<Submitted, StoreError>>,
}

impl Submissions {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock()
    }

    /// Queues `job` for the next commit and waits for its answer.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        writer: &SqlitePool,
        job: NewJob,
        owner: Option<Arc<str>>,
    ) -> Result<Submitted, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push(Pending { job, owner, reply });
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
        // On any failure, dropping the transaction rolls it back.
        let outcomes = if multi_row(batch) {
            insert_jobs(&mut tx, batch).await?
        } else {
            let mut outcomes = Vec::with_capacity(batch.len());
            for pending in batch {
                match insert_job(&mut tx, &pending.job, pending.owner.as_deref()).await {
                    Ok(inserted) => outcomes.push(Ok(inserted)),
                    Err(
                        refusal @ (StoreError::DuplicateJob(_) | StoreError::IdempotencyConflict),
                    ) => outcomes.push(Err(refusal)),
                    Err(failure) => return Err(failure),
                }
            }
            outcomes
        };
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

/// Whether `batch` can be written with one statement per table: more than one job, no
/// idempotency key (each must be looked up in arrival order), no id given twice (the first
/// must win, and a multi-row insert does not say which row did).
fn multi_row(batch: &[Pending]) -> bool {
    let mut ids = HashSet::with_capacity(batch.len());
    batch.len() > 1
        && batch.iter().all(|p| p.job.idempotency.is_none() && ids.insert(p.job.id.as_str()))
}

/// Inserts every job of `batch` (see [`multi_row`]) with its labels and its first event in
/// three statements; a job whose id is taken is refused as a duplicate, the others stand.
async fn insert_jobs(
    tx: &mut Transaction<'static, Sqlite>,
    batch: &[Pending],
) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
    let specs =
        batch.iter().map(|p| to_json(&p.job.spec, "job spec")).collect::<Result<Vec<_>, _>>()?;
    let mut jobs = QueryBuilder::<Sqlite>::new(
        "INSERT INTO jobs (id, driver, action, state, submitted_by, spec, created_unix_ms, \
         updated_unix_ms, last_event_seq, owner_replica) ",
    );
    jobs.push_values(batch.iter().zip(&specs), |mut row, (pending, spec)| {
        let job = &pending.job;
        row.push_bind(job.id.as_str())
            .push_bind(job.spec.driver.as_str())
            .push_bind(job.spec.action.as_str())
            .push_bind(phase_str(JobPhase::Queued))
            .push_bind(job.submitted_by.as_str())
            .push_bind(spec.as_str())
            .push_bind(to_i64(job.at_unix_ms))
            .push_bind(to_i64(job.at_unix_ms))
            .push_bind(1_i64)
            .push_bind(pending.owner.as_deref());
    });
    jobs.push(" ON CONFLICT (id) DO NOTHING RETURNING id, seq");
    let rows = jobs.build().fetch_all(&mut **tx).await.during("inserting jobs")?;
    let mut seqs = HashMap::with_capacity(rows.len());
    for row in &rows {
        seqs.insert(get::<String>(row, "id")?, get::<i64>(row, "seq")?);
    }
    let inserted: Vec<(i64, &NewJob)> = batch
        .iter()
        .filter_map(|p| seqs.get(p.job.id.as_str()).map(|seq| (*seq, &p.job)))
        .collect();

    let labels: Vec<(i64, &String, &String)> = inserted
        .iter()
        .flat_map(|(seq, job)| job.spec.labels.iter().map(move |(k, v)| (*seq, k, v)))
        .collect();
    // Three parameters a row: far below SQLite's limit of 32,766 even for a full batch of jobs
    // at their most labels.
    if !labels.is_empty() {
        let mut insert =
            QueryBuilder::<Sqlite>::new("INSERT INTO job_labels (job_seq, key, value) ");
        insert.push_values(&labels, |mut row, (seq, key, value)| {
            row.push_bind(*seq).push_bind(key.as_str()).push_bind(value.as_str());
        });
        insert.build().execute(&mut **tx).await.during("inserting job labels")?;
    }

    let queued = inserted
        .iter()
        .map(|(seq, job)| {
            let kind = JobEventKind::JobState(JobState {
                job_id: job.id.clone(),
                state: JobPhase::Queued,
                message: None,
            });
            Ok((*seq, to_i64(job.at_unix_ms), kind.name(), to_json(&kind, "job event")?))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if !queued.is_empty() {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO job_events (job_seq, seq, at_unix_ms, kind, body) ",
        );
        insert.push_values(&queued, |mut row, (seq, at, kind, body)| {
            row.push_bind(*seq)
                .push_bind(1_i64)
                .push_bind(*at)
                .push_bind(*kind)
                .push_bind(body.as_str());
        });
        insert.build().execute(&mut **tx).await.during("appending a job event")?;
    }

    Ok(batch
        .iter()
        .map(|p| {
            if seqs.contains_key(p.job.id.as_str()) {
                Ok(Inserted::New)
            } else {
                Err(StoreError::DuplicateJob(p.job.id.clone()))
            }
        })
        .collect())
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
        (Pending { job, owner: None, reply }, answer)
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

    #[tokio::test]
    async fn a_batch_without_keys_is_written_by_rows_and_refuses_only_taken_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        store.submit_job(job("job-taken", None)).await.unwrap();
        let mut labelled = job("job-labels", None);
        labelled.spec.labels.insert("zone".to_owned(), "eu".to_owned());
        let batch = [job("job-1", None), job("job-taken", None), labelled, job("job-2", None)];
        assert!(multi_row(&batch.iter().cloned().map(|j| pending(j).0).collect::<Vec<_>>()));
        let (pendings, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(pending).unzip();
        let commits = store.submissions.lock().commits;
        store.submissions.commit(&store.writer, pendings).await;
        assert_eq!(store.submissions.lock().commits, commits + 1, "one transaction");
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.unwrap());
        }
        assert!(
            matches!(&results[1], Err(StoreError::DuplicateJob(id)) if id.as_str() == "job-taken")
        );
        for (n, id) in [(0, "job-1"), (2, "job-labels"), (3, "job-2")] {
            let submitted = results[n].as_ref().unwrap();
            assert_eq!(submitted.job.id.as_str(), id);
            let id = id.parse().unwrap();
            let stored = store.get_job(&id).await.unwrap().unwrap();
            assert_eq!(stored.state, JobPhase::Queued);
            assert_eq!(stored.spec.labels["team"], "store");
            let events = store.events_after(&id, 0, 10).await.unwrap();
            assert_eq!(events.len(), 1, "{id}: exactly the first event");
            assert_eq!(events[0].seq, 1);
        }
        let labelled = store.get_job(&"job-labels".parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(labelled.spec.labels["zone"], "eu");
        // The taken job is untouched: still one event.
        let taken = "job-taken".parse().unwrap();
        assert_eq!(store.events_after(&taken, 0, 10).await.unwrap().len(), 1);
    }

    #[test]
    fn keys_or_repeated_ids_take_the_statement_per_job_path() {
        let batch = |jobs: Vec<NewJob>| jobs.into_iter().map(|j| pending(j).0).collect::<Vec<_>>();
        assert!(!multi_row(&batch(vec![job("job-1", None)])), "one job");
        assert!(!multi_row(&batch(vec![job("job-1", None), job("job-1", None)])), "repeated id");
        assert!(!multi_row(&batch(vec![job("job-1", Some(("k", "d"))), job("job-2", None)])));
        assert!(multi_row(&batch(vec![job("job-1", None), job("job-2", None)])));
    }
}
