//! API tokens: how they are made, recognised and stored.
//!
//! ```text
//! drover_ || base64url( 32 bytes from the OS CSPRNG || checksum: 4 bytes )
//!            \________________ 48 characters, no padding ________________/
//!
//! checksum = SHA-256("drover_" || the 32 random bytes)[..4]
//! config   = SHA-256(the whole token as text), lowercase hex
//! ```
//!
//! - **256 bits.** The random part is 32 bytes from `getrandom` (the kernel CSPRNG); the
//!   format is the only one the server accepts, so every token that can authenticate carries
//!   256 bits of entropy.
//! - **Recognisable.** The `drover_` prefix lets secret scanners (and people) spot a token in a
//!   paste, a log or a repository.
//! - **Checksummed.** A token with a typo, a truncated token or a random string is rejected
//!   as malformed before any lookup, without touching the configured digests.
//! - **Stored hashed.** The configuration holds only the SHA-256 of the token, its name and
//!   its scopes; the token is printed once, at creation, and never again.
//!
//! ```
//! use drover_api::token::{ApiToken, parse};
//!
//! let token = ApiToken::generate().unwrap();
//! assert!(token.expose().starts_with("drover_"));
//! assert_eq!(token.expose().len(), 55);
//! assert!(parse(token.expose()).is_ok());
//! assert!(parse("drover_not-a-token").is_err());
//! // Debug never shows it.
//! assert_eq!(format!("{token:?}"), "ApiToken(<redacted>)");
//! ```

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// The prefix of every token.
pub const PREFIX: &str = "drover_";
/// Random bytes in a token.
pub const RANDOM_BYTES: usize = 32;
/// Checksum bytes in a token.
pub const CHECKSUM_BYTES: usize = 4;
/// Length of a token, in characters: the prefix and 48 base64url characters.
pub const TOKEN_LEN: usize = PREFIX.len() + (RANDOM_BYTES + CHECKSUM_BYTES) * 4 / 3;

/// A token, held only as long as it takes to print it once. `Debug` and `Display` are
/// redacted; [`ApiToken::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// Draws a new token from the OS CSPRNG.
    pub fn generate() -> Result<Self, TokenError> {
        let mut random = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut random).map_err(|e| TokenError::Random { code: e.raw_os_error() })?;
        Ok(Self::from_random(&random))
    }

    /// Encodes `random` as a token (tests use fixed bytes; real tokens come from
    /// [`ApiToken::generate`]).
    pub fn from_random(random: &[u8; RANDOM_BYTES]) -> Self {
        let mut body = [0u8; RANDOM_BYTES + CHECKSUM_BYTES];
        body[..RANDOM_BYTES].copy_from_slice(random);
        body[RANDOM_BYTES..].copy_from_slice(&checksum(random));
        Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body)))
    }

    /// The token itself, to print once or to send as `Authorization: Bearer`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token, lowercase hex: what the configuration stores.
    pub fn sha256_hex(&self) -> String {
        hex::encode(digest(&self.0))
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Why a string is not a token, or a token could not be made. Never carries the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The OS CSPRNG failed.
    #[error("the OS random number generator failed (os error {code:?})")]
    Random {
        /// The OS error code, if any.
        code: Option<i32>,
    },
    /// It does not start with `drover_`.
    #[error("the token does not start with {PREFIX}")]
    Prefix,
    /// It has the wrong length.
    #[error("the token has the wrong length")]
    Length,
    /// It is not base64url after the prefix.
    #[error("the token is not base64url after its prefix")]
    Encoding,
    /// Its checksum does not match: a typo or a truncated copy.
    #[error("the token's checksum does not match")]
    Checksum,
}

fn checksum(random: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(PREFIX.as_bytes());
    hasher.update(random);
    let full = hasher.finalize();
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&full[..CHECKSUM_BYTES]);
    out
}

/// SHA-256 of a token's text.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks that `text` is a well-formed token (prefix, length, encoding, checksum). Cheap and
/// independent of the configured tokens: the server calls it before any lookup.
pub fn parse(text: &str) -> Result<(), TokenError> {
    let body = text.strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
    if text.len() != TOKEN_LEN {
        return Err(TokenError::Length);
    }
    let mut decoded = [0u8; RANDOM_BYTES + CHECKSUM_BYTES];
    let n = URL_SAFE_NO_PAD.decode_slice(body, &mut decoded).map_err(|_| TokenError::Encoding)?;
    if n != decoded.len() {
        return Err(TokenError::Length);
    }
    let (random, sum) = decoded.split_at(RANDOM_BYTES);
    if checksum(random) != sum {
        return Err(TokenError::Checksum);
    }
    Ok(())
}

/// Why a presented token was refused; the audit log records which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a well-formed token; no lookup was made.
    Malformed,
    /// Well-formed, but no configured digest matches.
    Unknown,
    /// Its entry is marked revoked.
    Revoked,
}

impl Rejection {
    /// The audit `result` for this rejection.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "unauthenticated:missing",
            Self::Malformed => "unauthenticated:malformed",
            Self::Unknown => "unauthenticated:unknown",
            Self::Revoked => "unauthenticated:revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = ApiToken::generate().unwrap();
        let b = ApiToken::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), TOKEN_LEN);
        parse(a.expose()).unwrap();
        assert_eq!(a.sha256_hex().len(), 64);
        assert_eq!(a.sha256_hex(), hex::encode(digest(a.expose())));
    }

    #[test]
    fn malformed_tokens_are_told_apart() {
        let token = ApiToken::from_random(&[7; 32]);
        let text = token.expose();
        assert_eq!(parse(&text[1..]), Err(TokenError::Prefix));
        assert_eq!(parse(&text[..text.len() - 1]), Err(TokenError::Length));
        assert_eq!(parse(&format!("{text}A")), Err(TokenError::Length));
        let mut typo = text.to_owned().into_bytes();
        typo[20] = if typo[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(parse(std::str::from_utf8(&typo).unwrap()), Err(TokenError::Checksum));
        let mut bad = text.to_owned();
        bad.replace_range(10..11, "*");
        assert_eq!(parse(&bad), Err(TokenError::Encoding));
        assert_eq!(parse(""), Err(TokenError::Prefix));
    }

    #[test]
    fn errors_and_debug_never_show_the_token() {
        let token = ApiToken::from_random(&[9; 32]);
        assert!(!format!("{token:?}").contains(token.expose()));
        let err = parse(&token.expose()[..30]).unwrap_err();
        assert!(!err.to_string().contains(&token.expose()[7..20]));
    }
}
