//! The fast path of the inbound pipeline: one pass from the payload's bytes to the typed
//! [`Frame`], with the frame's schema checked on every value as it is read.
//!
//! [`crate::validate`]'s full path parses into an owned `serde_json::Value` tree, validates the
//! tree and builds the typed frame from it: three passes and an allocation per string and
//! object. Here serde_json deserializes straight into the message struct (as a typed parse with
//! no validation would), and a wrapper around the deserializer sees every token on the way and
//! checks it against a small compiled form of the same generated schema ([`Node`]):
//!
//! - `type`, `const`/`enum`/`oneOf` of string constants, `minLength`/`maxLength` (counted in
//!   characters, as JSON Schema does), `pattern` (the ECMA 262 pattern translated by
//!   `jsonschema-regex`, the translation the `jsonschema` crate itself uses, run by `regex`),
//!   `minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum`, `items`/`minItems`/`maxItems`,
//!   `properties`/`required`/`additionalProperties`/`minProperties`/`maxProperties`, local
//!   `$ref`s; annotations are ignored;
//! - duplicate keys are rejected in every object, at any depth, as the strict parser does;
//! - values a type would skip are still read through the checks (`deserialize_ignored_any` is
//!   turned into `deserialize_any`), so nothing passes unseen.
//!
//! It only ever says "accepted, here is the frame" or "not decided". Any keyword it does not
//! know makes it decline a whole message type at compile time (those types always take the full
//! path), and anything unusual at run time (a failed check, `msg.type` not the first key of
//! `msg`, an integer written as `2.0`, an integer beyond 2^53, a parse error) makes it decline
//! the frame; [`crate::FrameValidator::decode`] then runs the full path, which either accepts
//! the frame too or produces the rejection with its violations. So the fast path can only be
//! stricter than the schema, never laxer, and `tests/it/fast_path.rs` checks that both paths agree
//! on accept and reject, and on the frame, for mutated frames of every type.

mod checked;
mod schema;

use std::cell::Cell;
use std::fmt;

use drover_proto::messages::*;
use drover_proto::{Frame, Message, MessageType, MsgId};
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use checked::CheckedMap;
use schema::{Additional, Compiler, Node, OBJECT};

/// Why the fast path declined a frame; never shown to anyone, the full path decides.
const DECLINED: &str = "fast path declined";

/// The fast path's compiled schemas: for each message type it handles, the envelope (the
/// message schema's root: `id`, `re`, `msg`) as a [`Node`].
#[derive(Debug, Default)]
pub(crate) struct FastPath {
    by_type: Vec<Envelope>,
}

/// The compiled schema of one message type: the envelope, and where in it `id`, `re`, `msg`
/// and `msg.type` are, found once.
#[derive(Debug)]
struct Envelope {
    message_type: MessageType,
    node: Node,
    id: Option<usize>,
    re: Option<usize>,
    /// Bit set of the envelope's required properties.
    required: u64,
    msg: usize,
    /// The index of `type` among `msg`'s properties.
    tag: usize,
}

impl Envelope {
    fn msg(&self) -> &Node {
        &self.node.properties[self.msg].1
    }
}

impl FastPath {
    /// Adds `schema`, the message schema of `message_type`, if every keyword in it is one the
    /// fast path knows and its root is an envelope; otherwise that type takes the full path.
    pub(crate) fn add(&mut self, message_type: MessageType, schema: &Value) {
        let Some(root) = Compiler::new(schema).node(schema, 0) else { return };
        let is_envelope = matches!(root.additional, Additional::Forbidden)
            && root.types == OBJECT
            && root.properties.iter().all(|(name, _)| matches!(name.as_str(), "id" | "re" | "msg"));
        let Some(msg) = root.property("msg") else { return };
        let Some(tag) = root.properties[msg].1.property("type") else { return };
        // The dispatch reads the tag before the message's checks start, and relies on the
        // schema's `type` being exactly this type's tag.
        let tag_is_constant =
            root.properties[msg].1.properties[tag].1.is_constant(message_type.as_str());
        if is_envelope && tag_is_constant && root.properties[msg].1.allows(OBJECT) {
            self.by_type.push(Envelope {
                message_type,
                id: root.property("id"),
                re: root.property("re"),
                required: root.required,
                msg,
                tag,
                node: root,
            });
        }
    }

    /// The message types the fast path handles.
    pub(crate) fn types(&self) -> impl Iterator<Item = MessageType> + '_ {
        self.by_type.iter().map(|e| e.message_type)
    }

    fn envelope(&self, message_type: MessageType) -> Option<&Envelope> {
        self.by_type.iter().find(|e| e.message_type == message_type)
    }

    /// The frame, if `payload` is a frame the fast path can accept; `None` means "ask the full
    /// path", never "invalid".
    pub(crate) fn decode(&self, payload: &[u8]) -> Option<Frame> {
        // The message is written once, into this slot, rather than moved up through every
        // `Result` on the way out (a `Message` is large, and those moves were a tenth of the
        // fast path's cost on a small frame).
        let mut msg = None;
        let mut deserializer = serde_json::Deserializer::from_slice(payload);
        let visitor = EnvelopeVisitor { fast: self, msg: Some(&mut msg) };
        let (id, re) = deserializer.deserialize_map(visitor).ok()?;
        deserializer.end().ok()?;
        Some(Frame { id, re, msg: msg? })
    }

    /// True if the fast path accepts `payload` (as [`FastPath::decode`] would), checking it
    /// without building the message: for frames made from typed values, on their way out.
    pub(crate) fn accepts(&self, payload: &[u8]) -> bool {
        let mut deserializer = serde_json::Deserializer::from_slice(payload);
        deserializer.deserialize_map(EnvelopeVisitor { fast: self, msg: None }).is_ok()
            && deserializer.end().is_ok()
    }
}

fn declined<E: de::Error>() -> E {
    E::custom(DECLINED)
}

/// A key, compared without allocating.
struct Key<'de>(KeyText<'de>);

enum KeyText<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match &self.0 {
            KeyText::Borrowed(s) => s,
            KeyText::Owned(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(KeyText::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(KeyText::Owned(s.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The frame object: `id` and `re` in any order around `msg`, checked against the envelope of
/// `msg`'s type once it is known.
struct EnvelopeVisitor<'f> {
    fast: &'f FastPath,
    /// Where to build the message; `None` to only check it.
    msg: Option<&'f mut Option<Message>>,
}

impl<'de> Visitor<'de> for EnvelopeVisitor<'_> {
    /// The frame's `id` and `re`.
    type Value = (Option<MsgId>, Option<MsgId>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a frame")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut re, mut msg) = (None, None, None);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let slot_taken = match key.as_str() {
                "id" => id.replace(map.next_value::<u64>()?).is_some(),
                "re" => re.replace(map.next_value::<u64>()?).is_some(),
                "msg" => {
                    let seed = MessageSeed { fast: self.fast, msg: self.msg.as_deref_mut() };
                    msg.replace(map.next_value_seed(seed)?).is_some()
                }
                _ => return Err(declined()),
            };
            if slot_taken {
                return Err(declined());
            }
        }
        let message_type = msg.ok_or_else(declined)?;
        let envelope = self.fast.envelope(message_type).ok_or_else(declined)?;
        let mut present = 1u64 << envelope.msg;
        for (value, index) in [(id, envelope.id), (re, envelope.re)] {
            let Some(value) = value else { continue };
            // A correlation id the message's role does not allow is not listed.
            let index = index.ok_or_else(declined)?;
            present |= 1 << index;
            if !envelope.node.properties[index].1.check_u64(value) {
                return Err(declined());
            }
        }
        if present & envelope.required != envelope.required {
            return Err(declined());
        }
        let msg_id = |v: Option<u64>| v.map(MsgId::new).transpose().map_err(|_| declined());
        Ok((msg_id(id)?, msg_id(re)?))
    }
}

/// The `msg` object: its first key must be `type`, which picks the message struct and its
/// schema; the other keys are read through the checks into that struct.
struct MessageSeed<'f> {
    fast: &'f FastPath,
    /// Where to build the message; `None` to only check it.
    msg: Option<&'f mut Option<Message>>,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = MessageType;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_> {
    type Value = MessageType;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        match map.next_key::<Key<'de>>()? {
            Some(key) if key.as_str() == "type" => {}
            _ => return Err(declined()),
        }
        let tag = map.next_value::<Key<'de>>()?;
        let message_type = MessageType::from_tag(tag.as_str()).ok_or_else(declined)?;
        let envelope = self.fast.envelope(message_type).ok_or_else(declined)?;
        // `type` is this type's tag: `from_tag` matched it, and `add` checked the schema says so.
        let node = envelope.msg();
        let done = Cell::new(false);
        let fields = CheckedMap::new(map, node, &done).after(envelope.tag);
        let fields = MapAccessDeserializer::new(fields);
        match self.msg {
            Some(slot) => message_into(message_type, fields, slot)?,
            None => {
                de::IgnoredAny::deserialize(fields)?;
            }
        }
        if !done.get() {
            return Err(declined());
        }
        Ok(message_type)
    }
}

/// Reads the message of type `message_type` from `fields` (the `msg` object after its tag) into
/// `slot`.
fn message_into<'de, D: Deserializer<'de>>(
    message_type: MessageType,
    fields: D,
    slot: &mut Option<Message>,
) -> Result<(), D::Error> {
    use MessageType as T;
    fn read<'de, M: Deserialize<'de> + Into<Message>, D: Deserializer<'de>>(
        fields: D,
        slot: &mut Option<Message>,
    ) -> Result<(), D::Error> {
        *slot = Some(M::deserialize(fields)?.into());
        Ok(())
    }
    match message_type {
        T::Hello => read::<Hello, D>(fields, slot),
        T::Welcome => read::<Welcome, D>(fields, slot),
        T::Ping => read::<Ping, D>(fields, slot),
        T::Pong => read::<Pong, D>(fields, slot),
        T::Ack => read::<Ack, D>(fields, slot),
        T::RunJob => read::<RunJob, D>(fields, slot),
        T::CancelJob => read::<CancelJob, D>(fields, slot),
        T::JobState => read::<JobState, D>(fields, slot),
        T::JobProgress => read::<JobProgress, D>(fields, slot),
        T::JobLog => read::<JobLog, D>(fields, slot),
        T::JobResult => read::<JobResult, D>(fields, slot),
        T::Log => read::<Log, D>(fields, slot),
        T::AcquireGpu => read::<AcquireGpu, D>(fields, slot),
        T::LeaseStatus => read::<LeaseStatus, D>(fields, slot),
        T::LeaseLogs => read::<LeaseLogs, D>(fields, slot),
        T::ReleaseGpu => read::<ReleaseGpu, D>(fields, slot),
        T::Lease => read::<Lease, D>(fields, slot),
        T::LeaseLog => read::<LeaseLog, D>(fields, slot),
        T::Shutdown => read::<Shutdown, D>(fields, slot),
        T::Error => read::<WireError, D>(fields, slot),
    }
}
