//! JSON Schema (draft 2020-12) generation from the Rust types, which are the single source of
//! truth. The transport compiles its validators from these values, and `drover schemas
//! --write` commits the same values to `schemas/` for third parties.
//!
//! The generated set ([`schema_files`]):
//!
//! | Path under `schemas/` | What it describes |
//! |---|---|
//! | `transport/frame.json` | any frame: the envelope with `msg` one of every message |
//! | `transport/<type>.json` | a frame carrying that message type, its role encoded (a request requires `id`, a reply `re`) |
//! | `transport/SHA256SUMS` | `sha256sum` manifest of the files above; its own SHA-256 is the schema-set digest drivers send in `hello` |
//! | `CHANGELOG.md` | the protocol versions and, for each, the schema-set digests it has had ([`CHANGELOG`]) |
//! | `api/<name>.json` | every HTTP API body ([`crate::api::API_SCHEMAS`]), each with `$id` `urn:drover:api:<Name>` |
//! | `config.json` | `drover.toml` |
//! | `sandbox-profile.json` | a sandbox profile, `sandbox/*.toml` |
//!
//! Every transport schema carries an `$id` naming the protocol version it belongs to:
//! `urn:drover:transport:v<version>:<type>` ([`transport_id`]; `frame` for `frame.json`), so a
//! code generator or a registry can pin it; API bodies carry `urn:drover:api:<Name>`. The
//! schema-set digest stays the source of truth for "which exact schemas": a test fails when
//! [`CHANGELOG`] does not list the current digest under the current protocol version.
//!
//! Two transforms run over every generated schema (in the private `generate` module, below
//! this one: [`schema_for`] and [`api_schema`] are re-exported here, and `api` and
//! `config_reference` use them without depending on the set assembled here):
//! - integers get explicit `minimum`/`maximum` from their Rust width (`u64` capped at 2^53 - 1),
//!   so out-of-range numbers are schema violations rather than deserialization surprises, and
//!   the non-standard `format`s schemars uses for widths (`uint32`, `double`, ...) are removed;
//! - optional properties lose the `null` alternative: an absent value is spelled by omitting it.
//!
//! Output is canonical (fixed key order, two-space indentation, trailing newline), so the files
//! are byte-for-byte reproducible whatever serde_json features are enabled in the build.

use std::sync::OnceLock;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::frame::{Frame, MessageType, Role};
pub use crate::generate::{api_schema, schema_for};

/// The JSON Schema dialect every generated schema declares.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The directory under `schemas/` that holds the transport schemas.
pub const TRANSPORT_DIR: &str = "transport";

/// The manifest file whose digest is the schema-set SHA-256.
pub const MANIFEST: &str = "transport/SHA256SUMS";

/// The protocol changelog, published as `schemas/CHANGELOG.md`: every protocol version, what it
/// changed, and every schema-set digest ([`schema_set_sha256`]) it has had. Written by hand in
/// the crate (`src/CHANGELOG.md`), generated into `schemas/` like everything there.
pub const CHANGELOG: &str = include_str!("CHANGELOG.md");

/// The `$id` of a transport schema of protocol [`crate::PROTOCOL_VERSION`]: `name` is a message
/// type, or `frame` for the schema of any frame.
pub fn transport_id(name: &str) -> String {
    format!("urn:drover:transport:v{}:{name}", crate::PROTOCOL_VERSION)
}

/// One generated file: its path under `schemas/` (always `/`-separated) and its contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaFile {
    /// Path relative to the `schemas/` directory.
    pub path: String,
    /// The exact bytes to write.
    pub contents: String,
}

/// The schema of any frame.
pub fn frame_schema() -> Value {
    let mut schema = schema_for::<Frame>();
    if let Value::Object(map) = &mut schema {
        map.insert("$id".to_owned(), Value::String(transport_id("frame")));
    }
    schema
}

/// The schema of a frame carrying a message of type `message_type`, with the envelope fixed by
/// the type's [`Role`]. Self-contained: it carries exactly the `$defs` it references.
pub fn message_schema(message_type: MessageType) -> Value {
    message_schema_from(&frame_schema(), message_type)
}

/// Like [`message_schema`], reusing an already generated [`frame_schema`] (generation is the
/// expensive part when building every validator).
pub fn message_schema_from(frame: &Value, message_type: MessageType) -> Value {
    let defs = frame.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let variant = defs
        .get("Message")
        .and_then(|m| m.get("oneOf"))
        .and_then(Value::as_array)
        .and_then(|variants| {
            variants.iter().find(|v| {
                v.pointer("/properties/type/const").and_then(Value::as_str)
                    == Some(message_type.as_str())
            })
        })
        .cloned()
        // Invariant: `Message` is generated from the same macro list as `MessageType`, and a
        // test checks that every type has exactly one variant schema.
        .unwrap_or(Value::Bool(false));

    let id_ref = serde_json::json!({"$ref": "#/$defs/MsgId"});
    let mut properties = Map::new();
    let mut required = Vec::new();
    let role_text = match message_type.role() {
        Role::Request => {
            properties.insert("id".into(), id_ref);
            required.push("id");
            "A request: `id` is required and its reply carries it as `re`."
        }
        Role::Reply => {
            properties.insert("re".into(), id_ref);
            required.push("re");
            "A reply: `re` is the `id` of the request it answers."
        }
        Role::ReplyOrEvent => {
            properties.insert("re".into(), id_ref);
            "A reply when `re` is present, otherwise an event."
        }
        Role::Event => "An event: neither `id` nor `re`.",
    };
    properties.insert("msg".into(), variant.clone());
    required.push("msg");

    let description = match variant.get("description").and_then(Value::as_str) {
        Some(text) => format!("{text}\n\n{role_text}"),
        None => role_text.to_owned(),
    };
    let mut schema = serde_json::json!({
        "$schema": DIALECT,
        "$id": transport_id(message_type.as_str()),
        "title": format!("{message_type} frame"),
        "description": description,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    let used = referenced_defs(&schema, &defs);
    if !used.is_empty() {
        schema["$defs"] = Value::Object(used);
    }
    schema
}

/// The `$defs` entries `schema` refers to, directly or through other entries.
fn referenced_defs(schema: &Value, defs: &Map<String, Value>) -> Map<String, Value> {
    fn collect(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(name) =
                    map.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/"))
                {
                    out.push(name.to_owned());
                }
                map.values().for_each(|v| collect(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut used = Map::new();
    let mut pending = Vec::new();
    collect(schema, &mut pending);
    while let Some(name) = pending.pop() {
        if used.contains_key(&name) {
            continue;
        }
        if let Some(def) = defs.get(&name) {
            collect(def, &mut pending);
            used.insert(name, def.clone());
        }
    }
    used
}

/// Every generated file, sorted by path.
pub fn schema_files() -> Vec<SchemaFile> {
    let frame = frame_schema();
    let mut transport = vec![SchemaFile {
        path: format!("{TRANSPORT_DIR}/frame.json"),
        contents: to_canonical_json(&frame),
    }];
    for &message_type in MessageType::ALL {
        transport.push(SchemaFile {
            path: format!("{TRANSPORT_DIR}/{message_type}.json"),
            contents: to_canonical_json(&message_schema_from(&frame, message_type)),
        });
    }
    transport.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = SchemaFile { path: MANIFEST.to_owned(), contents: manifest_for(&transport) };

    let mut files = transport;
    files.push(manifest);
    for api in crate::api::API_SCHEMAS {
        files.push(SchemaFile {
            path: api.path.to_owned(),
            contents: to_canonical_json(&(api.generate)()),
        });
    }
    files.push(SchemaFile { path: "CHANGELOG.md".to_owned(), contents: CHANGELOG.to_owned() });
    files.push(SchemaFile {
        path: "config.json".to_owned(),
        contents: to_canonical_json(&schema_for::<Config>()),
    });
    files.push(SchemaFile {
        path: "config.md".to_owned(),
        contents: crate::config_reference::config_reference(),
    });
    files.push(SchemaFile {
        path: "sandbox-profile.json".to_owned(),
        contents: to_canonical_json(&schema_for::<crate::profile::Profile>()),
    });
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// A `sha256sum`-format manifest of `files`, with names relative to their directory, so that
/// `cd schemas/transport && sha256sum -c SHA256SUMS` verifies it.
fn manifest_for(files: &[SchemaFile]) -> String {
    files
        .iter()
        .map(|f| {
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            format!("{}  {name}\n", hex::encode(Sha256::digest(f.contents.as_bytes())))
        })
        .collect()
}

/// SHA-256 (lowercase hex) of `schemas/transport/SHA256SUMS`: the digest of the transport
/// schema set that drivers send in `hello`. Computed once per process.
///
/// Reproduce it from the published files with `sha256sum schemas/transport/SHA256SUMS`.
pub fn schema_set_sha256() -> &'static str {
    static DIGEST: OnceLock<String> = OnceLock::new();
    DIGEST.get_or_init(|| {
        let manifest = schema_files()
            .into_iter()
            .find(|f| f.path == MANIFEST)
            .map(|f| f.contents)
            .unwrap_or_default();
        hex::encode(Sha256::digest(manifest.as_bytes()))
    })
}

/// Serializes `value` with a fixed key order: well-known schema keywords first in reading
/// order, everything else alphabetically; two-space indentation and a final newline.
pub fn to_canonical_json(value: &Value) -> String {
    const FIRST: &[&str] = &[
        "$schema",
        "$id",
        "title",
        "description",
        "type",
        "const",
        "enum",
        "$ref",
        "properties",
        "required",
    ];
    const LAST: &[&str] = &["$defs"];
    fn rank(key: &str) -> (u8, usize) {
        if let Some(i) = FIRST.iter().position(|k| *k == key) {
            (0, i)
        } else if let Some(i) = LAST.iter().position(|k| *k == key) {
            (2, i)
        } else {
            (1, 0)
        }
    }
    fn write(value: &Value, indent: usize, out: &mut String) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
                out.push_str("{\n");
                for (i, key) in keys.iter().enumerate() {
                    out.push_str(&"  ".repeat(indent + 1));
                    out.push_str(&Value::from(key.as_str()).to_string());
                    out.push_str(": ");
                    write(&map[key.as_str()], indent + 1, out);
                    out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
                }
                out.push_str(&"  ".repeat(indent));
                out.push('}');
            }
            Value::Array(items) if !items.is_empty() => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&"  ".repeat(indent + 1));
                    write(item, indent + 1, out);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&"  ".repeat(indent));
                out.push(']');
            }
            scalar_or_empty => out.push_str(&scalar_or_empty.to_string()),
        }
    }
    let mut out = String::new();
    write(value, 0, &mut out);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transport_schema_names_its_protocol_version() {
        for file in schema_files().iter().filter(|f| f.path.starts_with("transport/")) {
            let Some(name) =
                file.path.strip_prefix("transport/").and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let schema: Value = serde_json::from_str(&file.contents).unwrap_or_default();
            assert_eq!(
                schema["$id"],
                Value::String(format!("urn:drover:transport:v{}:{name}", crate::PROTOCOL_VERSION)),
                "{}",
                file.path
            );
        }
    }

    #[test]
    fn the_changelog_lists_the_current_schema_set_under_the_current_version() {
        let heading = format!("## Protocol version {}", crate::PROTOCOL_VERSION);
        let section = CHANGELOG.split_once(&heading).map(|(_, rest)| rest).unwrap_or_default();
        let section = section.split("\n## ").next().unwrap_or_default();
        let digest = schema_set_sha256();
        assert!(
            section.contains(&format!("`{digest}`")),
            "the transport schemas changed: add their digest `{digest}` (and what changed) under \
             `{heading}` in crates/drover-proto/src/CHANGELOG.md, or start a new protocol version"
        );
    }
}
