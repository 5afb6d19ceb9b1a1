//! Schema generation with drover's settings: [`schema_for`] (draft 2020-12, the deserialize
//! contract, the two transforms) and [`api_schema`] (with its `$id`). Both are re-exported by
//! [`crate::schema`], which documents the transforms and assembles the published set; they
//! live here, below it, so that the modules whose schemas the set includes (`api`,
//! `config_reference`) can generate schemas without depending on the set.

use schemars::generate::SchemaSettings;
use schemars::transform::RecursiveTransform;
use schemars::{JsonSchema, Schema};
use serde_json::Value;

use crate::ids::MAX_SAFE_INTEGER;

/// Generates the schema of `T` with drover's settings (draft 2020-12, deserialize contract,
/// the two transforms below).
pub fn schema_for<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .with_transform(RecursiveTransform(bound_integers))
        .with_transform(RecursiveTransform(drop_null_from_optional))
        .into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// The schema of an HTTP API body: [`schema_for`] with `$id` set to `urn:drover:api:<name>`, so
/// that its internal `$ref`s (`#/$defs/...`) resolve inside it wherever it is embedded (OpenAPI
/// 3.1 `components/schemas` included). The API validates requests with exactly this value and
/// serves exactly this value.
pub fn api_schema<T: JsonSchema>(name: &str) -> Value {
    let mut schema = schema_for::<T>();
    if let Value::Object(map) = &mut schema {
        map.insert("$id".to_owned(), Value::String(format!("urn:drover:api:{name}")));
    }
    schema
}

/// Gives integers explicit bounds from their Rust width and removes width `format`s.
fn bound_integers(schema: &mut Schema) {
    let Some(object) = schema.as_object_mut() else { return };
    let Some(format) = object.get("format").and_then(Value::as_str) else { return };
    let bounds: Option<(i64, u64)> = match format {
        "uint8" => Some((0, u8::MAX.into())),
        "uint16" => Some((0, u16::MAX.into())),
        "uint32" => Some((0, u32::MAX.into())),
        "uint64" | "uint" => Some((0, MAX_SAFE_INTEGER)),
        "int8" => Some((i8::MIN.into(), i8::MAX as u64)),
        "int16" => Some((i16::MIN.into(), i16::MAX as u64)),
        "int32" => Some((i32::MIN.into(), i32::MAX as u64)),
        "int64" | "int" => Some((-(MAX_SAFE_INTEGER as i64), MAX_SAFE_INTEGER)),
        "float" | "double" => None,
        _ => return,
    };
    object.remove("format");
    if let Some((min, max)) = bounds {
        object.entry("minimum").or_insert_with(|| min.into());
        object.entry("maximum").or_insert_with(|| max.into());
    }
}

/// Removes the `null` alternative schemars adds to `Option` properties that are not required.
fn drop_null_from_optional(schema: &mut Schema) {
    let Some(object) = schema.as_object_mut() else { return };
    let required: Vec<String> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, property) in properties.iter_mut() {
        if required.contains(name) {
            continue;
        }
        let Some(prop) = property.as_object_mut() else { continue };
        // `"type": ["integer", "null"]` -> `"type": "integer"`
        if let Some(Value::Array(types)) = prop.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let only = types.remove(0);
                prop.insert("type".into(), only);
            }
        }
        // `{"anyOf": [X, {"type": "null"}], ...}` -> X with the outer keywords kept.
        let is_null = |v: &Value| v.get("type").and_then(Value::as_str) == Some("null");
        if let Some(Value::Array(any_of)) = prop.get("anyOf")
            && any_of.len() == 2
            && any_of.iter().any(is_null)
        {
            let inner = any_of.iter().find(|v| !is_null(v)).cloned();
            prop.remove("anyOf");
            if let Some(Value::Object(inner)) = inner {
                for (k, v) in inner {
                    prop.entry(k).or_insert(v);
                }
            }
        }
    }
}
