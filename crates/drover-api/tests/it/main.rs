//! drover-api's integration tests: the HTTP API's router, server, token reload and webhooks
//! against a real store, one module per area, in one test binary (issue 19).

// Shared by the modules below.
mod common;

mod http;
mod router;
mod sighup;
mod webhook;
