//! drover-service's integration tests: the service over a real supervisor and store, and the
//! provisioner broker, one module per area, in one test binary (issue 19).

mod broker;
mod service;
