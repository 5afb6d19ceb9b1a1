//! Identifiers carried on the wire, each a newtype whose grammar is written once and enforced
//! twice: by the JSON Schema (`pattern`, `maxLength`) that the transport validates before
//! anything is dispatched, and by the Rust constructor and `Deserialize` impl, so a value built
//! in Rust or read back from storage obeys the same rule.
//!
//! | Type | Grammar | Length |
//! |---|---|---|
//! | [`MsgId`] | integer | 1 ..= 2^53 - 1 (exact in every JSON implementation) |
//! | [`JobId`], [`LeaseId`], [`SessionId`] | `^[A-Za-z0-9][A-Za-z0-9._-]*$` | 1 ..= 64 |
//! | [`ActionName`] | `^[a-z][a-z0-9_]*$` | 1 ..= 64 |
//! | [`DriverName`] | `^[a-z][a-z0-9-]*$` | 1 ..= 64 |
//! | [`Capability`] | `^[a-z][a-z0-9_]*$` | 1 ..= 32 |
//!
//! The grammars exclude whitespace, control characters, `/` and quoting characters on purpose:
//! identifiers end up in log lines, file names, labels on rented instances and URLs.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The largest integer every JSON implementation represents exactly (RFC 7493, I-JSON).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A value that does not fit an identifier's grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    /// Which identifier type rejected the value, e.g. `"JobId"`.
    pub kind: &'static str,
    /// What is wrong, without echoing the value (it may be long or hostile).
    pub reason: &'static str,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.kind, self.reason)
    }
}

impl std::error::Error for IdError {}

/// Checks `value` against a grammar of the form `^[first][rest]*$` with a length bound.
fn check_grammar(
    kind: &'static str,
    value: &str,
    max_len: usize,
    first: fn(u8) -> bool,
    rest: fn(u8) -> bool,
) -> Result<(), IdError> {
    let bytes = value.as_bytes();
    let Some((&head, tail)) = bytes.split_first() else {
        return Err(IdError { kind, reason: "must not be empty" });
    };
    // Every allowed character is ASCII, so the byte length is the character count.
    if bytes.len() > max_len {
        return Err(IdError { kind, reason: "is too long" });
    }
    if !first(head) {
        return Err(IdError { kind, reason: "starts with a character that is not allowed" });
    }
    if !tail.iter().all(|&b| rest(b)) {
        return Err(IdError { kind, reason: "contains a character that is not allowed" });
    }
    Ok(())
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
fn is_id_rest(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}
fn is_lower(b: u8) -> bool {
    b.is_ascii_lowercase()
}
fn is_snake_rest(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
}
fn is_kebab_rest(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

macro_rules! string_identifier {
    (
        $(#[doc = $doc:literal])*
        $name:ident, pattern = $pattern:literal, max = $max:literal,
        first = $first:path, rest = $rest:path, example = $example:literal
    ) => {
        $(#[doc = $doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The JSON Schema `pattern` of this identifier.
            pub const PATTERN: &'static str = $pattern;
            /// The longest accepted value, in bytes (all allowed characters are ASCII).
            pub const MAX_LEN: usize = $max;

            /// Checks `value` against the grammar and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_grammar(stringify!($name), &value, $max, $first, $rest)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "description": concat!($($doc),*).trim(),
                    "type": "string",
                    "minLength": 1,
                    "maxLength": $max,
                    "pattern": $pattern,
                    "examples": [$example],
                })
            }
        }
    };
}

string_identifier! {
    /// A job, named by the supervisor when the job is accepted.
    JobId, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max = 64,
    first = is_alnum, rest = is_id_rest, example = "job-01jd5x7k2m"
}

string_identifier! {
    /// A GPU lease, named by the supervisor when it accepts an `acquire_gpu` request.
    LeaseId, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max = 64,
    first = is_alnum, rest = is_id_rest, example = "lease-01jd5x9q4r"
}

string_identifier! {
    /// One driver session: one process from `hello` to exit.
    SessionId, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max = 64,
    first = is_alnum, rest = is_id_rest, example = "sess-7f3a"
}

string_identifier! {
    /// An action a driver declares in `hello` and a job names, in snake_case.
    ActionName, pattern = "^[a-z][a-z0-9_]*$", max = 64,
    first = is_lower, rest = is_snake_rest, example = "run"
}

string_identifier! {
    /// A driver's name, in kebab-case.
    DriverName, pattern = "^[a-z][a-z0-9-]*$", max = 64,
    first = is_lower, rest = is_kebab_rest, example = "container"
}

string_identifier! {
    /// An optional protocol feature a driver declares in `hello`; unknown ones are ignored.
    Capability, pattern = "^[a-z][a-z0-9_]*$", max = 32,
    first = is_lower, rest = is_snake_rest, example = "cancel"
}

/// A request id chosen by the sender of a request and echoed as `re` in its reply.
///
/// Positive and at most 2^53 - 1, so that every JSON implementation holds it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct MsgId(u64);

impl MsgId {
    /// The first id a sender uses.
    pub const FIRST: MsgId = MsgId(1);

    /// Wraps `value` if it is in `1 ..= 2^53 - 1`.
    pub fn new(value: u64) -> Result<Self, IdError> {
        match value {
            0 => Err(IdError { kind: "MsgId", reason: "must be at least 1" }),
            v if v > MAX_SAFE_INTEGER => {
                Err(IdError { kind: "MsgId", reason: "must be at most 2^53 - 1" })
            }
            v => Ok(Self(v)),
        }
    }

    /// The id as an integer.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The id after this one, wrapping from 2^53 - 1 back to 1. A sender would need to issue
    /// 2^53 requests for the wrap to matter, and by then every earlier one has been answered.
    #[must_use]
    pub fn next(self) -> Self {
        if self.0 >= MAX_SAFE_INTEGER { Self::FIRST } else { Self(self.0 + 1) }
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<u64> for MsgId {
    type Error = IdError;
    fn try_from(value: u64) -> Result<Self, IdError> {
        Self::new(value)
    }
}

impl From<MsgId> for u64 {
    fn from(id: MsgId) -> u64 {
        id.0
    }
}

impl JsonSchema for MsgId {
    fn schema_name() -> Cow<'static, str> {
        "MsgId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A request id chosen by the sender of a request and echoed as `re` in its reply.",
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_SAFE_INTEGER,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schema_of<T: JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap()
    }

    /// The Rust check and the schema's `pattern`/`maxLength` must agree on every input, or the
    /// transport would accept values that Rust code then refuses (or the other way round).
    fn agree<T: JsonSchema + FromStr>(input: &str) {
        let schema = schema_of::<T>();
        let by_schema = jsonschema::is_valid(&schema, &serde_json::Value::from(input));
        let by_rust = input.parse::<T>().is_ok();
        assert_eq!(by_schema, by_rust, "{} disagrees on {input:?}", T::schema_name());
    }

    proptest! {
        #[test]
        fn rust_and_schema_grammars_agree(input in "[A-Za-z0-9._ /:\n\u{e9}-]{0,70}") {
            agree::<JobId>(&input);
            agree::<LeaseId>(&input);
            agree::<SessionId>(&input);
            agree::<ActionName>(&input);
            agree::<DriverName>(&input);
            agree::<Capability>(&input);
        }
    }

    #[test]
    fn boundaries() {
        assert!(JobId::new("a".repeat(64)).is_ok());
        assert_eq!(JobId::new("a".repeat(65)).unwrap_err().reason, "is too long");
        assert_eq!(JobId::new("").unwrap_err().reason, "must not be empty");
        assert!(JobId::new("-a").is_err());
        assert!(JobId::new("a/b").is_err());
        assert!(ActionName::new("Run").is_err());
        assert!(DriverName::new("my-driver2").is_ok());
        assert!(DriverName::new("my_driver").is_err());
        assert!(Capability::new("a".repeat(33)).is_err());
    }

    #[test]
    fn deserialize_enforces_grammar() {
        assert!(serde_json::from_str::<JobId>("\"ok-1\"").is_ok());
        let err = serde_json::from_str::<JobId>("\"bad id\"").unwrap_err().to_string();
        assert!(err.contains("invalid JobId"), "{err}");
        assert!(!err.contains("bad id"), "the error must not echo the value: {err}");
        assert!(serde_json::from_str::<MsgId>("0").is_err());
        assert!(serde_json::from_str::<MsgId>("9007199254740992").is_err());
        assert_eq!(
            serde_json::from_str::<MsgId>("9007199254740991").unwrap().get(),
            MAX_SAFE_INTEGER
        );
    }

    #[test]
    fn msg_id_wraps_to_first() {
        assert_eq!(MsgId::new(MAX_SAFE_INTEGER).unwrap().next(), MsgId::FIRST);
        assert_eq!(MsgId::FIRST.next().get(), 2);
    }

    #[test]
    fn schema_carries_doc_and_bounds() {
        let schema = schema_of::<JobId>();
        assert_eq!(schema["maxLength"], 64);
        assert_eq!(schema["pattern"], JobId::PATTERN);
        assert!(schema["description"].as_str().unwrap().starts_with("A job"));
    }
}
