//! The Vast.ai API key, held so that it cannot be printed by accident.
//!
//! [`ApiKey`] is read once, from `VASTAI_API_KEY` ([`ApiKey::from_env`]), and from then on it
//! exists only inside the client and the simulator: its `Debug` and `Display` print
//! `[redacted]`, it has no `Serialize`, and the only way to the bytes is [`ApiKey::expose`],
//! called in exactly two places in drover: building the `Authorization: Bearer` header (marked
//! sensitive, so `http`'s own `Debug` hides it too) and building the client's
//! [`Scrubber`](crate::redact::Scrubber) (which blanks the key in every encoding in provider
//! text). The simulator (`drover-vast-sim`) plays the provider, which knows the key: it
//! answers `GET /users/current/` with it as the real API does, and echoes it encoded under its
//! `echo_key` fault, so that the client's scrubbing is tested. Presented keys are compared with
//! [`ApiKey::matches`], in constant time.
//!
//! ```
//! use drover_vast::ApiKey;
//!
//! let key = ApiKey::new("k-123456789abcdef").unwrap();
//! assert_eq!(format!("{key}"), "[redacted]");
//! assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
//! ```

use std::fmt;

/// The environment variable the key is read from.
pub const API_KEY_ENV: &str = "VASTAI_API_KEY";

/// What the redacting formatters print instead of a secret.
pub const REDACTED: &str = "[redacted]";

/// A Vast.ai API key. Never printed, never serialized, never leaves this crate.
#[derive(Clone)]
pub struct ApiKey(Box<str>);

/// Why a key was refused. It never carries the key itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// `VASTAI_API_KEY` is not set.
    #[error("{API_KEY_ENV} is not set")]
    Missing,
    /// The value is not valid Unicode.
    #[error("{API_KEY_ENV} is not valid UTF-8")]
    NotUnicode,
    /// The key is empty, too long, or has characters that cannot go in an HTTP header.
    #[error("the API key is malformed: {reason}")]
    Malformed {
        /// What is wrong, without the key.
        reason: &'static str,
    },
}

impl ApiKey {
    /// Longest key accepted, in bytes. Vast.ai keys are 64 hex characters.
    pub const MAX_LEN: usize = 512;

    /// Wraps a key after checking that it can travel in a header: 1 to 512 visible ASCII
    /// characters, no spaces.
    pub fn new(value: impl Into<String>) -> Result<Self, ApiKeyError> {
        let value = value.into();
        if value.is_empty() {
            return Err(ApiKeyError::Malformed { reason: "it is empty" });
        }
        if value.len() > Self::MAX_LEN {
            return Err(ApiKeyError::Malformed { reason: "it is longer than 512 bytes" });
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiKeyError::Malformed {
                reason: "it has characters other than visible ASCII",
            });
        }
        Ok(Self(value.into_boxed_str()))
    }

    /// Reads the key from `VASTAI_API_KEY`. Call it once at start-up and keep the value; the
    /// variable is not read again, so a restart is what picks up a rotated key.
    pub fn from_env() -> Result<Self, ApiKeyError> {
        match std::env::var(API_KEY_ENV) {
            Ok(value) => Self::new(value.trim().to_owned()),
            Err(std::env::VarError::NotPresent) => Err(ApiKeyError::Missing),
            Err(std::env::VarError::NotUnicode(_)) => Err(ApiKeyError::NotUnicode),
        }
    }

    /// The key itself: see the module docs for its callers. Nothing else may call it; the
    /// provisioner, the service and the API never hold an `ApiKey` to call it on.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares a presented key with this one in time that depends only on their lengths (the
    /// simulator's gatekeeper checks bearers with it; nothing reveals the key).
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({REDACTED})")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_key() {
        let key = ApiKey::new("abcdef0123456789").unwrap();
        for shown in [format!("{key}"), format!("{key:?}"), format!("{key:#?}")] {
            assert!(!shown.contains("abcdef"), "{shown}");
        }
    }

    #[test]
    fn malformed_keys_are_refused_without_echo() {
        for bad in ["", "has space", "tab\there", "nul\0x"] {
            let err = ApiKey::new(bad).unwrap_err();
            assert!(matches!(err, ApiKeyError::Malformed { .. }));
            if !bad.is_empty() {
                assert!(!err.to_string().contains(bad));
            }
        }
        assert!(ApiKey::new("x".repeat(513)).is_err());
    }

    #[test]
    fn comparison() {
        let key = ApiKey::new("secret-key").unwrap();
        assert!(key.matches("secret-key"));
        assert!(!key.matches("secret-kez"));
        assert!(!key.matches("secret-key2"));
        assert!(!key.matches(""));
    }
}
