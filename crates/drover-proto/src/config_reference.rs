//! The configuration reference (`schemas/config.md`), generated from the schema of
//! [`Config`], so the documentation of every key, its type, default and
//! bounds is the schema validation uses and cannot drift from it.
//!
//! Each table of `drover.toml` becomes a section with one row per key; a table of tables
//! (`[[drivers]]`) and a tagged choice (`[provider]` by `kind`) get a section per shape.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::config::Config;
use crate::generate::schema_for;

/// The Markdown reference of `drover.toml`.
pub fn config_reference() -> String {
    let schema = schema_for::<Config>();
    let empty = Map::new();
    let defs = schema.get("$defs").and_then(Value::as_object).unwrap_or(&empty);
    let mut out = String::from(
        "# `drover.toml` reference\n\n\
         Generated from `schemas/config.json` by `cargo run -p drover -- schemas`; do not edit.\n\
         Every key is optional unless marked *required*; unknown keys are errors. Secrets are \
         never read from this file: the Vast.ai key comes only from `VASTAI_API_KEY`, and API \
         tokens appear only as SHA-256 digests.\n\n\
         ## Environment overrides\n\n\
         `drover serve` reads `DROVER_<TABLE>__<KEY>` variables after the file: the name after \
         `DROVER_` is split at each double underscore and lower-cased, so \
         `DROVER_API__LISTEN=0.0.0.0:8080` sets `api.listen` and \
         `DROVER_API__RATE_LIMIT__PER_SECOND=50` sets `api.rate_limit.per_second`. The value \
         is read as a TOML value (`50`, `false`, `\"text\"`, `[{ name = \"ci\", ... }]`), or as \
         plain text when it is not one. An override replaces the file's value, and the result \
         passes the same schema (errors name the key). `DROVER_API__TOKENS` takes the whole \
         `[[api.tokens]]` array, so token digests can come from a secret store; variables \
         without a double underscore (`DROVER_TOKEN`, `DROVER_URL`) are not configuration.\n",
    );
    table_section(&mut out, "", &schema, defs);
    out
}

fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.trim_start_matches("#/$defs/");
            defs.get(name).map_or(schema, |target| resolve(target, defs))
        }
        None => schema,
    }
}

fn is_table(schema: &Value) -> bool {
    schema.get("properties").is_some()
}

/// A choice between tables, told apart by a constant `kind` (or other) key.
fn table_variants(schema: &Value) -> Option<&Vec<Value>> {
    schema.get("oneOf").and_then(Value::as_array).filter(|v| v.iter().all(is_table))
}

fn description(schema: &Value) -> String {
    schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split("\n\n")
        .next()
        .unwrap_or("")
        .replace('\n', " ")
        .replace('|', "\\|")
}

/// The rows of one table (keys under `prefix`), then a section for each table inside it.
fn table_section(out: &mut String, prefix: &str, schema: &Value, defs: &Map<String, Value>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut nested = Vec::new();
    let mut rows = String::new();
    for (key, property) in properties {
        let target = resolve(property, defs);
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        if is_table(target) || table_variants(target).is_some() {
            nested.push((format!("[{path}]"), path, property, target));
            continue;
        }
        if let Some(items) = target.get("items").map(|i| resolve(i, defs))
            && is_table(items)
        {
            nested.push((format!("[[{path}]]"), path, property, items));
            continue;
        }
        // A tag that selects the shape is shown in the section title instead.
        if target.get("const").is_some() {
            continue;
        }
        let default = match property.get("default").or_else(|| target.get("default")) {
            Some(value) => format!("`{value}`"),
            None if required.contains(&key.as_str()) => "*required*".to_owned(),
            None => "none".to_owned(),
        };
        let mut text = description(property);
        if text.is_empty() {
            text = description(target);
        }
        let _ = writeln!(
            rows,
            "| `{key}` | {} | {default} | {} | {text} |",
            type_name(target, defs),
            bounds(target, defs)
        );
    }
    if !rows.is_empty() {
        out.push_str("\n| Key | Type | Default | Allowed | Meaning |\n|---|---|---|---|---|\n");
        out.push_str(&rows);
    }
    for (header, path, property, target) in nested {
        let mut text = description(property);
        if text.is_empty() {
            text = description(target);
        }
        let _ = writeln!(out, "\n## `{header}`\n\n{text}");
        match table_variants(target) {
            Some(variants) => {
                for variant in variants {
                    let tag = variant
                        .get("properties")
                        .and_then(Value::as_object)
                        .and_then(|p| p.iter().find(|(_, v)| v.get("const").is_some()))
                        .map(|(k, v)| format!("{k} = {}", v["const"]))
                        .unwrap_or_default();
                    let _ = writeln!(out, "\n### `{tag}`\n\n{}", description(variant));
                    table_section(out, &path, variant, defs);
                }
            }
            None => table_section(out, &path, target, defs),
        }
    }
}

fn type_name(schema: &Value, defs: &Map<String, Value>) -> String {
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array)
        && variants.iter().all(|v| v.get("const").is_some())
    {
        return "string".to_owned();
    }
    match schema.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let items = schema.get("items").map(|i| resolve(i, defs));
            format!("array of {}", items.map_or("values".to_owned(), |i| type_name(i, defs)))
        }
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(types)) => {
            types.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" or ")
        }
        _ => "value".to_owned(),
    }
}

fn bounds(schema: &Value, defs: &Map<String, Value>) -> String {
    let mut parts = Vec::new();
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        let values: Vec<String> =
            variants.iter().filter_map(|v| v.get("const")).map(|c| format!("`{c}`")).collect();
        if !values.is_empty() {
            parts.push(values.join(", "));
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        parts.push(values.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "));
    }
    let range = |low: &str, high: &str, unit: &str| -> Option<String> {
        match (schema.get(low), schema.get(high)) {
            (Some(l), Some(h)) => Some(format!("{l}..={h}{unit}")),
            (Some(l), None) => Some(format!(">= {l}{unit}")),
            (None, Some(h)) => Some(format!("<= {h}{unit}")),
            (None, None) => None,
        }
    };
    parts.extend(range("minimum", "maximum", ""));
    parts.extend(range("exclusiveMinimum", "exclusiveMaximum", " (exclusive)"));
    parts.extend(range("minLength", "maxLength", " chars"));
    parts.extend(range("minItems", "maxItems", " items"));
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        parts.push(format!("matches `{}`", pattern.replace('|', "\\|")));
    }
    if let Some(items) = schema.get("items").map(|i| resolve(i, defs)) {
        let inner = bounds(items, defs);
        if !inner.is_empty() {
            parts.push(format!("each: {inner}"));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_default_config_is_documented() {
        let reference = config_reference();
        let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
        for (table, keys) in defaults.as_object().into_iter().flatten() {
            assert!(reference.contains(&format!("## `[{table}]`")), "no section for [{table}]");
            for key in keys.as_object().into_iter().flat_map(|k| k.keys()) {
                let as_row = format!("| `{key}` |");
                let as_table = format!("## `[{table}.{key}]`");
                let as_tag = format!("### `{key} = ");
                assert!(
                    [as_row, as_table, as_tag].iter().any(|form| reference.contains(form)),
                    "[{table}] {key} missing"
                );
            }
        }
        assert!(reference.contains("## `[[drivers]]`"));
        assert!(reference.contains("### `kind = \"vastai\"`"));
        assert!(reference.contains("| `uid` | integer | `65534` | 1..=4294967294 |"));
    }
}
