//! Wire types of drover: the DriverTransport message set, the HTTP API bodies and the
//! configuration file, with the JSON Schemas generated from them.
//!
//! The Rust types here are the single source of truth. [`schema`] turns them into JSON Schema
//! (draft 2020-12); `drover-transport` compiles its validators from those schemas, and
//! `schemas/` holds the same schemas for drivers written in other languages.
//!
//! Architecture invariant: this crate does no I/O and knows nothing of tokio; it is types,
//! their schemas and pure functions over them.
//!
//! ```
//! use drover_proto::{Frame, Message, MsgId, Ping};
//!
//! let frame = Frame::request(MsgId::FIRST, Ping {});
//! let json = serde_json::to_string(&frame).unwrap();
//! assert_eq!(json, r#"{"id":1,"msg":{"type":"ping"}}"#);
//! let back: Frame = serde_json::from_str(&json).unwrap();
//! assert!(matches!(back.msg, Message::Ping(_)));
//! ```

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod config_reference;
pub mod examples;
mod frame;
mod generate;
pub mod ids;
pub mod limits;
pub mod messages;
pub mod profile;
pub mod schema;
pub mod text;

pub use frame::{Frame, Message, MessageType, Party, Role};
pub use ids::{ActionName, Capability, DriverName, IdError, JobId, LeaseId, MsgId, SessionId};
pub use messages::*;

/// The protocol versions this build speaks, oldest first.
pub const PROTOCOL_VERSIONS: &[u16] = &[1];

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
