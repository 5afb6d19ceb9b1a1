//! Redaction of secret-bearing fields in Vast.ai bodies before anything is logged or kept,
//! and of the API key itself in any encoding a provider might echo it in.
//!
//! Vast.ai returns secrets in ordinary responses: `instance_api_key` from create, `jupyter_token`,
//! `onstart` and `extra_env` on every instance read, and the account's own `api_key` from
//! `/users/current/`. Our own create request carries `env` and `onstart`. [`redact_json`] blanks
//! every such field, at any depth, before a body reaches a log line or an error; the field
//! names are in [`SECRET_FIELDS`].
//!
//! ```
//! use drover_vast::redact::redact_json;
//! use serde_json::json;
//!
//! let mut body = json!({"new_contract": 7, "instance_api_key": "abc", "env": {"A": "1"}});
//! redact_json(&mut body);
//! assert_eq!(body, json!({"new_contract": 7, "instance_api_key": "[redacted]", "env": "[redacted]"}));
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::secret::REDACTED;

/// Finds a secret in provider text in the encodings a server may echo it in, and blanks it.
///
/// The forms searched: the literal; base64 and base64url, padded or not, at each of the three
/// byte alignments the secret can have inside a longer encoded payload (`Bearer KEY`,
/// `user:KEY`); lower- and upper-case hex; URL (percent) encoding with upper- or lower-case
/// digits; and each of those with `/` JSON-escaped as `\/`. Forms shorter than 8 characters
/// are not searched (they would blank ordinary text).
///
/// ```
/// use drover_vast::redact::Scrubber;
///
/// let s = Scrubber::new("k3y/with+chars=and-more");
/// // base64 of the key: all but its last, partly padded, character go.
/// let echoed = "bad key: azN5L3dpdGgrY2hhcnM9YW5kLW1vcmU= (refused)";
/// assert_eq!(s.scrub(echoed), "bad key: [redacted]U= (refused)");
/// assert_eq!(s.scrub("6b33792f776974682b63686172733d616e642d6d6f7265"), "[redacted]");
/// ```
#[derive(Clone)]
pub struct Scrubber {
    /// Longest first, so that a form containing another is blanked whole.
    forms: Vec<String>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} forms)", self.forms.len())
    }
}

impl Scrubber {
    /// The shortest form searched, in characters.
    pub const MIN_FORM: usize = 8;

    /// A scrubber for `secret`.
    pub fn new(secret: &str) -> Self {
        let bytes = secret.as_bytes();
        let mut forms = vec![secret.to_owned()];
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            for align in 0..3usize {
                let mut shifted = vec![0u8; align];
                shifted.extend_from_slice(bytes);
                let encoded = engine.encode(&shifted);
                // The characters that depend on the secret's bytes alone.
                let first = (8 * align).div_ceil(6);
                let last = 8 * (align + bytes.len()) / 6;
                if let Some(stable) = encoded.get(first..last) {
                    forms.push(stable.to_owned());
                }
            }
        }
        let hex = hex::encode(bytes);
        forms.push(hex.to_ascii_uppercase());
        forms.push(hex);
        let pct: String = utf8_percent_encode(secret, NON_ALPHANUMERIC).collect();
        forms.push(lower_percent_digits(&pct));
        forms.push(pct);
        let escaped: Vec<String> =
            forms.iter().filter(|f| f.contains('/')).map(|f| f.replace('/', "\\/")).collect();
        forms.extend(escaped);
        forms.retain(|f| f.len() >= Self::MIN_FORM);
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup();
        Self { forms }
    }

    /// Whether `text` carries the secret in any form.
    pub fn finds(&self, text: &str) -> bool {
        self.forms.iter().any(|f| text.contains(f.as_str()))
    }

    /// `text` with every form of the secret replaced by `[redacted]`.
    pub fn scrub(&self, text: &str) -> String {
        if !self.finds(text) {
            return text.to_owned();
        }
        let mut out = text.to_owned();
        for f in &self.forms {
            if out.contains(f.as_str()) {
                out = out.replace(f.as_str(), REDACTED);
            }
        }
        out
    }

    /// A response body with every form of the secret replaced, before it is parsed, stored,
    /// logged or handed on. Bodies without the secret come back as they were.
    pub fn scrub_bytes(&self, bytes: bytes::Bytes) -> bytes::Bytes {
        let text = String::from_utf8_lossy(&bytes);
        if self.finds(&text) { bytes::Bytes::from(self.scrub(&text)) } else { bytes }
    }
}

fn lower_percent_digits(pct: &str) -> String {
    let mut out = String::with_capacity(pct.len());
    let mut after_percent = 0;
    for c in pct.chars() {
        if c == '%' {
            after_percent = 2;
            out.push(c);
        } else if after_percent > 0 {
            after_percent -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

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
    fn every_encoding_of_the_key_is_blanked() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let key = "drv-TEST+key/with=chars~5d41402abc4b2a76b9719d911017c592";
        let s = Scrubber::new(key);
        let pct: String = utf8_percent_encode(key, NON_ALPHANUMERIC).collect();
        let mut echoed = vec![
            key.to_owned(),
            hex::encode(key),
            hex::encode_upper(key),
            pct.clone(),
            lower_percent_digits(&pct),
        ];
        for prefix in ["", "B", "Be", "Bearer ", ":", "user:"] {
            let text = format!("{prefix}{key}");
            echoed.push(STANDARD.encode(&text));
            echoed.push(URL_SAFE.encode(&text));
            echoed.push(STANDARD_NO_PAD.encode(&text));
            echoed.push(URL_SAFE_NO_PAD.encode(&text));
            echoed.push(STANDARD.encode(&text).replace('/', "\\/"));
        }
        for e in echoed {
            let body = format!("{{\"msg\": \"invalid key {e} given\"}}");
            let out = s.scrub(&body);
            assert!(!out.contains(&e) && out.contains(REDACTED), "{e}: {out}");
            assert!(!s.finds(&out), "{out}");
        }
        assert_eq!(s.scrub("nothing to see"), "nothing to see");
        assert!(!format!("{s:?}").contains("drv"));
    }

    #[test]
    fn bounded_cuts_and_cleans() {
        assert_eq!(bounded("a\nb", 10), "a b");
        assert_eq!(bounded("abcdef", 3), "abc…");
    }
}
