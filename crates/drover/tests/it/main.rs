//! drover's integration tests: the `drover` binary (`CARGO_BIN_EXE_drover`) run as operators
//! and CI run it, one module per area. One test binary for the crate (issue 19): one link, one
//! process whose tests share the helpers below.

// Helpers first: `sandbox_harness`'s macros are in scope for the modules after it.
mod common;
#[macro_use]
mod sandbox_harness;

mod deploy_fleet;
mod driver_check;
mod fleet;
mod fleet_postgres;
mod flood;
mod gpu;
mod jail;
mod jobs;
mod kubernetes_probes;
mod limits;
mod readme;
mod readme_job;
mod restart;
mod sandbox;
mod security_doc;
mod serve;
mod serve_operators;
mod serve_sandbox;
mod token;
mod validate;
