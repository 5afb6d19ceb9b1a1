//! Strict JSON parsing: one pass from bytes to [`serde_json::Value`] that rejects what a lenient
//! parser would let through.
//!
//! - **Not UTF-8** is its own error ([`JsonError::InvalidUtf8`]) with the byte offset, checked
//!   before parsing so the parser can then skip its own UTF-8 checks.
//! - **Duplicate keys** are rejected. RFC 8259 leaves them to the implementation, and two
//!   implementations that pick different duplicates disagree about what a frame says, which
//!   is how validation gets bypassed.
//! - **Nesting** stops at serde_json's limit of 128 levels, so hostile input cannot exhaust the
//!   stack.
//! - **Empty input** and trailing data after the value are syntax errors.
//!
//! Error messages give the position, never the offending text.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a document is not acceptable JSON.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The bytes are not UTF-8.
    #[error("not UTF-8: invalid byte at offset {offset}")]
    InvalidUtf8 {
        /// Offset of the first byte that is not part of a valid UTF-8 sequence.
        offset: usize,
    },
    /// The text is not one well-formed JSON value, or it repeats a key, or nests too deeply.
    #[error("not valid JSON: {reason}")]
    Syntax {
        /// What is wrong and where (line and column), without the offending text.
        reason: String,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// 1-based column of the problem (0 when unknown).
        column: usize,
    },
}

/// Parses `bytes` as exactly one JSON value under the rules in the [module docs](self).
///
/// ```
/// use drover_schema::json::{parse, JsonError};
///
/// assert_eq!(parse(br#"{"a": [1, 2]}"#).unwrap()["a"][1], 2);
/// assert!(matches!(parse(br#"{"a": 1, "a": 2}"#), Err(JsonError::Syntax { .. })));
/// assert_eq!(parse(b"\xff"), Err(JsonError::InvalidUtf8 { offset: 0 }));
/// ```
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| JsonError::InvalidUtf8 { offset: e.valid_up_to() })?;
    parse_str(text)
}

/// Like [`parse`], for text already known to be UTF-8.
pub fn parse_str(text: &str) -> Result<Value, JsonError> {
    if text.trim_start().is_empty() {
        return Err(JsonError::Syntax { reason: "empty document".to_owned(), line: 0, column: 0 });
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = StrictSeed.deserialize(&mut deserializer).map_err(syntax)?;
    deserializer.end().map_err(syntax)?;
    Ok(value)
}

fn syntax(error: serde_json::Error) -> JsonError {
    // serde_json's syntax messages never quote input; ours (duplicate key) do not either.
    JsonError::Syntax { reason: error.to_string(), line: error.line(), column: error.column() }
}

/// Deserializes any JSON value, failing on a repeated key in an object.
struct StrictSeed;

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON text cannot spell NaN or infinity, and serde_json rejects overflowing literals,
        // so this only fails if that changes; fail closed rather than invent a value.
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let StrictValue(value) = access.next_value()?;
            if map.insert(key, value).is_some() {
                return Err(de::Error::custom("duplicate key in object"));
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_serde_json_parses() {
        let text = r#"{"a":[1,-2,3.5,true,null,"s\u00e9"],"b":{"c":{}}}"#;
        assert_eq!(parse(text.as_bytes()).unwrap(), serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn duplicate_keys_are_rejected_at_any_depth_without_echo() {
        for text in [r#"{"a":1,"a":2}"#, r#"{"x":{"secret-key":1,"secret-key":1}}"#] {
            let err = parse(text.as_bytes()).unwrap_err();
            let JsonError::Syntax { reason, line, column } = &err else { panic!("{err:?}") };
            assert!(reason.contains("duplicate key"), "{reason}");
            assert!(!reason.contains("secret"), "the key is not echoed: {reason}");
            assert_eq!(*line, 1);
            assert!(*column > 0);
        }
        // The same key in sibling objects is fine.
        assert!(parse(br#"[{"a":1},{"a":2}]"#).is_ok());
    }

    #[test]
    fn invalid_utf8_reports_the_offset() {
        assert_eq!(parse(b"{\"a\":\"\xc3\x28\"}"), Err(JsonError::InvalidUtf8 { offset: 6 }));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        let err = parse(deep.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
        // 100 levels is within the limit.
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn empty_whitespace_and_trailing_data_are_errors() {
        assert!(matches!(parse(b""), Err(JsonError::Syntax { .. })));
        assert!(matches!(parse(b"  \n"), Err(JsonError::Syntax { .. })));
        assert!(matches!(parse(b"{} {}"), Err(JsonError::Syntax { .. })));
        assert!(matches!(parse(b"{} x"), Err(JsonError::Syntax { .. })));
    }

    #[test]
    fn syntax_errors_do_not_echo_input() {
        let err = parse(br#"{"password": hunter2}"#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn huge_numbers_fail_or_become_floats_but_never_panic() {
        assert!(parse(b"1e400").is_err());
        assert!(parse(b"123456789012345678901234567890").unwrap().is_f64());
    }
}
