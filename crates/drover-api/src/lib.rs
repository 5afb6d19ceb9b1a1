//! drover's HTTP API: how operators and their tools submit and follow GPU jobs.
//!
//! [`router`] builds the whole API as an axum [`Router`](axum::Router) over an [`ApiState`],
//! which holds the supervisor behind it as a [`Backend`]. Tests drive it with `oneshot`, no
//! socket needed; [`serve`] runs it on a listener.
//!
//! | Route | Scope | |
//! |---|---|---|
//! | `GET /healthz` | none (the only unauthenticated route) | liveness |
//! | `GET /readyz` | any token | readiness (200 or 503) |
//! | `POST /v1/jobs` | `jobs:write` | submit; `Idempotency-Key` honoured; 201 once durable |
//! | `GET /v1/jobs` | `jobs:read` | list (own jobs¹): `state`, `driver`, `label=k=v`, `limit`, `cursor` |
//! | `GET /v1/jobs/{id}` | `jobs:read` | one job (own¹) |
//! | `DELETE /v1/jobs/{id}` | `jobs:write` | cancel (own¹) |
//! | `GET /v1/jobs/{id}/events` | `jobs:read` | server-sent events (own¹), resumable with `Last-Event-ID` |
//! | `POST /v1/estimates` | `jobs:write` | dry-run estimate through the gate |
//! | `GET /v1/drivers` | `drivers:read` | drivers, actions, params schemas, health |
//! | `GET /v1/openapi.json` | any token | this API, from the same schemas validation uses |
//! | `GET /metrics` | `metrics:read` | Prometheus text |
//!
//! ¹ A job belongs to the token that submitted it; another token's job is a 404 unless the
//! caller's token carries `jobs:admin` ([`routes`]).
//!
//! The guarantees, each with its module:
//!
//! - [`auth`] (SR-001): 256-bit tokens ([`token`]), stored as SHA-256 digests, compared in
//!   constant time, malformed tokens refused before any lookup, scopes as types, per-token
//!   rate limits, reload without restart ([`reload`]).
//! - [`body`] (SR-002): every body and query validated against its schema before the handler
//!   runs; 400 with JSON-pointer violations, 413, 415.
//! - [`error`] and [`server`] (SR-003): production error bodies are a code and a request id;
//!   internal errors and panics become `500 {"error": "internal", "request_id": ...}` with the
//!   details in the log under the same id.
//! - [`audit`]: one JSON line per request and per job action; never a token.
//! - [`webhook`]: HMAC-SHA256-signed outbound events with retries, and the verifier.
//! - [`listener`], [`anonymous`], [`sse`], [`egress`] (issue 21): header-read timeout,
//!   connection caps and a descriptor reserve; per-peer limits and aggregated audit for
//!   requests without a token; per-token event-stream caps; webhooks to public addresses only.
//!
//! Architecture invariant: this crate never sees a token after the auth extractor; everything
//! downstream (handlers, backend, audit, logs) gets the token's configured name.

#![forbid(unsafe_code)]

pub mod anonymous;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod body;
pub mod egress;
pub mod error;
mod extract;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod reload;
pub mod routes;
pub mod server;
pub mod sse;
pub mod state;
pub mod token;
pub mod webhook;

pub use audit::Auditor;
pub use backend::{Backend, BackendError, BoxFuture, EventStream, JobQuery, Submission, Submitted};
pub use error::ApiError;
pub use server::{router, serve};
pub use state::{ApiSettings, ApiState, StartError};
