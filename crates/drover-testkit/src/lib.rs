//! What drover's tests share across crates (a dev-dependency only, never shipped).
//!
//! - [`postgres`]: a real PostgreSQL server per test binary, a fresh database per test.
//! - [`privileged`]: whether root-only tests can run here, and [`skip_or_fail!`] for when they
//!   cannot (a failure under the calling crate's `privileged-tests` feature, which CI turns on).

#![forbid(unsafe_code)]

pub mod postgres;
pub mod privileged;
