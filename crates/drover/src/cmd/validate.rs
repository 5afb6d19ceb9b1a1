//! `drover validate [--kind frame|config|job] [FILE]`: checks one document against drover's
//! schemas, for driver authors, operators and fuzzers.
//!
//! - `frame` (the default): a DriverTransport frame payload (the JSON, without the length
//!   prefix), through exactly the pipeline the supervisor runs: UTF-8, strict JSON, dispatch
//!   on `msg.type`, the schema of that message type.
//! - `config`: a `drover.toml`, as TOML or as JSON (a document whose first non-blank character
//!   is `{` is read as JSON).
//! - `job`: the body of `POST /v1/jobs`.
//!
//! Reads FILE, or standard input when FILE is absent or `-`. Prints one JSON line on stdout:
//! `{"valid": true, ...}` and exit 0, or `{"valid": false, "code": ..., "errors":
//! [{"instance_path", "schema_path", "message"}]}` and exit 1. Input that cannot be read at
//! all exits 2 with the reason on stderr.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use drover_proto::api::JobSpec;
use drover_proto::config::Config;
use drover_proto::schema::schema_for;
use drover_proto::{ErrorCode, Violation};
use drover_transport::json::{self, JsonError};
use drover_transport::{FrameValidator, SchemaChecker};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// What kind of document to validate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A DriverTransport frame payload.
    Frame,
    /// A `drover.toml` configuration (TOML or JSON).
    Config,
    /// A job submission (`POST /v1/jobs` body).
    Job,
}

/// Arguments of `drover validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What the document is.
    #[arg(long, value_enum, default_value_t = Kind::Frame)]
    pub kind: Kind,
    /// The document; standard input when absent or `-`.
    pub file: Option<PathBuf>,
}

/// The verdict on one document.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The document is valid; `detail` names what it is (the message type, for a frame).
    Valid {
        /// A short description, e.g. the frame's message type.
        detail: Option<String>,
    },
    /// The document is invalid.
    Invalid {
        /// The error code a peer would receive.
        code: ErrorCode,
        /// Where and why.
        errors: Vec<Violation>,
    },
}

impl Verdict {
    /// The JSON line `drover validate` prints.
    pub fn to_json(&self, kind: Kind) -> Value {
        let kind = match kind {
            Kind::Frame => "frame",
            Kind::Config => "config",
            Kind::Job => "job",
        };
        match self {
            Verdict::Valid { detail: Some(detail) } => {
                json!({"valid": true, "kind": kind, "type": detail})
            }
            Verdict::Valid { detail: None } => json!({"valid": true, "kind": kind}),
            Verdict::Invalid { code, errors } => {
                json!({"valid": false, "kind": kind, "code": code, "errors": errors})
            }
        }
    }
}

/// Runs `drover validate`.
#[allow(clippy::print_stdout)]
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bytes = read_input(args.file.as_deref())?;
    let verdict = validate(args.kind, &bytes);
    println!("{}", verdict.to_json(args.kind));
    Ok(match verdict {
        Verdict::Valid { .. } => ExitCode::SUCCESS,
        Verdict::Invalid { .. } => ExitCode::FAILURE,
    })
}

fn read_input(file: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match file {
        None => std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?,
        Some(path) if path.as_os_str() == "-" => {
            std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?
        }
        Some(path) => {
            bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            bytes.len()
        }
    };
    Ok(bytes)
}

/// Validates `bytes` as a document of `kind`.
pub fn validate(kind: Kind, bytes: &[u8]) -> Verdict {
    match kind {
        Kind::Frame => match FrameValidator::shared().decode(bytes) {
            Ok(frame) => Verdict::Valid { detail: Some(frame.msg.message_type().to_string()) },
            Err(invalid) => {
                let mut errors = invalid.locations();
                if errors.is_empty() {
                    errors.push(whole_document(&invalid.to_string()));
                }
                Verdict::Invalid { code: invalid.code(), errors }
            }
        },
        Kind::Config => {
            let value = if looks_like_json(bytes) { json::parse(bytes) } else { parse_toml(bytes) };
            check_typed::<Config>(value)
        }
        Kind::Job => check_typed::<JobSpec>(json::parse(bytes)),
    }
}

fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn parse_toml(bytes: &[u8]) -> Result<Value, JsonError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| JsonError::InvalidUtf8 { offset: e.valid_up_to() })?;
    let table: toml::Table = toml::from_str(text).map_err(|e| JsonError::Syntax {
        reason: format!("not valid TOML: {}", e.message()),
        line: 0,
        column: 0,
    })?;
    serde_json::to_value(table).map_err(|e| JsonError::Syntax {
        reason: e.to_string(),
        line: 0,
        column: 0,
    })
}

/// Checks a parsed document against `T`'s schema, then makes sure it deserializes.
fn check_typed<T: DeserializeOwned + schemars::JsonSchema>(
    value: Result<Value, JsonError>,
) -> Verdict {
    let value = match value {
        Ok(value) => value,
        Err(error) => {
            let code = match error {
                JsonError::InvalidUtf8 { .. } => ErrorCode::InvalidUtf8,
                JsonError::Syntax { .. } => ErrorCode::InvalidJson,
            };
            return Verdict::Invalid { code, errors: vec![whole_document(&error.to_string())] };
        }
    };
    let checker = match SchemaChecker::new(&schema_for::<T>()) {
        Ok(checker) => checker,
        Err(error) => {
            return Verdict::Invalid {
                code: ErrorCode::Internal,
                errors: vec![whole_document(&error.to_string())],
            };
        }
    };
    if let Err(violations) = checker.check(&value) {
        return Verdict::Invalid { code: ErrorCode::SchemaViolation, errors: violations.list };
    }
    match serde_json::from_value::<T>(value) {
        Ok(_) => Verdict::Valid { detail: None },
        // The schema accepted what the type refuses: report it without quoting the value.
        Err(_) => Verdict::Invalid {
            code: ErrorCode::SchemaViolation,
            errors: vec![whole_document(
                "the document passed its schema but does not match the Rust type",
            )],
        },
    }
}

fn whole_document(message: &str) -> Violation {
    Violation {
        instance_path: String::new(),
        schema_path: String::new(),
        message: message.to_owned(),
    }
}
