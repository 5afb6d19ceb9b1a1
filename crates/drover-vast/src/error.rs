//! How a Vast.ai call failed, classified by the body's `error` field rather than the status
//! alone (a bad key can come back as 404 `auth_error`, a vanished offer as 404 or 410
//! `no_such_ask`).

use std::time::Duration;

use serde_json::Value;

use crate::redact::bounded;

/// Longest server message kept in an error, in characters.
const MESSAGE_MAX: usize = 200;

/// Why a Vast.ai call failed. Messages never carry the key, a URL with credentials, or a
/// response body; a server's `msg` is kept only bounded and with the key scrubbed out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum VastError {
    /// The key was refused: `error: "auth_error"`, or 401/403.
    #[error("{op}: the API key was refused (HTTP {status})")]
    Auth {
        /// The operation, e.g. `"create instance"`.
        op: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// The offer was sold or withdrawn (`no_such_ask`, code 3603, or 410).
    #[error("{op}: the offer is no longer available (HTTP {status})")]
    OfferGone {
        /// The operation.
        op: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// The instance does not exist (`not_found`, `no_such_instance`).
    #[error("{op}: no such instance (HTTP {status})")]
    NotFound {
        /// The operation.
        op: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// Still rate limited (429) when the retries ran out.
    #[error("{op}: rate limited (HTTP 429) after {attempts} attempts")]
    RateLimited {
        /// The operation.
        op: &'static str,
        /// Attempts made.
        attempts: u32,
    },
    /// A server or gateway error (5xx) that retries did not clear, or that is never retried.
    #[error("{op}: server error (HTTP {status}) after {attempts} attempts")]
    Server {
        /// The operation.
        op: &'static str,
        /// The last HTTP status.
        status: u16,
        /// Attempts made.
        attempts: u32,
    },
    /// Any other refusal (4xx, or `success: false`), never retried.
    #[error("{op}: refused (HTTP {status}, error `{code}`): {message}")]
    Refused {
        /// The operation.
        op: &'static str,
        /// The HTTP status.
        status: u16,
        /// The body's `error` field, or `""`.
        code: String,
        /// The body's `msg`, bounded, key scrubbed.
        message: String,
    },
    /// The request did not complete: no connection, a timeout, a broken body.
    #[error("{op}: {failure} after {attempts} attempts")]
    Transport {
        /// The operation.
        op: &'static str,
        /// What failed.
        failure: TransportFailure,
        /// Attempts made.
        attempts: u32,
    },
    /// The overall deadline passed before a retry could be made.
    #[error("{op}: gave up after {attempts} attempts; the overall deadline of {deadline:?} passed")]
    Deadline {
        /// The operation.
        op: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The response is not what the API documents (unparseable, a missing field, a list that
    /// is not a list). A list call that fails this way is an error, never an empty list.
    #[error("{op}: unexpected response (HTTP {status}): {reason}")]
    Malformed {
        /// The operation.
        op: &'static str,
        /// The HTTP status.
        status: u16,
        /// What is wrong.
        reason: String,
    },
    /// The client could not be built (a bad base URL, a bad key).
    #[error("Vast.ai client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

/// What kind of transport failure ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// No connection could be made: the request was never sent.
    Connect,
    /// The request timed out; the server may have acted on it.
    Timeout,
    /// Anything else after sending (a reset, a broken body); the server may have acted on it.
    Other,
}

impl std::fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connect => "no connection",
            Self::Timeout => "timed out",
            Self::Other => "transport error",
        })
    }
}

impl VastError {
    /// Whether this error means the offer is gone, so the next offer may be tried.
    pub fn is_offer_gone(&self) -> bool {
        matches!(self, Self::OfferGone { .. })
    }

    /// Whether this error is the key being refused.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Auth { .. })
    }

    /// A stable short name of the kind of failure, for metrics: `auth`, `offer_gone`,
    /// `not_found`, `rate_limited`, `server`, `refused`, `transport`, `deadline`,
    /// `malformed`, `config`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "auth",
            Self::OfferGone { .. } => "offer_gone",
            Self::NotFound { .. } => "not_found",
            Self::RateLimited { .. } => "rate_limited",
            Self::Server { .. } => "server",
            Self::Refused { .. } => "refused",
            Self::Transport { .. } => "transport",
            Self::Deadline { .. } => "deadline",
            Self::Malformed { .. } => "malformed",
            Self::Config { .. } => "config",
        }
    }
}

/// The fields of a Vast.ai error body that classification looks at.
#[derive(Debug, Default)]
pub(crate) struct ErrorBody {
    pub(crate) error: Option<String>,
    pub(crate) msg: Option<String>,
}

impl ErrorBody {
    /// Reads `error` and `msg` (or `message`, or `detail`) from a body; a body that
    /// is not a JSON object (the plain-text 429, an HTML gateway page) gives `msg` as its text.
    pub(crate) fn parse(body: &[u8]) -> Self {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => {
                let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
                Self {
                    error: text("error"),
                    msg: text("msg").or_else(|| text("message")).or_else(|| text("detail")),
                }
            }
            _ => Self {
                msg: Some(String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned()),
                ..Self::default()
            },
        }
    }

    fn mentions(&self, needle: &str) -> bool {
        self.error.as_deref().is_some_and(|e| e.contains(needle))
            || self.msg.as_deref().is_some_and(|m| m.contains(needle))
    }
}

/// Classifies a failed response. `scrub` removes the key from the server's message (a server
/// has no business echoing it, but the message goes into errors and logs).
pub(crate) fn classify(
    op: &'static str,
    status: u16,
    body: &ErrorBody,
    attempts: u32,
    scrub: impl Fn(&str) -> String,
) -> VastError {
    let code = body.error.as_deref().unwrap_or("");
    if code == "auth_error" || status == 401 || status == 403 {
        return VastError::Auth { op, status };
    }
    if code == "no_such_ask" || body.mentions("no_such_ask") || body.mentions("3603") {
        return VastError::OfferGone { op, status };
    }
    if matches!(code, "not_found" | "no_such_instance") {
        return VastError::NotFound { op, status };
    }
    if status == 429 {
        return VastError::RateLimited { op, attempts };
    }
    if status >= 500 {
        return VastError::Server { op, status, attempts };
    }
    VastError::Refused {
        op,
        status,
        code: bounded(code, 64),
        message: bounded(&scrub(body.msg.as_deref().unwrap_or("")), MESSAGE_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(status: u16, body: &str) -> VastError {
        classify("op", status, &ErrorBody::parse(body.as_bytes()), 1, |s| {
            s.replace("KEY", "[redacted]")
        })
    }

    #[test]
    fn classified_by_error_field() {
        assert!(c(404, r#"{"error":"auth_error","msg":"Invalid user key"}"#).is_auth());
        assert!(c(401, r#"{"error":"auth_error"}"#).is_auth());
        assert!(c(403, "forbidden").is_auth());
        assert!(
            c(404, r#"{"error":"invalid_args","msg":"error 404/3603: no_such_ask Instance type by id 5 is not available.","ask_id":5}"#)
                .is_offer_gone()
        );
        assert!(c(410, r#"{"error":"no_such_ask","msg":"error 410/3907"}"#).is_offer_gone());
        assert!(matches!(c(404, r#"{"error":"no_such_instance"}"#), VastError::NotFound { .. }));
        assert!(matches!(c(404, r#"{"error":"not_found"}"#), VastError::NotFound { .. }));
        assert!(matches!(c(429, "API requests too frequent"), VastError::RateLimited { .. }));
        assert!(matches!(c(502, "<html>"), VastError::Server { status: 502, .. }));
        match c(400, r#"{"success":false,"error":"invalid_args","msg":"bad KEY here"}"#) {
            VastError::Refused { code, message, .. } => {
                assert_eq!(code, "invalid_args");
                assert_eq!(message, "bad [redacted] here");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn alternative_message_fields() {
        let b =
            ErrorBody::parse(br#"{"detail":"API requests too frequent endpoint threshold=4.5"}"#);
        assert!(b.msg.unwrap().contains("threshold"));
        let b = ErrorBody::parse(b"API requests too frequent");
        assert_eq!(b.msg.as_deref(), Some("API requests too frequent"));
    }
}
