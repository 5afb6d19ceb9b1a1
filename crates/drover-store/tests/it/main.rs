//! drover-store's integration tests, one module per area, in one test binary (issue 19): the
//! shared store suite on SQLite and PostgreSQL (`on_both!`), fleet and job-owner rules, crash
//! and full-disk behaviour of the SQLite store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// Helpers first: `on_both!` is in scope for the modules after it.
#[macro_use]
mod common;

mod crash;
mod fleet;
mod full_disk;
mod owners;
mod sqlite;
mod store;
