//! The real lower bound for decoding a frame: its bytes deserialized straight into the
//! envelope and the one message struct its `msg.type` names (known in advance here), with no
//! intermediate tree, no buffering of an internally tagged enum, and no validation at all.
//! `serde_json::from_slice::<Frame>` is not that bound: serde's internally tagged `Message`
//! buffers every field into its own tree to find the tag first (issue 18 measured it at 1.5x
//! this).

use std::fmt;
use std::marker::PhantomData;

use drover_proto::MsgId;
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// A frame whose message is known to be an `M`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct DirectFrame<M> {
    #[serde(default)]
    pub(crate) id: Option<MsgId>,
    #[serde(default)]
    pub(crate) re: Option<MsgId>,
    pub(crate) msg: Untagged<M>,
}

/// `M` deserialized from an object that also carries the `type` tag, which is skipped.
#[derive(Debug)]
pub(crate) struct Untagged<M>(#[allow(dead_code)] pub(crate) M);

impl<'de, M: Deserialize<'de>> Deserialize<'de> for Untagged<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<M>(PhantomData<M>);
        impl<'de, M: Deserialize<'de>> Visitor<'de> for MapVisitor<M> {
            type Value = Untagged<M>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                M::deserialize(MapAccessDeserializer::new(SkipTag(map))).map(Untagged)
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// A map access that hides the `type` key (and its value) from the struct reading it.
struct SkipTag<A>(A);

/// What one key turned out to be: the tag (the seed handed back unused) or the struct's key.
enum Peeked<K, V> {
    Tag(K),
    Key(V),
}

struct PeekSeed<K>(K);

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for PeekSeed<K> {
    type Value = Peeked<K, K::Value>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        struct KeyVisitor<K>(K);
        impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeyVisitor<K> {
            type Value = Peeked<K, K::Value>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
                if key == "type" {
                    return Ok(Peeked::Tag(self.0));
                }
                self.0.deserialize(de::value::StrDeserializer::<E>::new(key)).map(Peeked::Key)
            }
        }
        deserializer.deserialize_identifier(KeyVisitor(self.0))
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipTag<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        mut seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            match self.0.next_key_seed(PeekSeed(seed))? {
                None => return Ok(None),
                Some(Peeked::Key(key)) => return Ok(Some(key)),
                Some(Peeked::Tag(unused)) => {
                    self.0.next_value::<IgnoredAny>()?;
                    seed = unused;
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}

/// A direct typed parse of a payload of type `t` (the limit), for a caller that knows the type
/// in advance: parses and drops the frame, panicking if it does not parse.
#[allow(dead_code)]
pub(crate) fn parser_for(t: drover_proto::MessageType) -> fn(&[u8]) {
    use drover_proto::MessageType as T;
    use drover_proto::*;
    fn parse<M: de::DeserializeOwned>(payload: &[u8]) {
        std::hint::black_box(serde_json::from_slice::<DirectFrame<M>>(payload).unwrap());
    }
    match t {
        T::Hello => parse::<Hello>,
        T::Welcome => parse::<Welcome>,
        T::Ping => parse::<Ping>,
        T::Pong => parse::<Pong>,
        T::Ack => parse::<Ack>,
        T::RunJob => parse::<RunJob>,
        T::CancelJob => parse::<CancelJob>,
        T::JobState => parse::<JobState>,
        T::JobProgress => parse::<JobProgress>,
        T::JobLog => parse::<JobLog>,
        T::JobResult => parse::<JobResult>,
        T::Log => parse::<Log>,
        T::AcquireGpu => parse::<AcquireGpu>,
        T::LeaseStatus => parse::<LeaseStatus>,
        T::LeaseLogs => parse::<LeaseLogs>,
        T::ReleaseGpu => parse::<ReleaseGpu>,
        T::Lease => parse::<Lease>,
        T::LeaseLog => parse::<LeaseLog>,
        T::Shutdown => parse::<Shutdown>,
        T::Error => parse::<WireError>,
    }
}
