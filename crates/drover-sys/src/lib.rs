//! The raw system-call steps of drover that need `unsafe`, each behind checks that make it
//! sound, so that the crates above (the sandbox and the driver SDK among them) keep
//! `#![forbid(unsafe_code)]`.
//!
//! This crate depends on nothing but `std`, `libc` and `thiserror`, so it can never bring a
//! sandbox, Landlock or seccomp crate into a driver: a driver links it (for [`fd`]). Every
//! function is safe to call with any argument: where a system call could break memory or
//! descriptor safety for some inputs, the function checks them first (each one says which) and
//! fails with `EINVAL` instead. Each `unsafe` block has a `// SAFETY:` comment naming the
//! invariant it relies on.
//!
//! | Module | Concern |
//! |---|---|
//! | [`fd`] | adopting an inherited socket (the driver SDK's transport) |
//! | [`process`] | Phase A's `prctl`s, signals, waiting, polling |
//! | [`kernel`] | feature probes: Landlock ABI, seccomp actions, `close_range` |
//! | [`seccomp`] | compiled filters and the user-notification listener |
//! | [`clone`] | `clone3` (legacy `clone` fallback), namespace probes, [`clone::spawn`] |
//! | [`child`] | the child's plan and its steps between clone and `execve` |
//! | [`mount`] | the private mount tree, built by the child |
//! | [`report`] | the child's report socket, read by the parent |
//! | [`attempt`] | the sandbox probe's escape attempts |
//!
//! The code between clone and `execve` ([`child`], [`mount`]) runs in a copy of a possibly
//! multi-threaded parent: it makes only async-signal-safe calls on data the parent prepared,
//! never allocates, never panics, and leaves only through `execve` or `_exit`.
//!
//! The workspace denies `unsafe_code`; this crate allows it at crate level, and besides
//! drover-gpu's `cuda` module it is the only place in drover that does.

#![allow(unsafe_code)]
// System call results are `c_long`s that carry `int`-sized values (fds, pids) by the kernel ABI,
// and ABI structs take `u32` lengths of tiny types: the narrowing casts here cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use std::io;

use libc::{c_int, c_long};

pub mod attempt;
pub mod child;
pub mod clone;
pub mod fd;
pub mod kernel;
pub mod mount;
pub mod process;
pub mod report;
pub mod seccomp;

/// Syscall numbers shared by every architecture drover builds for (the unified table above
/// 424), which older `libc` releases do not all name.
mod nr {
    use libc::c_long;

    pub(crate) const PIDFD_SEND_SIGNAL: c_long = 424;
    pub(crate) const CLONE3: c_long = 435;
    pub(crate) const CLOSE_RANGE: c_long = 436;
    pub(crate) const MOUNT_SETATTR: c_long = 442;
    pub(crate) const LANDLOCK_CREATE_RULESET: c_long = 444;
    pub(crate) const LANDLOCK_ADD_RULE: c_long = 445;
    pub(crate) const LANDLOCK_RESTRICT_SELF: c_long = 446;
}

/// `-1` and errno to `io::Error`, anything else to its value.
fn check(ret: c_long) -> io::Result<c_long> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// [`check`] for calls that return an `int`.
fn check_int(ret: c_int) -> io::Result<c_int> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// The error a function of this crate returns for an argument it refuses.
fn invalid() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}
