//! Redaction of secret-bearing fields in Vast.ai bodies before anything is logged or kept.
//!
//! Vast.ai returns secrets in ordinary responses: `instance_api_key` from create, `jupyter_token`,
//! `onstart` and `extra_env` on every instance read, and the account's own `api_key` from
//! `/users/current/`. Our own create request carries `env` and `onstart`. [`redact_json`] blanks
//! every such field, at any depth, before a body reaches a log line or an error; the field
//! names are in [`SECRET_FIELDS`].
//!
//! ```
//! use drover_provision::redact::redact_json;
//! use serde_json::json;
//!
//! let mut body = json!({"new_contract": 7, "instance_api_key": "abc", "env": {"A": "1"}});
//! redact_json(&mut body);
//! assert_eq!(body, json!({"new_contract": 7, "instance_api_key": "[redacted]", "env": "[redacted]"}));
//! ```

use serde_json::Value;

use crate::secret::REDACTED;

/// Field names whose values are secrets or may carry them, wherever they appear.
pub const SECRET_FIELDS: &[&str] = &[
    "api_key",
    "instance_api_key",
    "jupyter_token",
    "onstart",
    "extra_env",
    "env",
    "image_login",
    "key",
    "authorization",
    "ssh_key",
    "sid",
];

/// Whether a field name is one of [`SECRET_FIELDS`] (ASCII case-insensitive).
pub fn is_secret_field(name: &str) -> bool {
    SECRET_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// Replaces the value of every secret-bearing field, at any depth, with `"[redacted]"`.
pub fn redact_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (name, v) in map.iter_mut() {
                if is_secret_field(name) {
                    if !v.is_null() {
                        *v = Value::String(REDACTED.to_owned());
                    }
                } else {
                    redact_json(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

/// Cuts `text` to at most `max` characters, replacing control characters, so that a message a
/// server sent can go into a log line or an error without breaking it.
pub fn bounded(text: &str, max: usize) -> String {
    let mut out: String =
        text.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nested_fields_are_redacted() {
        let mut v = json!({
            "instances": [{"id": 1, "extra_env": [["A", "b"]], "jupyter_token": "t", "label": "x"}],
            "user": {"API_KEY": "k", "onstart": null}
        });
        redact_json(&mut v);
        assert_eq!(v["instances"][0]["extra_env"], "[redacted]");
        assert_eq!(v["instances"][0]["jupyter_token"], "[redacted]");
        assert_eq!(v["instances"][0]["label"], "x");
        assert_eq!(v["user"]["API_KEY"], "[redacted]");
        assert_eq!(v["user"]["onstart"], Value::Null);
    }

    #[test]
    fn bounded_cuts_and_cleans() {
        assert_eq!(bounded("a\nb", 10), "a b");
        assert_eq!(bounded("abcdef", 3), "abc…");
    }
}
