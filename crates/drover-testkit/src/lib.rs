//! What drover's tests share across crates (a dev-dependency only, never shipped).
//!
//! - [`postgres`]: a real PostgreSQL server per test binary, a fresh database per test.

#![forbid(unsafe_code)]

pub mod postgres;
