//! Authentication (SR-001), scopes and per-token rate limits.
//!
//! Every route but the probes (`GET /healthz`, and `GET /readyz` without an `Authorization`
//! header, which then says only ready or not) takes an [`Authorized<S>`] extractor, which
//! runs before the body is read (its `FromRequestParts` impl is in `extract.rs`, above the
//! shared state, so that this module is a leaf the state is built from):
//!
//! ```text
//! Authorization: Bearer drover_...   -- missing / not Bearer ---------> 401
//!        | well-formed (prefix, length, base64url, checksum)? -- no ---> 401 (no lookup)
//!        | SHA-256, compared in constant time with EVERY configured digest
//!        | match? -- none --> 401 (unknown)      revoked? -- yes --> 401 (revoked)
//!        |   (every 401 first takes from its peer's bucket: empty --> 429, see
//!        |    crate::anonymous; audited as counts per window, not a row each)
//!        | token bucket of this token -- empty --> 429 + Retry-After
//!        | scope S? -- no --> 403
//!        v
//!    handler (body validation comes after this)
//! ```
//!
//! The token set is swapped atomically on reload ([`TokenRegistry::replace`]), so tokens are
//! added and revoked without a restart and requests in flight finish with the set they
//! started with. A token never appears in a log line, an error or an audit event: only its
//! configured name does.

use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use drover_proto::config::{RateLimitConfig, Scope, TokenEntry};
use subtle::ConstantTimeEq;

use crate::token;

/// Why a presented token was refused (defined with the tokens, below the request-error
/// layer that records it).
pub use crate::token::Rejection;

/// The least entropy a configured token may carry.
pub const MIN_TOKEN_BITS: u32 = 256;

/// Why a token configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenConfigError {
    /// The entry's format could carry fewer than 256 bits.
    #[error("token {name:?}: its format carries {bits} bits of entropy, fewer than 256")]
    WeakFormat {
        /// The entry's name.
        name: String,
        /// What the format carries.
        bits: u32,
    },
    /// The digest is not 64 lowercase hex digits.
    #[error("token {name:?}: sha256 must be 64 lowercase hex digits")]
    BadDigest {
        /// The entry's name.
        name: String,
    },
    /// Two entries have the same digest.
    #[error("tokens {first:?} and {second:?} have the same digest")]
    DuplicateDigest {
        /// One entry.
        first: String,
        /// The other.
        second: String,
    },
    /// Two entries have the same name, so audit lines could not tell them apart.
    #[error("two tokens are named {name:?}")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// An entry has no scope.
    #[error("token {name:?} has no scope")]
    NoScope {
        /// The entry's name.
        name: String,
    },
}

/// One configured token, as the server holds it.
#[derive(Clone, Debug)]
struct Entry {
    name: Arc<str>,
    digest: [u8; 32],
    scopes: u8,
    revoked: bool,
}

fn scope_bit(scope: Scope) -> u8 {
    match scope {
        Scope::JobsRead => 1,
        Scope::JobsWrite => 2,
        Scope::DriversRead => 4,
        Scope::MetricsRead => 8,
        Scope::JobsAdmin => 16,
    }
}

/// The configured tokens, checked and ready for lookups.
#[derive(Clone, Debug, Default)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's configured name.
    pub name: Arc<str>,
    scopes: u8,
}

impl Principal {
    /// Whether the token carries `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & scope_bit(scope) != 0
    }

    /// Whether this caller may read, follow or cancel a job submitted by `owner`: its own
    /// jobs always, anyone's with `jobs:admin`.
    pub fn may_touch_job_of(&self, owner: &str) -> bool {
        *self.name == *owner || self.has(Scope::JobsAdmin)
    }
}

impl TokenSet {
    /// Checks `entries` and builds the set. Refuses (so the server refuses to start, or a
    /// reload is refused and the old set stays) on any entry whose format could carry fewer
    /// than 256 bits, a malformed digest, duplicate digests or names, or no scope.
    pub fn new(entries: &[TokenEntry]) -> Result<Self, TokenConfigError> {
        let mut names = HashSet::new();
        let mut digests: HashMap<[u8; 32], String> = HashMap::new();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let name = entry.name.clone();
            let bits = entry.format.entropy_bits();
            if bits < MIN_TOKEN_BITS {
                return Err(TokenConfigError::WeakFormat { name, bits });
            }
            let well_formed = entry.sha256.len() == 64
                && entry.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            let mut digest = [0u8; 32];
            if !well_formed || hex::decode_to_slice(&entry.sha256, &mut digest).is_err() {
                return Err(TokenConfigError::BadDigest { name });
            }
            if entry.scopes.is_empty() {
                return Err(TokenConfigError::NoScope { name });
            }
            if !names.insert(name.clone()) {
                return Err(TokenConfigError::DuplicateName { name });
            }
            if let Some(first) = digests.insert(digest, name.clone()) {
                return Err(TokenConfigError::DuplicateDigest { first, second: name });
            }
            out.push(Entry {
                name: Arc::from(name.as_str()),
                digest,
                scopes: entry.scopes.iter().fold(0, |bits, s| bits | scope_bit(*s)),
                revoked: entry.revoked,
            });
        }
        Ok(Self { entries: out })
    }

    /// How many tokens are configured (revoked ones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks up a presented token. Malformed tokens are refused before any comparison;
    /// otherwise its digest is compared with every entry, in constant time per entry and
    /// without stopping at a match, so timing says nothing about which entry matched.
    pub fn authenticate(&self, presented: &str) -> Result<Principal, Rejection> {
        token::parse(presented).map_err(|_| Rejection::Malformed)?;
        let digest = token::digest(presented);
        let mut found: Option<&Entry> = None;
        for entry in &self.entries {
            let equal: bool = entry.digest.ct_eq(&digest).into();
            if equal {
                found = Some(entry);
            }
        }
        match found {
            None => Err(Rejection::Unknown),
            Some(entry) if entry.revoked => Err(Rejection::Revoked),
            Some(entry) => Ok(Principal { name: entry.name.clone(), scopes: entry.scopes }),
        }
    }
}

/// The live token set, replaced whole on reload.
#[derive(Debug, Default)]
pub struct TokenRegistry {
    current: RwLock<Arc<TokenSet>>,
}

impl TokenRegistry {
    /// A registry holding `set`.
    pub fn new(set: TokenSet) -> Self {
        Self { current: RwLock::new(Arc::new(set)) }
    }

    /// The set in force.
    pub fn current(&self) -> Arc<TokenSet> {
        self.current.read().clone()
    }

    /// Checks `entries` and, if they pass, makes them the set in force. On error the old set
    /// stays.
    pub fn replace(&self, entries: &[TokenEntry]) -> Result<usize, TokenConfigError> {
        let set = Arc::new(TokenSet::new(entries)?);
        let count = set.len();
        *self.current.write() = set;
        Ok(count)
    }
}

/// Token buckets, one per key: a token's name (the default), or a peer address for requests
/// without a valid token ([`crate::anonymous`]).
#[derive(Debug)]
pub struct RateLimiter<K = Arc<str>> {
    per_second: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: std::hash::Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter with `config`'s rate and burst, for any number of keys.
    pub fn new(config: RateLimitConfig) -> Self {
        Self::bounded(config, usize::MAX)
    }

    /// A limiter that holds at most `max_keys` buckets: past that, buckets that have refilled
    /// (so hold nothing a fresh one would not) are dropped, and if none has, the new key is
    /// refused as if its bucket were empty. The bound keeps an attacker with many addresses
    /// from growing the map without end.
    pub fn bounded(config: RateLimitConfig, max_keys: usize) -> Self {
        Self {
            per_second: f64::from(config.per_second.max(1)),
            burst: f64::from(config.burst.max(1)),
            max_keys,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket, or says how many seconds until one is free.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second < burst
            });
            if buckets.len() >= self.max_keys {
                return Err(1);
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket { tokens: self.burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            // Whole seconds until one request is available, at least 1.
            let wait = ((1.0 - bucket.tokens) / self.per_second).ceil();
            // Bounded: at most 1 / per_second <= 1 second with per_second >= 1.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let wait = wait.max(1.0) as u64;
            Err(wait)
        }
    }
}

/// The scope a route requires, as a type: `Authorized<JobsWrite>`.
pub trait RequiredScope: Send + Sync + 'static {
    /// The scope, or `None` for "any valid token".
    const SCOPE: Option<Scope>;
}

macro_rules! scopes {
    ($($(#[doc = $doc:literal])* $name:ident => $scope:expr;)*) => {$(
        $(#[doc = $doc])*
        #[derive(Debug)]
        pub struct $name;
        impl RequiredScope for $name {
            const SCOPE: Option<Scope> = $scope;
        }
    )*};
}

scopes! {
    /// Any valid token.
    AnyScope => None;
    /// `jobs:read`.
    JobsRead => Some(Scope::JobsRead);
    /// `jobs:write`.
    JobsWrite => Some(Scope::JobsWrite);
    /// `drivers:read`.
    DriversRead => Some(Scope::DriversRead);
    /// `metrics:read`.
    MetricsRead => Some(Scope::MetricsRead);
}

/// An authenticated, rate-limited caller holding scope `S`. Its rejection is an
/// [`ApiError`](crate::error::ApiError): 401 (with `WWW-Authenticate`), 429 or 403.
#[derive(Debug)]
pub struct Authorized<S: RequiredScope> {
    /// Who.
    pub principal: Principal,
    _scope: PhantomData<S>,
}

impl<S: RequiredScope> Authorized<S> {
    /// `principal`, once it passed authentication, its rate limit and scope `S`
    /// ([`crate::extract`] checks those).
    pub(crate) fn new(principal: Principal) -> Self {
        Self { principal, _scope: PhantomData }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::config::TokenFormat;

    fn entry(name: &str, token: &token::ApiToken, scopes: &[Scope]) -> TokenEntry {
        TokenEntry {
            name: name.to_owned(),
            sha256: token.sha256_hex(),
            scopes: scopes.to_vec(),
            format: TokenFormat::DroverV1,
            revoked: false,
        }
    }

    #[test]
    fn lookups_tell_malformed_unknown_revoked_and_valid_apart() {
        let a = token::ApiToken::from_random(&[1; 32]);
        let b = token::ApiToken::from_random(&[2; 32]);
        let c = token::ApiToken::from_random(&[3; 32]);
        let mut revoked = entry("old", &b, &[Scope::JobsRead]);
        revoked.revoked = true;
        let set = TokenSet::new(&[entry("ci", &a, &[Scope::JobsWrite]), revoked]).unwrap();
        let principal = set.authenticate(a.expose()).unwrap();
        assert_eq!(&*principal.name, "ci");
        assert!(principal.has(Scope::JobsWrite) && !principal.has(Scope::JobsRead));
        assert_eq!(set.authenticate(b.expose()), Err(Rejection::Revoked));
        assert_eq!(set.authenticate(c.expose()), Err(Rejection::Unknown));
        assert_eq!(set.authenticate("hunter2"), Err(Rejection::Malformed));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let a = token::ApiToken::from_random(&[1; 32]);
        let dup = TokenSet::new(&[
            entry("x", &a, &[Scope::JobsRead]),
            entry("y", &a, &[Scope::JobsRead]),
        ]);
        assert!(matches!(dup, Err(TokenConfigError::DuplicateDigest { .. })));
        let b = token::ApiToken::from_random(&[2; 32]);
        let same_name = TokenSet::new(&[
            entry("x", &a, &[Scope::JobsRead]),
            entry("x", &b, &[Scope::JobsRead]),
        ]);
        assert!(matches!(same_name, Err(TokenConfigError::DuplicateName { .. })));
        let mut upper = entry("x", &a, &[Scope::JobsRead]);
        upper.sha256 = upper.sha256.to_uppercase();
        assert!(matches!(TokenSet::new(&[upper]), Err(TokenConfigError::BadDigest { .. })));
        assert!(matches!(
            TokenSet::new(&[entry("x", &a, &[])]),
            Err(TokenConfigError::NoScope { .. })
        ));
    }

    #[test]
    fn buckets_refill_and_say_when() {
        let limiter = RateLimiter::new(RateLimitConfig { per_second: 2, burst: 3 });
        let name: Arc<str> = Arc::from("ci");
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.check(&name, t0).unwrap();
        }
        assert_eq!(limiter.check(&name, t0), Err(1));
        limiter.check(&name, t0 + std::time::Duration::from_millis(600)).unwrap();
        // Another token has its own bucket.
        limiter.check(&Arc::from("other"), t0).unwrap();
    }
}
