//! Process-wide state and other processes: Phase A's `prctl`s, signals, waiting and polling.
//!
//! None of these calls writes memory of ours except through a pointer to a live local of the
//! type the kernel writes, and none takes ownership of a descriptor: each is sound for any
//! argument, and a bad one is an error from the kernel.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use libc::{c_int, c_long, c_ulong};

use crate::{check, check_int, nr};

/// Securebits (`linux/securebits.h`).
const SECBIT_NOROOT: c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP_LOCKED: c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: c_ulong = 1 << 7;

/// `waitid` id type: the id is a pidfd.
const P_PIDFD: libc::idtype_t = 3;

/// The securebits Phase A locks (minijail's choice): root gets no capabilities from exec, the
/// kernel's uid-change fixups stay on, keep-caps stays off, ambient capabilities cannot be
/// raised, and none of that can be changed again.
pub const LOCKED_SECUREBITS: c_ulong = SECBIT_NOROOT
    | SECBIT_NOROOT_LOCKED
    | SECBIT_NO_SETUID_FIXUP_LOCKED
    | SECBIT_KEEP_CAPS_LOCKED
    | SECBIT_NO_CAP_AMBIENT_RAISE
    | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

/// `prctl(PR_SET_SECUREBITS, bits)`.
pub fn set_securebits(bits: c_ulong) -> io::Result<()> {
    // SAFETY: PR_SET_SECUREBITS takes one integer argument and touches no memory of ours.
    check_int(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_CAPBSET_DROP, cap)` for every capability up to `last_cap`.
pub fn drop_bounding_set(last_cap: u32) -> io::Result<()> {
    for cap in 0..=last_cap {
        // SAFETY: PR_CAPBSET_DROP takes one integer argument and touches no memory of ours.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c_ulong::from(cap), 0, 0, 0) };
        check_int(ret)?;
    }
    Ok(())
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory of ours.
    check_int(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as c_ulong, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_GET_CHILD_SUBREAPER)`.
pub fn is_child_subreaper() -> bool {
    let mut value: c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer, which points to a
    // live local of that type.
    let ret =
        unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut value as *mut c_int, 0, 0, 0) };
    ret == 0 && value != 0
}

/// `prctl(PR_GET_DUMPABLE)`.
pub fn is_dumpable() -> io::Result<bool> {
    // SAFETY: PR_GET_DUMPABLE takes no arguments and touches no memory of ours.
    check_int(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }).map(|v| v != 0)
}

/// `setuid(0)` through the raw system call, so glibc's cross-thread broadcast cannot mask the
/// result. Phase A expects this to fail.
pub fn try_setuid_root() -> io::Result<()> {
    // SAFETY: setuid takes one integer argument and touches no memory of ours.
    check(unsafe { libc::syscall(libc::SYS_setuid, 0 as c_long) }).map(drop)
}

/// `pidfd_send_signal(pidfd, signal, NULL, 0)`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: c_int) -> io::Result<()> {
    // SAFETY: a null siginfo means "as kill(2)"; the fd is borrowed and stays open.
    let ret = unsafe {
        libc::syscall(
            nr::PIDFD_SEND_SIGNAL,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    check(ret).map(drop)
}

/// How a waited-for child ended, from `siginfo_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    /// `CLD_EXITED`, `CLD_KILLED` or `CLD_DUMPED`.
    pub code: c_int,
    /// The exit status or the signal number.
    pub status: c_int,
}

/// `waitid(P_PIDFD, pidfd, WEXITED | flags)`; `None` when `WNOHANG` found nothing yet.
pub fn waitid_pidfd(pidfd: BorrowedFd<'_>, flags: c_int) -> io::Result<Option<ChildStatus>> {
    // SAFETY: siginfo_t is plain data for which all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waitid writes one siginfo_t through the pointer, which points to a live
        // local of that type; the fd is borrowed and stays open.
        let ret = unsafe {
            libc::waitid(P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | flags)
        };
        match check_int(ret) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    // SAFETY: waitid succeeded, so the kernel filled si_pid and si_status (zero when WNOHANG
    // found nothing, which is why the struct was zeroed).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(ChildStatus { code: info.si_code, status }))
}

/// One `poll(2)` over up to four `fds` (events `POLLIN`); returns each fd's `revents` (0: not
/// ready). Descriptors past the fourth are not polled.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: c_int) -> io::Result<[i16; 4]> {
    let mut pfds = [libc::pollfd { fd: -1, events: 0, revents: 0 }; 4];
    for (slot, fd) in pfds.iter_mut().zip(fds) {
        *slot = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    }
    let count = fds.len().min(4) as libc::nfds_t;
    // SAFETY: the pointer and count describe `count` (at most 4) initialised pollfd entries of
    // a live local array of 4; the fds are borrowed and stay open for the call.
    let ret = unsafe { libc::poll(pfds.as_mut_ptr(), count, timeout_ms) };
    match check_int(ret) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok([0; 4]),
        Err(e) => return Err(e),
    }
    let mut ready = [0i16; 4];
    for (flag, pfd) in ready.iter_mut().zip(&pfds) {
        *flag = pfd.revents;
    }
    Ok(ready)
}

/// Process ids of this process's direct children, from `/proc/self/task/*/children`.
pub fn list_children() -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(text.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()));
        }
    }
    out
}

/// `kill(pid, signal)`; a vanished process is not an error.
pub fn kill(pid: libc::pid_t, signal: c_int) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    match check_int(unsafe { libc::kill(pid, signal) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// `waitpid(pid, WNOHANG or 0)`: `Some(pid)` when a child was reaped, `None` when none is
/// ready or none is left.
pub fn reap(pid: libc::pid_t, block: bool) -> Option<libc::pid_t> {
    let mut status: c_int = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: waitpid writes one int through the pointer, which points to a live local.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
        if ret > 0 {
            return Some(ret);
        }
        if ret == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Whether this process has exactly one thread (`/proc/self/task` has one entry): a fork
/// then may run ordinary code in the child, since no other thread can hold a lock there.
pub fn is_single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").map(|tasks| tasks.count() == 1).unwrap_or(false)
}
