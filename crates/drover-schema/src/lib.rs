//! JSON Schema checking and strict JSON, shared by the transport (every frame) and the HTTP API
//! (every request body), so that neither depends on the other.
//!
//! - [`SchemaChecker`]: a compiled JSON Schema (draft 2020-12, formats checked, no external
//!   references fetched) that reports every violation with its JSON pointers, the offending
//!   value masked and every string bounded, so an error never echoes a secret or a megabyte of
//!   input. At most [`VIOLATIONS`] (64) violations are listed per document; the rest are
//!   counted.
//! - [`json`]: strict parsing (not UTF-8, duplicate keys, nesting beyond 128 levels, trailing
//!   data: each an error that gives a position, never the text).
//! - [`shown_name`]: how a name taken from the input is quoted (or not).
//!
//! **Invariants:** no I/O; nothing here quotes input beyond a short identifier-like name.

#![forbid(unsafe_code)]

pub mod json;

use drover_proto::Violation;
use drover_proto::limits::{MESSAGE_LEN, POINTER_LEN, VIOLATIONS};
use drover_proto::text::truncate;
use serde_json::Value;

/// A schema that could not be compiled. Only a bug in the generated schemas causes this for
/// drover's own schemas; for a driver-declared schema it is the driver's mistake.
#[derive(Debug, thiserror::Error)]
#[error("schema does not compile: {reason}")]
pub struct SchemaError {
    /// What the compiler said.
    pub reason: String,
}

/// All the places where one document breaks its schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violations {
    /// The first violations found, at most 64.
    pub list: Vec<Violation>,
    /// How many there were in all.
    pub total: usize,
}

/// A compiled JSON Schema (draft 2020-12, formats checked) that reports every violation with
/// masked, bounded messages.
///
/// ```
/// use drover_schema::SchemaChecker;
/// use serde_json::json;
///
/// let checker = SchemaChecker::new(&json!({
///     "type": "object",
///     "properties": {"token": {"type": "string", "maxLength": 4}},
/// })).unwrap();
/// let violations = checker.check(&json!({"token": "s3cr3t-value"})).unwrap_err();
/// assert_eq!(violations.list[0].instance_path, "/token");
/// assert_eq!(violations.list[0].schema_path, "/properties/token/maxLength");
/// assert!(!violations.list[0].message.contains("s3cr3t"));
/// ```
#[derive(Debug)]
pub struct SchemaChecker {
    validator: jsonschema::Validator,
}

impl SchemaChecker {
    /// Compiles `schema`. External references are not fetched.
    pub fn new(schema: &Value) -> Result<Self, SchemaError> {
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(schema)
            .map_err(|e| SchemaError { reason: truncate(&e.masked().to_string(), MESSAGE_LEN) })?;
        Ok(Self { validator })
    }

    /// `Ok` if `instance` satisfies the schema, otherwise every violation.
    pub fn check(&self, instance: &Value) -> Result<(), Violations> {
        // The boolean check is much cheaper than collecting errors; valid input only pays it.
        if self.validator.is_valid(instance) {
            return Ok(());
        }
        let mut list = Vec::new();
        let mut total = 0;
        for error in self.validator.iter_errors(instance) {
            total += 1;
            if list.len() < VIOLATIONS as usize {
                list.push(Violation {
                    instance_path: truncate(error.instance_path().as_str(), POINTER_LEN),
                    schema_path: truncate(error.schema_path().as_str(), POINTER_LEN),
                    message: describe(&error),
                });
            }
        }
        Err(Violations { list, total })
    }
}

/// A violation's message with the offending value masked. Property names chosen by the sender
/// (the only part of the input a masked message still quotes) are shortened and counted.
fn describe(error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as Kind;
    const NAMES_SHOWN: usize = 8;
    let listed = |what: &str, names: &[String]| {
        let mut text =
            names.iter().take(NAMES_SHOWN).map(|n| shown_name(n)).collect::<Vec<_>>().join(", ");
        if names.len() > NAMES_SHOWN {
            text.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
        }
        format!("{what} not allowed: {text}")
    };
    match error.kind() {
        Kind::AdditionalProperties { unexpected } => listed("additional properties", unexpected),
        Kind::UnevaluatedProperties { unexpected } => listed("unevaluated properties", unexpected),
        _ => truncate(&error.masked().to_string(), MESSAGE_LEN),
    }
}

/// A name taken from the input (a property name, a message type), quoted if it looks like an
/// identifier of at most 32 characters, and otherwise described without being shown: a long
/// or odd name is more likely a pasted token than a typo worth echoing.
pub fn shown_name(name: &str) -> String {
    let looks_like_identifier = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if looks_like_identifier {
        format!("{name:?}")
    } else {
        format!("(a name of {} characters, not shown)", name.chars().count())
    }
}
