//! Outbound webhooks: signed, retried, and verifiable.
//!
//! A delivery is `POST <url>` with the JSON body and
//!
//! ```text
//! Drover-Signature: t=1795305600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//!
//! v1 = hex(HMAC-SHA256(secret, "1795305600" + "." + body))
//! ```
//!
//! The receiver checks it with [`verify`]: constant-time comparison, and timestamps more than
//! [`TOLERANCE`] (5 minutes) away from its clock are refused, so a captured delivery cannot be
//! replayed later. Every attempt is signed afresh with the time it is sent.
//!
//! [`WebhookSender`] retries connection failures, timeouts, 429 and 5xx with exponential
//! backoff (1 s, 2 s, 4 s, ... capped at 60 s; 8 attempts by default), never follows
//! redirects, and never retries another 4xx. It connects only to public addresses unless
//! configured otherwise, checked on the resolved address ([`crate::egress`]). The secret comes from the environment
//! ([`WebhookSecret::from_env`]), at least 32 bytes, and is redacted from `Debug`.
//!
//! ```
//! use drover_api::webhook::{sign, verify};
//!
//! let secret = b"an example secret of at least 32 bytes!!";
//! let body = br#"{"type":"job.finished"}"#;
//! let header = sign(secret, 1_795_305_600, body);
//! assert!(verify(secret, &header, body, 1_795_305_660).is_ok());
//! assert!(verify(secret, &header, body, 1_795_305_600 + 301).is_err()); // stale
//! assert!(verify(secret, &header, b"{}", 1_795_305_600).is_err()); // tampered
//! ```

use std::time::Duration;

use drover_proto::api::WebhookEvent;

use crate::egress::{FilteringResolver, TargetPolicy, check_url, is_forbidden};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "drover-signature";
/// How far a signature's timestamp may be from the verifier's clock.
pub const TOLERANCE: Duration = Duration::from_secs(300);
/// The environment variable holding the signing secret.
pub const SECRET_ENV: &str = "DROVER_WEBHOOK_SECRET";
/// The shortest accepted secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The signing secret. `Debug` is redacted.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// Wraps `bytes` if they are at least [`MIN_SECRET_BYTES`] long.
    pub fn new(bytes: Vec<u8>) -> Result<Self, WebhookError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(WebhookError::WeakSecret);
        }
        Ok(Self(bytes))
    }

    /// Reads [`SECRET_ENV`]; `Ok(None)` when it is unset.
    pub fn from_env() -> Result<Option<Self>, WebhookError> {
        match std::env::var_os(SECRET_ENV) {
            None => Ok(None),
            Some(value) => Self::new(value.into_encoded_bytes()).map(Some),
        }
    }
}

/// Why a signature does not verify, or a delivery failed. Never carries the secret, the
/// signature or the body.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The header is not `t=<seconds>,v1=<hex>`.
    #[error("the signature header is malformed")]
    Malformed,
    /// The timestamp is more than 5 minutes from now.
    #[error("the signature's timestamp is outside the {0:?} tolerance")]
    Stale(Duration),
    /// No `v1` signature matches.
    #[error("the signature does not match")]
    Mismatch,
    /// The secret is shorter than 32 bytes.
    #[error("the webhook secret must be at least 32 bytes")]
    WeakSecret,
    /// The URL is not acceptable (not https, or not a URL).
    #[error("the webhook URL is not acceptable: {0}")]
    Url(&'static str),
    /// The URL's host is, or resolves only to, addresses the target policy refuses
    /// (loopback, private, link-local, metadata); never retried.
    #[error("the webhook target is not a public address")]
    ForbiddenTarget,
    /// The receiver refused with a status that is not retried.
    #[error("the receiver answered {0}; not retried")]
    Refused(u16),
    /// Every attempt failed.
    #[error("delivery failed after {attempts} attempts")]
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
    },
    /// The HTTP client could not be built.
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // Invariant: HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    }
}

/// The `Drover-Signature` value for `body` sent at `timestamp_s` (Unix seconds).
pub fn sign(secret: &[u8], timestamp_s: u64, body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp_s},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Verifies a `Drover-Signature` header against `body` at `now_s` (Unix seconds): the
/// timestamp must be within [`TOLERANCE`] of now, and one `v1` must equal the HMAC, compared
/// in constant time. Several `v1` entries are allowed (secret rotation).
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_s: u64) -> Result<(), WebhookError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) if timestamp.is_none() => {
                timestamp = Some(value.parse::<u64>().map_err(|_| WebhookError::Malformed)?);
            }
            Some(("v1", value)) => {
                signatures.push(hex::decode(value).map_err(|_| WebhookError::Malformed)?);
            }
            Some(_) => {}
            None => return Err(WebhookError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(WebhookError::Malformed)?;
    if signatures.is_empty() {
        return Err(WebhookError::Malformed);
    }
    if now_s.abs_diff(timestamp) > TOLERANCE.as_secs() {
        return Err(WebhookError::Stale(TOLERANCE));
    }
    let mut matched = false;
    for signature in &signatures {
        let mut mac = mac(secret);
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // `verify_slice` compares in constant time.
        matched |= mac.verify_slice(signature).is_ok();
    }
    if matched { Ok(()) } else { Err(WebhookError::Mismatch) }
}

/// How deliveries are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, at least 1. Default 8.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled each time. Default 1 s.
    pub first_delay: Duration,
    /// Longest delay between attempts. Default 60 s.
    pub max_delay: Duration,
    /// Per-attempt timeout. Default 10 s.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay after attempt `attempt` (1-based) failed.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Sends signed webhooks.
#[derive(Clone, Debug)]
pub struct WebhookSender {
    client: reqwest::Client,
    secret: WebhookSecret,
    policy: RetryPolicy,
    allow_http: bool,
    targets: TargetPolicy,
}

impl WebhookSender {
    /// A sender. `allow_http` accepts `http://` URLs; `targets` says which addresses it may
    /// connect to ([`crate::egress`]: public ones only unless explicitly allowed).
    pub fn new(
        secret: WebhookSecret,
        policy: RetryPolicy,
        allow_http: bool,
        targets: TargetPolicy,
    ) -> Result<Self, WebhookError> {
        // The one TLS provider (see the workspace manifest); a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(FilteringResolver::new(targets))
            .timeout(policy.timeout)
            .build()
            .map_err(WebhookError::Client)?;
        Ok(Self { client, secret, policy, allow_http, targets })
    }

    /// Delivers `event` to `url`, retrying as the policy says; returns the attempts made.
    pub async fn deliver(&self, url: &str, event: &WebhookEvent) -> Result<u32, WebhookError> {
        let https = url.starts_with("https://");
        let http_allowed = self.allow_http && url.starts_with("http://");
        if !(https || http_allowed) {
            return Err(WebhookError::Url("only https:// URLs are allowed"));
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| WebhookError::Url("not a URL"))?;
        if check_url(&parsed, self.targets).is_err() {
            tracing::warn!(event = %event.id, "webhook target is not a public address; not sent");
            return Err(WebhookError::ForbiddenTarget);
        }
        let body =
            serde_json::to_vec(event).map_err(|_| WebhookError::Url("unserializable event"))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let sent = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, sign(&self.secret.0, now, &body))
                .header("drover-event-id", event.id.as_str())
                .body(body.clone())
                .send()
                .await;
            let retry = match sent {
                Ok(response) if response.status().is_success() => return Ok(attempt),
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status != 429 && !(500..600).contains(&status) {
                        tracing::warn!(event = %event.id, status, "webhook refused; not retried");
                        return Err(WebhookError::Refused(status));
                    }
                    format!("status {status}")
                }
                Err(error) if is_forbidden(&error) => {
                    tracing::warn!(event = %event.id, "webhook target is not a public address; not sent");
                    return Err(WebhookError::ForbiddenTarget);
                }
                // reqwest's error text names the URL, which the job's owner chose; no secret.
                Err(error) => {
                    if error.is_timeout() { "timeout" } else { "connection failed" }.to_owned()
                }
            };
            if attempt >= self.policy.max_attempts.max(1) {
                tracing::warn!(event = %event.id, attempts = attempt, last = %retry, "webhook delivery gave up");
                return Err(WebhookError::GaveUp { attempts: attempt });
            }
            let delay = self.policy.delay_after(attempt);
            tracing::info!(event = %event.id, attempt, last = %retry, ?delay, "webhook delivery will be retried");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signature_verifies_within_five_minutes_either_way() {
        let header = sign(SECRET, 1000, b"body");
        assert!(verify(SECRET, &header, b"body", 1000).is_ok());
        assert!(verify(SECRET, &header, b"body", 1300).is_ok());
        assert!(verify(SECRET, &header, b"body", 700).is_ok());
        assert!(matches!(verify(SECRET, &header, b"body", 1301), Err(WebhookError::Stale(_))));
        assert!(matches!(verify(SECRET, &header, b"body", 699), Err(WebhookError::Stale(_))));
    }

    #[test]
    fn tampering_and_wrong_secrets_fail() {
        let header = sign(SECRET, 1000, b"body");
        assert!(matches!(verify(SECRET, &header, b"bodY", 1000), Err(WebhookError::Mismatch)));
        assert!(matches!(
            verify(b"another secret", &header, b"body", 1000),
            Err(WebhookError::Mismatch)
        ));
        // The timestamp is signed: moving it breaks the signature.
        let moved = header.replace("t=1000", "t=1001");
        assert!(matches!(verify(SECRET, &moved, b"body", 1000), Err(WebhookError::Mismatch)));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in ["", "t=1000", "v1=00", "t=x,v1=00", "t=1000,v1=zz", "garbage"] {
            assert!(
                matches!(verify(SECRET, header, b"body", 1000), Err(WebhookError::Malformed)),
                "{header}"
            );
        }
    }

    #[test]
    fn rotation_accepts_any_listed_signature() {
        let old = sign(b"old secret, thirty-two bytes long!", 1000, b"body");
        let new = sign(SECRET, 1000, b"body");
        let both = format!("{new},{}", old.split(',').nth(1).unwrap());
        assert!(verify(b"old secret, thirty-two bytes long!", &both, b"body", 1000).is_ok());
        assert!(verify(SECRET, &both, b"body", 1000).is_ok());
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA256(key = SECRET, "1795305600.{}") computed independently (Python hmac).
        let header = sign(SECRET, 1_795_305_600, b"{}");
        assert_eq!(header, format!("t=1795305600,v1={}", KNOWN));
    }

    const KNOWN: &str = "96f212b9c9d4eed478d56e91bf0dfc07eae69b5d54a67ca3fa8262dbc2748c9b";

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_after(1), Duration::from_secs(1));
        assert_eq!(policy.delay_after(3), Duration::from_secs(4));
        assert_eq!(policy.delay_after(20), Duration::from_secs(60));
    }

    #[test]
    fn short_secrets_are_refused_and_debug_is_redacted() {
        assert!(matches!(WebhookSecret::new(b"short".to_vec()), Err(WebhookError::WeakSecret)));
        let secret = WebhookSecret::new(SECRET.to_vec()).unwrap();
        assert!(!format!("{secret:?}").contains("0123"));
    }
}
