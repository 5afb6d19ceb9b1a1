//! drover-provision's integration tests, one module per area, in one test binary (issue 19):
//! the provisioner against the simulator's faults and market, the money rules, fleets of
//! replicas on one account, log scrubbing, metrics and the store's clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// Helpers first.
#[macro_use]
mod util;

mod faults;
mod fleet;
mod log_scrub;
mod metrics;
mod money;
mod store_clock;
