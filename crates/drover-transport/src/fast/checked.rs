//! A deserializer that checks every value it reads against a [`Node`], and passes it on.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::value::{BorrowedStrDeserializer, StrDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::declined;
use super::schema::{ANY, Additional, Node};
use super::schema::{ARRAY, BOOL, NULL, OBJECT};

/// A deserializer whose every value is checked against `node` as it is read.
struct Checked<'n, D> {
    inner: D,
    node: &'n Node,
}

/// A visitor that checks each value against `node` before handing it on.
struct Check<'n, V> {
    visitor: V,
    node: &'n Node,
}

/// A seed whose value is read through [`Checked`].
struct CheckedSeed<'n, S> {
    seed: S,
    node: &'n Node,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for CheckedSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Checked { inner: deserializer, node: self.node })
    }
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method($($arg,)* Check { visitor, node: self.node })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Checked<'_, D> {
    type Error = D::Error;

    forward! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_identifier();
    }

    /// An enum is read only from a string (a unit variant), as its schema (string constants)
    /// says; the object form of a variant is left to the full path.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_str(UnitVariant { visitor, node: self.node })
    }

    /// Skipped values are still read through the checks: serde_json would otherwise skip them
    /// without a look.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(Check { visitor, node: self.node })
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Reads a unit variant from a checked string.
struct UnitVariant<'n, V> {
    visitor: V,
    node: &'n Node,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for UnitVariant<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<V::Value, E> {
        if !self.node.check_str(s) {
            return Err(declined());
        }
        self.visitor.visit_enum(BorrowedStrDeserializer::new(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<V::Value, E> {
        if !self.node.check_str(s) {
            return Err(declined());
        }
        self.visitor.visit_enum(StrDeserializer::new(s))
    }
}

macro_rules! checked_scalar {
    ($($method:ident($ty:ty) if $check:expr;)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                #[allow(clippy::redundant_closure_call)]
                if !($check)(self.node, v) {
                    return Err(declined());
                }
                self.visitor.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Check<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    checked_scalar! {
        visit_bool(bool) if |n: &Node, _| n.allows(BOOL);
        visit_i64(i64) if Node::check_i64;
        visit_u64(u64) if Node::check_u64;
        visit_f64(f64) if Node::check_f64;
        visit_str(&str) if Node::check_str;
        visit_borrowed_str(&'de str) if Node::check_str;
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<V::Value, E> {
        if !self.node.check_str(&s) {
            return Err(declined());
        }
        self.visitor.visit_string(s)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<V::Value, E> {
        Err(declined())
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<V::Value, E> {
        Err(declined())
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<V::Value, E> {
        Err(declined())
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        if !self.node.allows(NULL) {
            return Err(declined());
        }
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        if !self.node.allows(NULL) {
            return Err(declined());
        }
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_some(Checked { inner: deserializer, node: self.node })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.visitor.visit_newtype_struct(Checked { inner: deserializer, node: self.node })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let node = self.node;
        if !node.allows(ARRAY) {
            return Err(declined());
        }
        let count = Cell::new(0);
        let done = Cell::new(false);
        let value =
            self.visitor.visit_seq(CheckedSeq { inner: seq, node, count: &count, done: &done })?;
        if !done.get() || node.min_items.is_some_and(|min| count.get() < min) {
            return Err(declined());
        }
        Ok(value)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let node = self.node;
        if !node.allows(OBJECT) {
            return Err(declined());
        }
        let done = Cell::new(false);
        let value = self.visitor.visit_map(CheckedMap::new(map, node, &done))?;
        if !done.get() {
            return Err(declined());
        }
        Ok(value)
    }
}

struct CheckedSeq<'n, A> {
    inner: A,
    node: &'n Node,
    count: &'n Cell<usize>,
    done: &'n Cell<bool>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for CheckedSeq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let items = self.node.items.as_deref().unwrap_or(&ANY);
        match self.inner.next_element_seed(CheckedSeed { seed, node: items })? {
            None => {
                self.done.set(true);
                Ok(None)
            }
            Some(value) => {
                self.count.set(self.count.get() + 1);
                if self.node.max_items.is_some_and(|max| self.count.get() > max) {
                    return Err(declined());
                }
                Ok(Some(value))
            }
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// An object's keys checked against `node` (listed, required, additional, duplicates, count)
/// and each value against its property's schema.
pub(super) struct CheckedMap<'n, A> {
    inner: A,
    state: MapState<'n>,
}

/// What a [`CheckedMap`] has seen so far.
struct MapState<'n> {
    node: &'n Node,
    /// Bit `i`: `node.properties[i]` was seen.
    seen: u64,
    /// Keys seen that no property lists, to refuse their repetition.
    extra: Option<HashSet<String>>,
    count: usize,
    /// The schema of the value after the key just read.
    current: &'n Node,
    done: &'n Cell<bool>,
}

impl<'n, A> CheckedMap<'n, A> {
    pub(super) fn new(inner: A, node: &'n Node, done: &'n Cell<bool>) -> Self {
        let state = MapState { node, seen: 0, extra: None, count: 0, current: &ANY, done };
        Self { inner, state }
    }

    /// The same map with property `index` already read (the message's `type`, read by the
    /// dispatch before this map takes over).
    pub(super) fn after(mut self, index: usize) -> Self {
        self.state.seen |= 1 << index;
        self.state.count += 1;
        self
    }
}

impl MapState<'_> {
    /// Accounts for `key`, choosing the schema of its value; false if the key may not be here.
    fn admit(&mut self, key: &str) -> bool {
        self.count += 1;
        if self.node.max_properties.is_some_and(|max| self.count > max) {
            return false;
        }
        if let Some(index) = self.node.property(key) {
            let bit = 1 << index;
            if self.seen & bit != 0 {
                return false;
            }
            self.seen |= bit;
            self.current = &self.node.properties[index].1;
            return true;
        }
        self.current = match &self.node.additional {
            Additional::Forbidden => return false,
            Additional::Any => &ANY,
            Additional::Schema(schema) => schema,
        };
        self.extra.get_or_insert_with(HashSet::new).insert(key.to_owned())
    }

    fn finish(&self) -> bool {
        self.seen & self.node.required == self.node.required
            && self.node.min_properties.is_none_or(|min| self.count >= min)
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for CheckedMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.inner.next_key_seed(KeySeed { seed, map: &mut self.state })? {
            Some(key) => Ok(Some(key)),
            None if self.state.finish() => {
                self.state.done.set(true);
                Ok(None)
            }
            None => Err(declined()),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.next_value_seed(CheckedSeed { seed, node: self.state.current })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// Reads a key as a string, admits it into its map, then hands it to the caller's seed.
struct KeySeed<'m, 'n, K> {
    seed: K,
    map: &'m mut MapState<'n>,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, '_, K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<K::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeySeed<'_, '_, K> {
    type Value = K::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<K::Value, E> {
        if !self.map.admit(key) {
            return Err(declined());
        }
        self.seed.deserialize(BorrowedStrDeserializer::new(key))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<K::Value, E> {
        if !self.map.admit(key) {
            return Err(declined());
        }
        self.seed.deserialize(StrDeserializer::new(key))
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::Compiler;
    use super::*;
    use serde::Deserialize;
    use serde_json::{Value, json};

    fn check(schema: &Value, instance: &str) -> bool {
        let node = Compiler::new(schema).node(schema, 0).unwrap();
        let mut deserializer = serde_json::Deserializer::from_str(instance);
        Value::deserialize(Checked { inner: &mut deserializer, node: &node }).is_ok()
            && deserializer.end().is_ok()
    }

    #[test]
    fn checks_follow_json_schema() {
        let s = json!({"type": "string", "maxLength": 3, "minLength": 2, "pattern": "^[a-zé]+$"});
        assert!(check(&s, r#""éé""#));
        assert!(check(&s, r#""abc""#));
        assert!(!check(&s, r#""abcd""#));
        assert!(!check(&s, r#""a""#));
        assert!(!check(&s, r#""A1""#));
        assert!(!check(&s, "12"));
        let n = json!({"type": "number", "exclusiveMinimum": 0, "maximum": 10});
        assert!(check(&n, "10"));
        assert!(check(&n, "0.5"));
        assert!(!check(&n, "0"));
        assert!(!check(&n, "10.5"));
        assert!(!check(&json!({"type": "integer"}), "1.5"));
        let e =
            json!({"oneOf": [{"type": "string", "const": "a"}, {"type": "string", "const": "b"}]});
        assert!(check(&e, r#""b""#));
        assert!(!check(&e, r#""c""#));
        assert!(!check(&e, "null"));
    }

    #[test]
    fn objects_and_arrays_are_checked_at_every_level() {
        let s = json!({
            "type": "object",
            "properties": {"a": {"type": "array", "items": {"type": "integer"}, "maxItems": 2, "minItems": 1}},
            "required": ["a"],
            "additionalProperties": false,
        });
        assert!(check(&s, r#"{"a": [1, 2]}"#));
        assert!(!check(&s, r#"{"a": [1, 2, 3]}"#));
        assert!(!check(&s, r#"{"a": []}"#));
        assert!(!check(&s, r#"{"a": ["x"]}"#));
        assert!(!check(&s, r#"{}"#));
        assert!(!check(&s, r#"{"a": [1], "b": 1}"#));
        assert!(!check(&s, r#"{"a": [1], "a": [1]}"#));
        // Free-form objects still refuse a repeated key, at any depth.
        assert!(check(&json!({}), r#"{"x": {"y": 1, "z": 1}}"#));
        assert!(!check(&json!({}), r#"{"x": {"y": 1, "y": 1}}"#));
        assert!(!check(&json!({}), r#"[{"y": 1, "y": 2}]"#));
    }

    #[test]
    fn a_value_the_type_skips_is_still_checked() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Lenient {
            a: u8,
        }
        let s = json!({"properties": {"b": {"type": "string"}}});
        let node = Compiler::new(&s).node(&s, 0).unwrap();
        let read = |text: &str| {
            let mut d = serde_json::Deserializer::from_str(text);
            Lenient::deserialize(Checked { inner: &mut d, node: &node }).is_ok()
        };
        assert!(read(r#"{"a": 1, "b": "x"}"#));
        assert!(!read(r#"{"a": 1, "b": 2}"#));
        assert!(!read(r#"{"a": 1, "c": {"d": 1, "d": 1}}"#));
    }
}
