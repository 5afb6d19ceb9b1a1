//! The raw system-call steps of drover that need `unsafe`, each behind checks that make it
//! sound, so that the crates above (the driver SDK among them) keep `#![forbid(unsafe_code)]`.
//!
//! This crate is deliberately tiny and has no dependency that could bring a sandbox, Landlock
//! or seccomp into a driver: a driver links it. Today it holds one step, [`fd::adopt_socket`];
//! it is where drover's unsafe syscall layer grows (issue 19), one module per concern, each
//! `unsafe` block with a `// SAFETY:` comment naming the invariant it relies on.
//!
//! The workspace denies `unsafe_code`; this crate allows it at crate level, and only
//! drover-sandbox's private `sys` module does the same.

#![allow(unsafe_code)]

pub mod fd;
