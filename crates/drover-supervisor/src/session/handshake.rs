//! The handshake: `hello` within `hello_timeout_ms`, a protocol version in common, every
//! declared action's params schema compiled (shared with the driver's other sessions), then
//! `welcome`; and the session's place in its driver's ready list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use drover_proto::{ErrorCode, Message, MsgId, SessionId, Welcome, WireError};
use drover_transport::{Inbound, SchemaChecker};
use serde_json::{Map, json};
use tokio::time::Instant;

use super::{End, Session, bounded, flatten, wait_shutdown};
use crate::broker::wire;
use crate::registry::SessionHandle;

impl Session {
    /// Waits for `hello` and answers it. `Err(None)`: the process died first.
    pub(super) async fn handshake(
        &mut self,
        shutdown: &mut tokio::sync::watch::Receiver<Option<Duration>>,
    ) -> Result<Arc<BTreeMap<drover_proto::ActionName, Arc<SchemaChecker>>>, Option<End>> {
        let timeout_ms = self.driver.spec.config.hello_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        loop {
            tokio::select! {
                inbound = self.conn.recv() => match inbound {
                    Ok(Some(Inbound::Request { id, msg: Message::Hello(hello) })) => {
                        return self.answer_hello(id, hello).await.map_err(Some);
                    }
                    Ok(Some(Inbound::Request { id, msg })) => {
                        let error = wire(ErrorCode::NotReady, format!("{} before hello", msg.message_type()));
                        self.reply(id, error).await.map_err(Some)?;
                        self.count_violation("a request before hello").map_err(Some)?;
                    }
                    Ok(Some(Inbound::Event(msg))) => {
                        let error = wire(ErrorCode::NotReady, format!("{} before hello", msg.message_type()));
                        self.send_event(error).await.map_err(Some)?;
                        self.count_violation("an event before hello").map_err(Some)?;
                    }
                    Ok(Some(Inbound::Reply { .. })) => {}
                    Ok(Some(Inbound::Rejected(invalid))) => {
                        self.count_violation(&invalid.to_string()).map_err(Some)?;
                    }
                    Ok(None) => {
                        let step = self.inner.options.stop_step;
                        if let Ok(death) = tokio::time::timeout(step, &mut self.process.death).await {
                            self.death = Some(flatten(death));
                            self.note = Some("died before hello".to_owned());
                            return Err(None);
                        }
                        return Err(Some(End::polite("the driver closed its transport before hello")));
                    }
                    Err(error) => return Err(Some(End::kill(format!("broken transport before hello: {error}")))),
                },
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Some(End::kill(format!("no hello within {timeout_ms} ms"))));
                }
                _ = wait_shutdown(shutdown) => {
                    return Err(Some(End::kill("supervisor shutdown before hello")));
                }
                death = &mut self.process.death => {
                    self.death = Some(flatten(death));
                    self.note = Some("died before hello".to_owned());
                    return Err(None);
                }
            }
        }
    }

    async fn answer_hello(
        &mut self,
        id: MsgId,
        hello: drover_proto::Hello,
    ) -> Result<Arc<BTreeMap<drover_proto::ActionName, Arc<SchemaChecker>>>, End> {
        let supported = drover_proto::PROTOCOL_VERSIONS;
        let Some(version) =
            hello.protocol_versions.iter().copied().filter(|v| supported.contains(v)).max()
        else {
            let mut details = Map::new();
            details.insert("supported".into(), json!(supported));
            details.insert("offered".into(), json!(hello.protocol_versions));
            let error = WireError {
                code: ErrorCode::VersionMismatch,
                message: "no protocol version in common".to_owned(),
                violations: Vec::new(),
                details: Some(details),
            };
            self.reply(id, error).await?;
            return Err(End::polite(format!(
                "version mismatch: the driver offers {:?}, the supervisor speaks {supported:?}",
                hello.protocol_versions
            )));
        };
        let mut checkers = BTreeMap::new();
        for (action, schema) in &hello.actions {
            match self.driver.checker(&schema.0) {
                Ok(checker) => {
                    checkers.insert(action.clone(), checker);
                }
                Err(error) => {
                    let reason =
                        format!("action {action}: params schema does not compile: {error}");
                    let error = WireError {
                        code: ErrorCode::SchemaViolation,
                        message: bounded(&reason),
                        violations: vec![drover_proto::Violation {
                            instance_path: format!("/msg/actions/{action}"),
                            schema_path: String::new(),
                            message: "not a valid JSON Schema (draft 2020-12)".to_owned(),
                        }],
                        details: None,
                    };
                    self.reply(id, error).await?;
                    return Err(End::polite(format!("invalid hello: {reason}")));
                }
            }
        }
        if hello.driver.name != *self.name() {
            tracing::warn!(driver = %self.name(), announced = %hello.driver.name, "the driver announces another name");
        }
        if hello.schema_sha256 != drover_proto::schema::schema_set_sha256() {
            tracing::info!(driver = %self.name(), "the driver was built against another schema set; the versions agree");
        }
        let max_frame_bytes = hello
            .max_frame_bytes
            .unwrap_or(drover_transport::codec::DEFAULT_MAX_FRAME_BYTES)
            .min(self.inner.options.max_frame_bytes);
        let session_id: SessionId = format!("s{}", self.id)
            .parse()
            .map_err(|e| End::kill(format!("internal: session id: {e}")))?;
        let welcome = Welcome {
            protocol_version: version,
            session_id,
            heartbeat_ms: self.driver.spec.config.heartbeat_ms,
            max_frame_bytes,
        };
        self.reply(id, welcome).await?;
        self.conn.set_max_frame_bytes(max_frame_bytes);
        {
            let mut state = self.driver.state.lock();
            state.version = Some(hello.driver.version.clone());
            state.actions =
                hello.actions.into_iter().map(|(name, schema)| (name, schema.0)).collect();
        }
        tracing::info!(driver = %self.name(), session = self.id, version = %hello.driver.version, protocol = version, "driver session ready");
        Ok(Arc::new(checkers))
    }

    pub(super) fn register(
        &mut self,
        checkers: Arc<BTreeMap<drover_proto::ActionName, Arc<SchemaChecker>>>,
    ) {
        let handle = SessionHandle {
            id: self.id,
            commands: self.commands_tx.clone(),
            jobs: Arc::new(AtomicUsize::new(0)),
            checkers,
        };
        {
            let mut state = self.driver.state.lock();
            state.ever_ready = true;
            state.sessions.push(handle.clone());
        }
        self.handle = Some(handle);
        self.driver.notify();
    }

    /// Takes the session out of the driver's ready list: no new jobs come.
    pub(super) fn deregister(&mut self) {
        if self.handle.is_some() {
            self.driver.state.lock().sessions.retain(|s| s.id != self.id);
            self.driver.notify();
        }
    }
}
