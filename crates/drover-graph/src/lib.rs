//! The crate-graph test lives in `tests/crate_graph.rs`; this library is empty.
//!
//! It is a crate of its own so that checking the graph builds only `serde_json`, not the
//! workspace: the test runs `cargo metadata --format-version 1` on the workspace and fails on
//! any edge between workspace crates that is not in its allowed list, and on any forbidden
//! crate in the dependency closure of the crates that must stay small (the driver SDK and
//! `drover-sys` carry no Landlock, seccomp or sandbox; `drover-sandbox` carries no tokio).
