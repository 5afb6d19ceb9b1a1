//! `DROVER_*` environment overrides for configuration keys (12-factor).
//!
//! A variable `DROVER_<TABLE>__<KEY>` sets `<table>.<key>`: the name after `DROVER_` is split
//! at every double underscore, each part lower-cased, so `DROVER_API__LISTEN` is `api.listen`
//! and `DROVER_API__RATE_LIMIT__PER_SECOND` is `api.rate_limit.per_second`. The value is read
//! as a TOML value (`8080`, `true`, `"text"`, `[{ name = "ci", ... }]`), and as a plain string
//! when it is not one, so `DROVER_API__LISTEN=0.0.0.0:8080` needs no quotes. An override
//! replaces what the file says; the result then passes the same schema as the file.
//!
//! Variables without a double underscore (`DROVER_TOKEN`, `DROVER_URL`,
//! `DROVER_WEBHOOK_SECRET`, ...) are not configuration keys and are left alone. There is no
//! default: without such variables the file alone decides.

use toml::{Table, Value};

/// The prefix of every override.
pub const PREFIX: &str = "DROVER_";

/// Why an override could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    /// The variable's value is not valid UTF-8.
    #[error("{variable}: the value is not valid UTF-8")]
    NotUtf8 {
        /// The variable's name.
        variable: String,
    },
    /// The key path runs through something that is not a table in the file.
    #[error("{variable}: `{path}` is not a table, so `{key}` cannot be set inside it")]
    NotATable {
        /// The variable's name.
        variable: String,
        /// The key path up to the value that is not a table.
        path: String,
        /// The key it tried to set.
        key: String,
    },
    /// A part of the name is empty (`DROVER_API____LISTEN`).
    #[error("{variable}: an empty key between double underscores")]
    EmptyKey {
        /// The variable's name.
        variable: String,
    },
}

/// Applies every override in `vars` to `table`; returns the dotted keys it set, in order.
pub fn apply(
    table: &mut Table,
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Vec<String>, OverrideError> {
    let mut overrides: Vec<(String, std::ffi::OsString)> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            let rest = name.strip_prefix(PREFIX)?;
            rest.contains("__").then(|| (name.clone(), value))
        })
        .collect();
    // The environment's order is arbitrary; sorting makes the outcome reproducible.
    overrides.sort();
    let mut applied = Vec::new();
    for (variable, value) in overrides {
        let value = value
            .into_string()
            .map_err(|_| OverrideError::NotUtf8 { variable: variable.clone() })?;
        let keys: Vec<String> =
            variable[PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            return Err(OverrideError::EmptyKey { variable });
        }
        set(table, &variable, &keys, parse_value(&value))?;
        applied.push(keys.join("."));
    }
    Ok(applied)
}

/// A TOML value, or the text itself when it is not one.
fn parse_value(text: &str) -> Value {
    match toml::from_str::<Table>(&format!("value = {text}")) {
        Ok(mut parsed) => parsed.remove("value").unwrap_or_else(|| Value::String(text.to_owned())),
        Err(_) => Value::String(text.to_owned()),
    }
}

fn set(
    table: &mut Table,
    variable: &str,
    keys: &[String],
    value: Value,
) -> Result<(), OverrideError> {
    let Some((last, parents)) = keys.split_last() else { return Ok(()) };
    let mut current = table;
    for (depth, key) in parents.iter().enumerate() {
        let entry = current.entry(key.clone()).or_insert_with(|| Value::Table(Table::new()));
        current = match entry {
            Value::Table(inner) => inner,
            _ => {
                return Err(OverrideError::NotATable {
                    variable: variable.to_owned(),
                    path: keys[..=depth].join("."),
                    key: last.clone(),
                });
            }
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn double_underscores_name_nested_keys_and_values_are_toml_or_text() {
        let mut table: Table = toml::from_str("[api]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let applied = apply(
            &mut table,
            vars(&[
                ("DROVER_API__LISTEN", "0.0.0.0:8080"),
                ("DROVER_API__RATE_LIMIT__PER_SECOND", "7"),
                ("DROVER_SUPERVISOR__BUNDLED_CONTAINER", "false"),
                ("DROVER_TOKEN", "drover_not_a_config_key"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(
            applied,
            ["api.listen", "api.rate_limit.per_second", "supervisor.bundled_container"]
        );
        assert_eq!(table["api"]["listen"].as_str(), Some("0.0.0.0:8080"));
        assert_eq!(table["api"]["rate_limit"]["per_second"].as_integer(), Some(7));
        assert_eq!(table["supervisor"]["bundled_container"].as_bool(), Some(false));
        assert!(!table.contains_key("token"));
    }

    #[test]
    fn tokens_arrive_as_an_array_of_tables() {
        let mut table = Table::new();
        apply(
            &mut table,
            vars(&[(
                "DROVER_API__TOKENS",
                "[{ name = \"ci\", sha256 = \"00\", scopes = [\"jobs:read\"], format = \"drover-v1\" }]",
            )]),
        )
        .unwrap();
        assert_eq!(table["api"]["tokens"][0]["name"].as_str(), Some("ci"));
    }

    #[test]
    fn a_path_through_a_value_or_an_empty_key_is_refused_naming_the_variable() {
        let mut table: Table = toml::from_str("[api]\nlisten = \"x\"\n").unwrap();
        let error = apply(&mut table, vars(&[("DROVER_API__LISTEN__PORT", "1")])).unwrap_err();
        assert!(error.to_string().starts_with("DROVER_API__LISTEN__PORT: `api.listen`"), "{error}");
        let error = apply(&mut table, vars(&[("DROVER_API____LISTEN", "1")])).unwrap_err();
        assert!(matches!(error, OverrideError::EmptyKey { .. }), "{error}");
    }
}
