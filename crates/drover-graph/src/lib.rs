//! The workspace's structure tests (issue 19); this library is empty, and the tests are in
//! `tests/crate_graph/`.
//!
//! It is a crate of its own so that checking the structure builds only `serde_json`, not the
//! workspace:
//!
//! - `main.rs` runs `cargo metadata --format-version 1 --locked` and fails on any edge between
//!   workspace crates (normal, build or dev) that is not in its `ALLOWED` list, and on a
//!   forbidden crate in the normal/build closure of the crates that must stay small (the
//!   driver SDK and `drover-sys` carry no Landlock, seccomp or sandbox; `drover-sandbox` and
//!   `drover-proto` carry no tokio).
//! - `modules.rs` reads every crate's `src/` tree and fails on a cycle among a crate's
//!   top-level modules (`crate::x` paths, `super::` resolved, root re-exports followed), naming
//!   it with the file and line of each edge, and on a source file over 700 lines; its lists of
//!   known cycles and files being split only shrink (an entry that no longer applies fails).
//!   It also checks that every path in `crates/README.md`'s "To change X, open Y" table
//!   exists.
