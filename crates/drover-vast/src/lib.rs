//! drover's Vast.ai client: the only code that holds the key on the wire, and the clock the
//! provisioner and the simulator share.
//!
//! | Module | What it does |
//! |---|---|
//! | [`secret`] | [`ApiKey`]: read once from `VASTAI_API_KEY`, redacted in every `Debug`/`Display` |
//! | [`client`](VastClient) | the REST client: retries, error classification, "any contract is live" |
//! | [`model`] | the request and response shapes the client speaks |
//! | [`error`] | [`VastError`]: every failure classified, the key scrubbed from every message |
//! | [`redact`] | blanks secret-bearing fields (and the key in any encoding) before anything is logged |
//! | [`retry`] | [`RetryPolicy`]: which failures are retried, and the backoff |
//! | [`metrics`] | every provider call counted and timed for `/metrics` |
//! | [`clock`] | [`Clock`]: wall time, or scaled for tests; the simulator bills on the same clock |
//! | [`deadman`] | the dead-man's switch markers the `onstart` script and the simulator share |
//!
//! The simulator that speaks the same API is `drover-vast-sim`; the policy that decides what
//! to rent (estimate, gate, leases, reaper) is `drover-provision`. This crate knows neither.
//!
//! Architecture invariants:
//!
//! - The key never leaves the client: it is sent only as `Authorization: Bearer`, never in a
//!   URL, log line, error, `Debug` output or anything handed to a driver; plain `http://` is
//!   accepted only for loopback addresses.
//! - Create is never blindly retried: every outcome that may hide an instance says so.
//! - A failed list is an error, never an empty list; a failed page fails the whole call.
//! - No policy: the client does what it is asked and reports what happened.

#![forbid(unsafe_code)]

mod billing;
mod client;
pub mod clock;
pub mod deadman;
pub mod error;
pub mod metrics;
pub mod model;
pub mod redact;
pub mod retry;
pub mod secret;

pub use billing::Billed;
pub use client::{BASE_URL_ENV, DEFAULT_BASE_URL, Destroyed, VastClient, base_url_from_env};
pub use clock::Clock;
pub use error::{TransportFailure, VastError};
pub use metrics::ProviderMetrics;
pub use model::{
    CreateOutcome, CreateRequest, Instance, InstanceState, Offer, OfferQuery, PriceIncrease, User,
};
pub use retry::RetryPolicy;
pub use secret::ApiKey;
