//! drover-transport's integration tests: connections, the validating fast path, the pipeline
//! and its properties, one module per area, in one test binary (issue 19).

mod connection;
mod fast_path;
mod pipeline;
mod properties;
