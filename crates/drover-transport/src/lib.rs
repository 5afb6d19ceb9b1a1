//! DriverTransport: how the supervisor and a driver talk.
//!
//! A session is a byte stream (a socketpair end at fd 3 by default, stdin/stdout on request)
//! carrying frames. A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
//! JSON, one object:
//!
//! ```text
//! +--- len: u32 BE ---+---------------------- payload: len bytes ----------------------+
//! | 00 00 00 2b       | {"id":7,"msg":{"type":"cancel_job","job_id":"j1","reason":""}}  |
//! +-------------------+-----------------------------------------------------------------+
//!
//! payload = {"id": N, "msg": {...}}   request  (the reply carries "re": N)
//!         | {"re": N, "msg": {...}}   reply
//!         | {"msg": {...}}            event
//! msg     = {"type": "<message type>", ...fields of that type}
//! ```
//!
//! Three layers, each usable alone:
//!
//! - [`codec`]: framing. Oversize frames are skipped as they stream in and reported, not
//!   buffered; a length beyond the hard ceiling ends the session with a diagnostic.
//! - [`validate`]: the pipeline every payload goes through before anything acts on it. A fast
//!   path reads the bytes in one pass into the typed frame, checking every value against the
//!   schema of its `msg.type` as it goes; a frame it does not accept takes the full path:
//!   UTF-8, strict JSON (duplicate keys rejected, nesting bounded), dispatch on `msg.type` to a
//!   JSON Schema validator compiled (on first use) per message type from `drover-proto`'s
//!   types, every violation collected with its JSON pointer, then the typed value built from
//!   the parsed tree. Both give the same answer. Outgoing frames pass the same schemas.
//! - [`connection`]: a session over any `AsyncRead + AsyncWrite`, with sender and `id`/`re`
//!   correlation rules, automatic `error` answers to bad frames, and [`pair`] for tests.
//!
//! # Defaults
//!
//! | Setting | Default | Where |
//! |---|---|---|
//! | largest frame payload (`max_frame_bytes`) | 1 MiB; negotiable up to 16 MiB in the handshake | [`codec::DEFAULT_MAX_FRAME_BYTES`] |
//! | hard ceiling on a declared length | 64 x `max_frame_bytes` (64 MiB by default) | [`codec::CEILING_FACTOR`] |
//! | JSON nesting limit | 128 levels | serde_json's recursion limit |
//! | violations reported per frame | 64 (the rest are counted) | [`drover_proto::limits::VIOLATIONS`] |
//! | unanswered peer requests per session | 1024 | [`connection::MAX_UNANSWERED`] |
//! | in-memory pair buffer | 64 KiB per direction | [`connection::PAIR_BUFFER_BYTES`] |
//!
//! # Example
//!
//! A driver's side of the handshake, over an in-memory pair:
//!
//! ```
//! # tokio_test::block_on(async {
//! use std::collections::BTreeMap;
//! use drover_proto::*;
//! use drover_transport::{pair, Inbound};
//!
//! let (mut supervisor, mut driver) = pair();
//!
//! let hello = Hello {
//!     protocol_versions: vec![1],
//!     driver: DriverInfo { name: "echo".parse().unwrap(), version: "0.1.0".into() },
//!     capabilities: vec![],
//!     actions: BTreeMap::from([("echo".parse().unwrap(), ParamsSchema(serde_json::json!(true)))]),
//!     schema_sha256: schema::schema_set_sha256().to_owned(),
//!     max_frame_bytes: None,
//! };
//! let id = driver.request(hello).await.unwrap();
//!
//! let Some(Inbound::Request { id: hello_id, msg: Message::Hello(hello) }) =
//!     supervisor.recv().await.unwrap() else { panic!("expected hello") };
//! assert_eq!(hello.driver.name.as_str(), "echo");
//! supervisor.reply(hello_id, Welcome {
//!     protocol_version: 1,
//!     session_id: "s-1".parse().unwrap(),
//!     heartbeat_ms: 5000,
//!     max_frame_bytes: 1 << 20,
//! }).await.unwrap();
//!
//! let Some(Inbound::Reply { re, msg: Message::Welcome(welcome), .. }) =
//!     driver.recv().await.unwrap() else { panic!("expected welcome") };
//! assert_eq!((re, welcome.protocol_version), (id, 1));
//! # });
//! ```
//!
//! A frame that breaks its schema is answered, not acted on, and the session goes on:
//!
//! ```
//! # tokio_test::block_on(async {
//! use drover_proto::{ErrorCode, Message};
//! use drover_transport::{pair, Inbound};
//! use tokio::io::AsyncWriteExt;
//!
//! let (a, mut b) = tokio::io::duplex(4096);
//! let mut supervisor = drover_transport::Connection::new(a, drover_proto::Party::Supervisor);
//! let payload = br#"{"msg":{"type":"job_progress","job_id":"j 1","current":-1}}"#;
//! b.write_all(&(payload.len() as u32).to_be_bytes()).await.unwrap();
//! b.write_all(payload).await.unwrap();
//!
//! let Some(Inbound::Rejected(invalid)) = supervisor.recv().await.unwrap() else { panic!() };
//! assert_eq!(invalid.code(), ErrorCode::SchemaViolation);
//! let paths: Vec<_> = invalid.violations().iter().map(|v| v.instance_path.as_str()).collect();
//! assert_eq!(paths, ["/msg/current", "/msg/job_id"]);
//! # });
//! ```

#![forbid(unsafe_code)]

pub mod codec;
pub mod connection;
mod fast;
pub mod validate;

/// Strict JSON parsing, shared with the HTTP API: [`drover_schema::json`].
pub use drover_schema::json;

pub use codec::{CodecError, Decoded, FrameCodec, FrameTooLarge};
pub use connection::{Connection, ConnectionError, Inbound, pair};
pub use validate::{FrameValidator, InvalidFrame, SchemaChecker, SchemaError, Violations};
