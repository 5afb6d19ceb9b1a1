//! Validation before dispatch.
//!
//! Every incoming payload goes through one pipeline, and every outgoing frame through the
//! checking half of it, so neither side can act on (or emit) a frame the schemas forbid:
//!
//! ```text
//! bytes --UTF-8?--> text --strict parse--> Value --msg.type--> validator for that type
//!       invalid_utf8        invalid_json            unknown_type     schema_violation
//!                                                                      |
//!                                      typed Frame <--from_value------+
//! ```
//!
//! - The JSON is parsed once ([`drover_schema::json::parse`]): duplicate keys and nesting deeper than
//!   128 levels are `invalid_json`.
//! - `msg.type` selects a validator compiled once per message type from
//!   [`drover_proto::schema::message_schema`]. Dispatching on the tag instead of validating
//!   against one big `oneOf` keeps errors precise (`/msg/lines/3`, not "matches none of the
//!   alternatives") and work proportional to the one schema that applies.
//! - Every violation is collected with its instance path and schema path, up to 64 per frame
//!   (the rest are counted). Messages are produced with the offending value masked, and every
//!   string is truncated, so an error never echoes a secret or a megabyte of input.
//! - The typed [`Frame`] is built from the already parsed `Value`, moving its strings rather
//!   than parsing again.
//!
//! That is the *full path*. [`FrameValidator::decode`] first tries the *fast path*
//! (the private `fast` module): one pass from the bytes straight into the typed frame with the same
//! schema checked on every value as it is read, which costs little more than a typed parse with
//! no validation. It accepts only what the full path accepts (when in doubt it declines, and
//! the full path decides), so a frame the fast path declines, including every invalid one,
//! takes the full path and gets its precise violations from there.
//!
//! The validators are compiled on first use and shared by every connection in the process
//! ([`FrameValidator::shared`]).

use std::sync::OnceLock;

use drover_proto::limits::MESSAGE_LEN;
use drover_proto::schema::{frame_schema, message_schema_from};
use drover_proto::{ErrorCode, Frame, Message, MessageType, MsgId, Violation, WireError};
use serde_json::Value;

use crate::codec::FrameTooLarge;
use crate::fast::FastPath;
use drover_proto::text::truncate;
use drover_schema::json::{self, JsonError};
use drover_schema::shown_name;
pub use drover_schema::{SchemaChecker, SchemaError, Violations};

/// Why a frame was rejected. The session survives every one of these; the receiver answers
/// with [`InvalidFrame::to_wire`] (as a reply when the frame carried a usable `id`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidFrame {
    /// The declared length was over the limit; the payload was discarded unread.
    #[error(transparent)]
    TooLarge(#[from] FrameTooLarge),
    /// The payload is not UTF-8.
    #[error("payload is not UTF-8: invalid byte at offset {offset}")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The payload is not one JSON value (syntax, duplicate key, nesting, empty).
    #[error("payload is not valid JSON: {reason}")]
    InvalidJson {
        /// What is wrong and where.
        reason: String,
    },
    /// `msg.type` names no message type of this protocol.
    #[error("unknown message type {type_name}")]
    UnknownType {
        /// The type as received, quoted, if it looks like a type name of at most 32
        /// characters; otherwise only its length.
        type_name: String,
        /// The frame's `id`, if it had a valid one.
        id: Option<MsgId>,
    },
    /// The frame breaks its schema.
    #[error("{} frame breaks its schema at {} place(s); first: {}", .message_type.map_or("untyped", |t| t.as_str()), .violations.total, first_violation(.violations))]
    SchemaViolation {
        /// The frame's type, when it had a known one.
        message_type: Option<MessageType>,
        /// The frame's `id`, if it had a valid one.
        id: Option<MsgId>,
        /// Where and why.
        violations: Violations,
    },
    /// A well-formed message that may not arrive here: the wrong sender, a reply to no pending
    /// request, or a reply of a type that does not answer the request.
    #[error("unexpected {message_type} frame: {reason}")]
    UnexpectedMessage {
        /// The frame's type.
        message_type: MessageType,
        /// The frame's `id`, if it was a request.
        id: Option<MsgId>,
        /// What rule it broke.
        reason: String,
    },
}

fn first_violation(violations: &Violations) -> String {
    violations
        .list
        .first()
        .map(|v| {
            let at = if v.instance_path.is_empty() { "the root" } else { &v.instance_path };
            format!("{at}: {}", v.message)
        })
        .unwrap_or_default()
}

impl InvalidFrame {
    /// The wire error code for this rejection.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge(_) => ErrorCode::FrameTooLarge,
            Self::InvalidUtf8 { .. } => ErrorCode::InvalidUtf8,
            Self::InvalidJson { .. } => ErrorCode::InvalidJson,
            Self::UnknownType { .. } => ErrorCode::UnknownType,
            Self::SchemaViolation { .. } => ErrorCode::SchemaViolation,
            Self::UnexpectedMessage { .. } => ErrorCode::UnexpectedMessage,
        }
    }

    /// The `id` of the rejected frame, when it had a valid one: the error is then a reply.
    pub fn request_id(&self) -> Option<MsgId> {
        match self {
            Self::UnknownType { id, .. }
            | Self::SchemaViolation { id, .. }
            | Self::UnexpectedMessage { id, .. } => *id,
            Self::TooLarge(_) | Self::InvalidUtf8 { .. } | Self::InvalidJson { .. } => None,
        }
    }

    /// The violations, for `schema_violation`.
    pub fn violations(&self) -> &[Violation] {
        match self {
            Self::SchemaViolation { violations, .. } => &violations.list,
            _ => &[],
        }
    }

    /// Where in the frame the problem is, when the rejection is about particular values: the
    /// violations of a `schema_violation`, `/msg/type` for an unknown type. Empty for problems
    /// with the frame as a whole.
    pub fn locations(&self) -> Vec<Violation> {
        let at = |instance_path: &str, schema_path: &str| Violation {
            instance_path: instance_path.to_owned(),
            schema_path: schema_path.to_owned(),
            message: truncate(&self.to_string(), MESSAGE_LEN),
        };
        match self {
            Self::SchemaViolation { violations, .. } => violations.list.clone(),
            Self::UnknownType { .. } => vec![at("/msg/type", "/$defs/Message/oneOf")],
            Self::TooLarge(_)
            | Self::InvalidUtf8 { .. }
            | Self::InvalidJson { .. }
            | Self::UnexpectedMessage { .. } => Vec::new(),
        }
    }

    /// The `error` message that tells the peer about this rejection.
    pub fn to_wire(&self) -> WireError {
        let details = match self {
            Self::TooLarge(FrameTooLarge { len, max }) => {
                Some(serde_json::json!({"len": len, "max": max}))
            }
            Self::SchemaViolation { violations, .. }
                if violations.total > violations.list.len() =>
            {
                Some(serde_json::json!({"total_violations": violations.total}))
            }
            _ => None,
        };
        WireError {
            code: self.code(),
            message: truncate(&self.to_string(), MESSAGE_LEN),
            violations: self.violations().to_vec(),
            details: details.and_then(|d| d.as_object().cloned()),
        }
    }
}

impl From<JsonError> for InvalidFrame {
    fn from(error: JsonError) -> Self {
        match error {
            JsonError::InvalidUtf8 { offset } => Self::InvalidUtf8 { offset },
            JsonError::Syntax { reason, .. } => Self::InvalidJson { reason },
        }
    }
}

/// The compiled validators for every message type, and the pipeline that uses them.
///
/// The fast path's checks are compiled up front (they are small). Each type's full
/// `jsonschema` validator is compiled the first time the full path needs it: a frame of that
/// type the fast path declined (every rejected frame, and every frame of a type the fast path
/// leaves to the full one). Compiled for all types they held about 6 MiB (issue 18's memory
/// item); a supervisor whose drivers send valid frames compiles only the few the fast path
/// does not cover.
#[derive(Debug)]
pub struct FrameValidator {
    /// One per entry of [`MessageType::ALL`], in that order.
    full: Vec<OnceLock<SchemaChecker>>,
    fast: FastPath,
}

impl FrameValidator {
    /// Generates every message schema and compiles the fast path's checks; the full validators
    /// are compiled on first use. Prefer [`FrameValidator::shared`].
    pub fn new() -> Result<Self, SchemaError> {
        let frame = frame_schema();
        let mut fast = FastPath::default();
        for &t in MessageType::ALL {
            fast.add(t, &message_schema_from(&frame, t));
        }
        let full = MessageType::ALL.iter().map(|_| OnceLock::new()).collect();
        Ok(Self { full, fast })
    }

    /// The full validator of `message_type`, compiled now if this is its first use.
    fn full_checker(&self, message_type: MessageType) -> Option<&SchemaChecker> {
        let index = MessageType::ALL.iter().position(|&t| t == message_type)?;
        Some(self.full[index].get_or_init(|| {
            // Invariant: the schemas are generated from this build's own types and the test
            // `every_message_schema_compiles` compiles each one, so this cannot fail at run
            // time without failing the test suite first.
            #[allow(clippy::expect_used)]
            SchemaChecker::new(&message_schema_from(&frame_schema(), message_type))
                .expect("drover's own message schemas compile")
        }))
    }

    /// The message types the fast path handles (the others always take the full path): those
    /// whose schemas use only keywords it knows.
    pub fn fast_path_types(&self) -> Vec<MessageType> {
        self.fast.types().collect()
    }

    /// The fast path alone: the frame if it accepts `payload`, `None` if it leaves the
    /// decision to the full path. For tests and benchmarks; [`FrameValidator::decode`] is the
    /// pipeline.
    pub fn decode_fast(&self, payload: &[u8]) -> Option<Frame> {
        self.fast.decode(payload)
    }

    /// The process-wide validator, compiled on first use.
    pub fn shared() -> &'static FrameValidator {
        static SHARED: OnceLock<FrameValidator> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Invariant: the schemas are generated from this build's own types and the test
            // `every_message_schema_compiles` compiles each one, so this cannot fail at run
            // time without failing the test suite first.
            #[allow(clippy::expect_used)]
            FrameValidator::new().expect("drover's own message schemas compile")
        })
    }

    /// Runs the whole pipeline on one payload: UTF-8, strict JSON, dispatch, schema, typed.
    /// The fast path answers for a frame it can accept; every other frame takes the full path
    /// ([`FrameValidator::decode_full`]), with the same result.
    pub fn decode(&self, payload: &[u8]) -> Result<Frame, InvalidFrame> {
        match self.fast.decode(payload) {
            Some(frame) => Ok(frame),
            None => self.decode_full(payload),
        }
    }

    /// The pipeline without its fast path: strict parse to a `Value`, dispatch, schema (with
    /// every violation), typed frame from the tree. [`FrameValidator::decode`] gives the same
    /// result; this is the reference the fast path is tested against.
    pub fn decode_full(&self, payload: &[u8]) -> Result<Frame, InvalidFrame> {
        self.decode_value(json::parse(payload)?)
    }

    /// The pipeline from an already parsed value: dispatch, schema, typed.
    pub fn decode_value(&self, value: Value) -> Result<Frame, InvalidFrame> {
        let message_type = self.check(&value)?;
        typed(value, message_type)
    }

    /// Validates an already parsed frame and returns its message type.
    pub fn check(&self, value: &Value) -> Result<MessageType, InvalidFrame> {
        let id = value.get("id").and_then(Value::as_u64).and_then(|v| MsgId::new(v).ok());
        let message_type = dispatch_type(value, id)?;
        let checker = self.full_checker(message_type).ok_or_else(|| InvalidFrame::UnknownType {
            type_name: shown_name(message_type.as_str()),
            id,
        })?;
        checker.check(value).map_err(|violations| InvalidFrame::SchemaViolation {
            message_type: Some(message_type),
            id,
            violations,
        })?;
        Ok(message_type)
    }

    /// Serializes `frame` and checks it against its schema, so nothing invalid is ever sent.
    /// The message is written with its `type` first (as the other SDKs write it), which is what
    /// lets the receiver's fast path dispatch without a second look.
    pub fn encode(&self, frame: &Frame) -> Result<Vec<u8>, InvalidFrame> {
        let bytes = serde_json::to_vec(frame).map_err(|e| InvalidFrame::InvalidJson {
            reason: truncate(&e.to_string(), MESSAGE_LEN),
        })?;
        if !self.fast.accepts(&bytes) {
            // Not a frame the fast path can accept: the full check decides, with violations.
            self.check(&json::parse(&bytes)?)?;
        }
        Ok(bytes)
    }
}

/// Finds `msg.type`, reporting a missing or malformed envelope as a schema violation against
/// `transport/frame.json`.
fn dispatch_type(value: &Value, id: Option<MsgId>) -> Result<MessageType, InvalidFrame> {
    let violation =
        |instance_path: &str, schema_path: &str, message: &str| InvalidFrame::SchemaViolation {
            message_type: None,
            id,
            violations: Violations {
                list: vec![Violation {
                    instance_path: instance_path.to_owned(),
                    schema_path: schema_path.to_owned(),
                    message: message.to_owned(),
                }],
                total: 1,
            },
        };
    let Some(envelope) = value.as_object() else {
        return Err(violation("", "/type", "a frame must be a JSON object"));
    };
    let Some(msg) = envelope.get("msg") else {
        return Err(violation("", "/required", "\"msg\" is a required property"));
    };
    let Some(msg) = msg.as_object() else {
        return Err(violation("/msg", "/properties/msg", "\"msg\" must be an object"));
    };
    let Some(tag) = msg.get("type") else {
        return Err(violation("/msg", "/properties/msg", "\"type\" is a required property"));
    };
    let Some(tag) = tag.as_str() else {
        return Err(violation("/msg/type", "/properties/msg", "\"type\" must be a string"));
    };
    MessageType::from_tag(tag)
        .ok_or_else(|| InvalidFrame::UnknownType { type_name: shown_name(tag), id })
}

/// Builds the typed frame from a validated value, moving its strings. The message type is
/// already known from dispatch, so the message is built directly from its fields rather than
/// through serde's buffering of internally tagged enums (about a third of the cost of a small
/// frame). If the schema and the Rust types ever disagree, the frame is rejected rather than
/// acted on, without quoting the value.
fn typed(value: Value, message_type: MessageType) -> Result<Frame, InvalidFrame> {
    let id = value.get("id").and_then(Value::as_u64).and_then(|v| MsgId::new(v).ok());
    let re = value.get("re").and_then(Value::as_u64).and_then(|v| MsgId::new(v).ok());
    let mismatch = || InvalidFrame::SchemaViolation {
        message_type: Some(message_type),
        id,
        violations: Violations {
            list: vec![Violation {
                instance_path: "/msg".to_owned(),
                schema_path: String::new(),
                message: "the message passed its schema but does not match the protocol types"
                    .to_owned(),
            }],
            total: 1,
        },
    };
    let Value::Object(mut envelope) = value else { return Err(mismatch()) };
    let Some(Value::Object(mut fields)) = envelope.remove("msg") else { return Err(mismatch()) };
    fields.remove("type");
    let msg = Message::from_fields(message_type, fields).map_err(|_| mismatch())?;
    Ok(Frame { id, re, msg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_schema_compiles() {
        let frame = frame_schema();
        for &t in MessageType::ALL {
            SchemaChecker::new(&message_schema_from(&frame, t)).unwrap();
        }
        let validator = FrameValidator::new().unwrap();
        assert_eq!(validator.full.len(), MessageType::ALL.len());
        // Nothing compiled before it is needed; then only the type that needed it.
        assert!(validator.full.iter().all(|c| c.get().is_none()));
        assert!(validator.decode(br#"{"msg":{"type":"ping"}}"#).is_err());
        let compiled: Vec<bool> = validator.full.iter().map(|c| c.get().is_some()).collect();
        let ping = MessageType::ALL.iter().position(|&t| t == MessageType::Ping).unwrap();
        assert!(compiled[ping] && compiled.iter().filter(|&&c| c).count() == 1);
    }
}
