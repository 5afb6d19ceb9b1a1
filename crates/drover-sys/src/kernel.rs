//! What the running kernel offers, asked with calls that change nothing.

use std::io;

use libc::{c_uint, c_void};

use crate::{check, nr};

/// `landlock_create_ruleset` flag: return the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: c_uint = 1;
/// `SECCOMP_GET_ACTION_AVAIL` for `seccomp(2)`.
const SECCOMP_GET_ACTION_AVAIL: c_uint = 2;

/// The Landlock ABI version, or the errno saying why there is none.
pub fn landlock_abi() -> Result<u32, io::Error> {
    // SAFETY: with LANDLOCK_CREATE_RULESET_VERSION the kernel requires a null attribute pointer
    // and size 0 and reads nothing.
    let ret = unsafe {
        libc::syscall(
            nr::LANDLOCK_CREATE_RULESET,
            std::ptr::null::<c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    check(ret).map(|v| u32::try_from(v).unwrap_or(0))
}

/// Whether the kernel knows the seccomp return action `action`.
pub fn seccomp_action_available(action: u32) -> bool {
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 through the pointer, which points to a
    // live local of that type.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0 as c_uint,
            &action as *const u32,
        )
    };
    ret == 0
}

/// Whether `close_range(2)` exists: a range past any possible fd closes nothing.
pub fn close_range_available() -> bool {
    // SAFETY: close_range on a range where no fd can be open has no effect.
    let ret = unsafe { libc::syscall(nr::CLOSE_RANGE, c_uint::MAX - 1, c_uint::MAX, 0 as c_uint) };
    ret == 0
}
