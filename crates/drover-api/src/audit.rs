//! Audit events: one JSON line per API request and per job event, appended to the store
//! (through [`crate::Backend::audit`]) and, if configured, to a file.
//!
//! Writing is off the request path: [`Auditor::record`] queues the event (waiting only when
//! 4096 are already queued, so a slow store slows requests down instead of losing events) and
//! a writer task appends them in batches. Every event names its actor by token name; nothing
//! that reaches an audit event is ever a token: the auth extractor passes on only the name.

use std::path::PathBuf;
use std::sync::Arc;

use drover_proto::api::AuditEvent;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use crate::backend::Backend;

/// Events queued before [`Auditor::record`] waits.
pub const QUEUE: usize = 4096;
/// Events written per batch at most.
pub const BATCH: usize = 256;

enum Item {
    Event(Box<AuditEvent>),
    Flush(oneshot::Sender<()>),
}

/// The audit sink. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Auditor {
    queue: mpsc::Sender<Item>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit item")
    }
}

impl Auditor {
    /// Starts the writer task (on the current tokio runtime) that appends to `backend` and,
    /// when given, to `file` (created `0600`, opened for append).
    pub fn start(backend: Arc<dyn Backend>, file: Option<PathBuf>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(receiver, backend, file));
        Self { queue }
    }

    /// Queues one event with the current time.
    pub async fn record(
        &self,
        request_id: Option<&str>,
        actor: &str,
        action: &str,
        resource: &str,
        result: &str,
        metadata: Map<String, Value>,
    ) {
        let event = AuditEvent {
            timestamp: drover_proto::text::rfc3339_now(),
            request_id: request_id.map(str::to_owned),
            actor: actor.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            result: result.to_owned(),
            metadata,
        };
        self.submit(event).await;
    }

    /// Queues a prepared event.
    pub async fn submit(&self, event: AuditEvent) {
        if self.queue.send(Item::Event(Box::new(event))).await.is_err() {
            tracing::error!("the audit writer has stopped; an audit event was not written");
        }
    }

    /// Waits until every event queued before this call has been written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Item::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_loop(
    mut receiver: mpsc::Receiver<Item>,
    backend: Arc<dyn Backend>,
    file: Option<PathBuf>,
) {
    let mut file = match file {
        None => None,
        Some(path) => match open_append(&path).await {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot open the audit file; auditing to the store only");
                None
            }
        },
    };
    while let Some(first) = receiver.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut item = Some(first);
        while let Some(next) = item.take() {
            match next {
                Item::Event(event) => batch.push(*event),
                Item::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                item = receiver.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if let Some(handle) = file.as_mut() {
                let mut lines = Vec::new();
                for event in &batch {
                    if serde_json::to_writer(&mut lines, event).is_ok() {
                        lines.push(b'\n');
                    }
                }
                // tokio's `File` hands a write to a blocking thread and returns before it is
                // done; only `flush` waits for it. Without it a flushed auditor could leave the
                // last batch unwritten (seen under load: the file one batch behind the store).
                let written = match handle.write_all(&lines).await {
                    Ok(()) => handle.flush().await,
                    Err(error) => Err(error),
                };
                if let Err(error) = written {
                    tracing::error!(%error, "writing the audit file failed");
                }
            }
            let count = batch.len();
            if let Err(error) = backend.audit(batch).await {
                tracing::error!(events = count, error = %crate::error::chain(&error), "appending audit events to the store failed");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn open_append(path: &std::path::Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).await
}
