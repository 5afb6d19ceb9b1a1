//! Every raw system call of the crate, and the code that runs in a child between `clone3` and
//! `execve`.
//!
//! This is the only module allowed `unsafe`. Each block says which invariant makes it sound.
//!
//! The child half ([`spawn`]) runs in a copy of a possibly multi-threaded parent, so it may only
//! make async-signal-safe calls: it calls thin libc wrappers and raw system calls on data the
//! parent prepared ([`ChildPlan`]), never allocates, never panics (no indexing, no formatting),
//! and leaves only through `execve` or `_exit`.

// System call results are `c_long`s that carry `int`-sized values (fds, pids) by the kernel ABI,
// and ABI structs take `u32` lengths of tiny types: the narrowing casts here cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use std::ffi::{CStr, CString};
use std::io;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use libc::{c_char, c_int, c_long, c_uint, c_ulong, c_void};

/// `SECCOMP_SET_MODE_FILTER` for `seccomp(2)`.
const SECCOMP_SET_MODE_FILTER: c_uint = 1;
/// `SECCOMP_GET_ACTION_AVAIL` for `seccomp(2)`.
const SECCOMP_GET_ACTION_AVAIL: c_uint = 2;
/// Filter flag: log every action except `RET_ALLOW`.
pub(crate) const SECCOMP_FILTER_FLAG_LOG: c_uint = 2;
/// Filter flag: return a user-notification listener fd.
pub(crate) const SECCOMP_FILTER_FLAG_NEW_LISTENER: c_uint = 8;
/// The filter return value that defers the decision to the listener.
pub(crate) const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// `SECCOMP_IOCTL_NOTIF_RECV`: `_IOWR('!', 0, struct seccomp_notif)` (80 bytes).
const SECCOMP_IOCTL_NOTIF_RECV: c_ulong = 0xc050_2100;
/// `SECCOMP_IOCTL_NOTIF_SEND`: `_IOWR('!', 1, struct seccomp_notif_resp)` (24 bytes).
const SECCOMP_IOCTL_NOTIF_SEND: c_ulong = 0xc018_2101;
/// Response flag: let the notified system call run.
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
/// `clone3` flag: return a pidfd for the child.
const CLONE_PIDFD: u64 = 0x1000;
/// `waitid` id type: the id is a pidfd.
const P_PIDFD: libc::idtype_t = 3;
/// `landlock_create_ruleset` flag: return the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: c_uint = 1;
/// Syscall numbers shared by every architecture drover builds for (the unified table above 424).
const SYS_LANDLOCK_CREATE_RULESET: c_long = 444;
const SYS_LANDLOCK_RESTRICT_SELF: c_long = 446;
const SYS_CLOSE_RANGE: c_long = 436;
const SYS_CLONE3: c_long = 435;
const SYS_PIDFD_SEND_SIGNAL: c_long = 424;
const SYS_LANDLOCK_ADD_RULE: c_long = 445;
const SYS_MOUNT_SETATTR: c_long = 442;
/// `landlock_add_rule` rule type.
const LANDLOCK_RULE_PATH_BENEATH: c_int = 1;
/// `mount_setattr` flag: the whole subtree.
const AT_RECURSIVE: c_uint = 0x8000;
/// Securebits (`linux/securebits.h`).
const SECBIT_NOROOT: c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP_LOCKED: c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: c_ulong = 1 << 7;

/// The securebits Phase A locks (minijail's choice): root gets no capabilities from exec, the
/// kernel's uid-change fixups stay on, keep-caps stays off, ambient capabilities cannot be
/// raised, and none of that can be changed again.
pub(crate) const LOCKED_SECUREBITS: c_ulong = SECBIT_NOROOT
    | SECBIT_NOROOT_LOCKED
    | SECBIT_NO_SETUID_FIXUP_LOCKED
    | SECBIT_KEEP_CAPS_LOCKED
    | SECBIT_NO_CAP_AMBIENT_RAISE
    | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

/// `-1` and errno to `io::Error`, anything else to its value.
fn check(ret: c_long) -> io::Result<c_long> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn check_int(ret: c_int) -> io::Result<c_int> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

// ---------------------------------------------------------------------------------------------
// Phase A and feature probes (parent side, ordinary code).

/// `prctl(PR_SET_SECUREBITS, bits)`.
pub(crate) fn set_securebits(bits: c_ulong) -> io::Result<()> {
    // SAFETY: PR_SET_SECUREBITS takes one integer argument and touches no memory of ours.
    check_int(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_CAPBSET_DROP, cap)` for every capability up to `last_cap`.
pub(crate) fn drop_bounding_set(last_cap: u32) -> io::Result<()> {
    for cap in 0..=last_cap {
        // SAFETY: PR_CAPBSET_DROP takes one integer argument and touches no memory of ours.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c_ulong::from(cap), 0, 0, 0) };
        check_int(ret)?;
    }
    Ok(())
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory of ours.
    check_int(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as c_ulong, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_GET_CHILD_SUBREAPER)`.
pub(crate) fn is_child_subreaper() -> bool {
    let mut value: c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer, which points to a
    // live local of that type.
    let ret =
        unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut value as *mut c_int, 0, 0, 0) };
    ret == 0 && value != 0
}

/// `prctl(PR_GET_DUMPABLE)`.
pub(crate) fn is_dumpable() -> io::Result<bool> {
    // SAFETY: PR_GET_DUMPABLE takes no arguments and touches no memory of ours.
    check_int(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }).map(|v| v != 0)
}

/// `setuid(0)` through the raw system call, so glibc's cross-thread broadcast cannot mask the
/// result. Phase A expects this to fail.
pub(crate) fn try_setuid_root() -> io::Result<()> {
    // SAFETY: setuid takes one integer argument and touches no memory of ours.
    check(unsafe { libc::syscall(libc::SYS_setuid, 0 as c_long) }).map(drop)
}

/// The Landlock ABI version, or the errno saying why there is none.
pub(crate) fn landlock_abi() -> Result<u32, io::Error> {
    // SAFETY: with LANDLOCK_CREATE_RULESET_VERSION the kernel requires a null attribute pointer
    // and size 0 and reads nothing.
    let ret = unsafe {
        libc::syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            std::ptr::null::<c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    check(ret).map(|v| u32::try_from(v).unwrap_or(0))
}

/// Whether the kernel knows the seccomp return action `action`.
pub(crate) fn seccomp_action_available(action: u32) -> bool {
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
pub(crate) fn close_range_available() -> bool {
    // SAFETY: close_range on a range where no fd can be open has no effect.
    let ret = unsafe { libc::syscall(SYS_CLOSE_RANGE, c_uint::MAX - 1, c_uint::MAX, 0 as c_uint) };
    ret == 0
}

/// `pidfd_send_signal(pidfd, signal, NULL, 0)`.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: c_int) -> io::Result<()> {
    // SAFETY: a null siginfo means "as kill(2)"; the fd is borrowed and stays open.
    let ret = unsafe {
        libc::syscall(
            SYS_PIDFD_SEND_SIGNAL,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0 as c_uint,
        )
    };
    check(ret).map(drop)
}

/// How a waited-for child ended, from `siginfo_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChildStatus {
    /// `CLD_EXITED`, `CLD_KILLED` or `CLD_DUMPED`.
    pub code: c_int,
    /// The exit status or the signal number.
    pub status: c_int,
}

/// `waitid(P_PIDFD, pidfd, WEXITED | flags)`; `None` when `WNOHANG` found nothing yet.
pub(crate) fn waitid_pidfd(pidfd: BorrowedFd<'_>, flags: c_int) -> io::Result<Option<ChildStatus>> {
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

/// A pending seccomp user notification: which thread asked for which system call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Notification {
    /// Cookie for the response.
    pub id: u64,
    /// The thread, in the listener's pid namespace.
    pub pid: u32,
    /// The system call number.
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the call.
    pub arch: u32,
}

#[repr(C)]
#[derive(Default)]
struct SeccompData {
    nr: c_int,
    arch: u32,
    instruction_pointer: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct SeccompNotif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
struct SeccompNotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// Receives one notification from a seccomp listener.
pub(crate) fn notif_recv(listener: BorrowedFd<'_>) -> io::Result<Notification> {
    // The kernel requires the buffer to be zeroed.
    let mut notif = SeccompNotif::default();
    // SAFETY: the ioctl writes one `struct seccomp_notif` (80 bytes, the size encoded in the
    // request number) through the pointer, which points to a live local of exactly that layout.
    let ret = unsafe {
        libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_RECV, &mut notif as *mut SeccompNotif)
    };
    check_int(ret)?;
    Ok(Notification { id: notif.id, pid: notif.pid, nr: notif.data.nr, arch: notif.data.arch })
}

/// Lets the notified system call `id` run (log mode).
pub(crate) fn notif_continue(listener: BorrowedFd<'_>, id: u64) -> io::Result<()> {
    let resp = SeccompNotifResp { id, val: 0, error: 0, flags: SECCOMP_USER_NOTIF_FLAG_CONTINUE };
    // SAFETY: the ioctl reads one `struct seccomp_notif_resp` (24 bytes, the size encoded in
    // the request number) from a live local of exactly that layout.
    let ret = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_SEND,
            &resp as *const SeccompNotifResp,
        )
    };
    check_int(ret).map(drop)
}

/// One `poll(2)` over `fds` (events `POLLIN`); returns each fd's `revents` (0: not ready).
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: c_int) -> io::Result<[i16; 4]> {
    let mut pfds = [libc::pollfd { fd: -1, events: 0, revents: 0 }; 4];
    for (slot, fd) in pfds.iter_mut().zip(fds) {
        *slot = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    }
    let count = fds.len().min(4) as libc::nfds_t;
    // SAFETY: the pointer and count describe `count` initialised pollfd entries of a live local
    // array; the fds are borrowed and stay open for the call.
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

/// Blocks until the peer of `sock` has closed its end (hang-up), without waking for data: the
/// child's records queue up and are read afterwards, so the parent wakes once per spawn.
pub(crate) fn wait_hangup(sock: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
        // SAFETY: one initialised pollfd on the stack; the fd is borrowed and stays open.
        let ret = unsafe { libc::poll(&mut pfd, 1, -1) };
        match check_int(ret) {
            Ok(_) if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 => {
                return Ok(());
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives one record from the child's report socket: its bytes and an fd passed with it.
pub(crate) fn recv_report(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut cmsg = [0u64; 4];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cmsg) as _;
    let n = loop {
        // SAFETY: msg points at a live iovec over `buf` and a live, aligned control buffer of
        // the stated length; MSG_CMSG_CLOEXEC makes any received fd close-on-exec.
        let ret = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match check(ret as c_long) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let mut received = None;
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control buffer the kernel just filled, within
    // msg_controllen; each SCM_RIGHTS header carries at least one int, read unaligned.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<c_int>());
                if fd >= 0 && received.is_none() {
                    received = Some(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    Ok((n, received))
}

/// Process ids of this process's direct children, from `/proc/self/task/*/children`.
pub(crate) fn list_children() -> Vec<libc::pid_t> {
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
pub(crate) fn kill(pid: libc::pid_t, signal: c_int) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    match check_int(unsafe { libc::kill(pid, signal) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// `waitpid(pid, WNOHANG or 0)`: `Some(pid)` when a child was reaped, `None` when none is
/// ready or none is left.
pub(crate) fn reap(pid: libc::pid_t, block: bool) -> Option<libc::pid_t> {
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

/// Probe-side escape attempts, each a single raw system call reporting only its errno.
pub(crate) mod attempt {
    use super::*;

    /// `ptrace(PTRACE_ATTACH, pid)`; detaches again if it worked.
    pub(crate) fn ptrace_attach(pid: libc::pid_t) -> io::Result<()> {
        // SAFETY: PTRACE_ATTACH takes a pid and null addr/data; it touches no memory of ours.
        let ret = unsafe {
            libc::ptrace(
                libc::PTRACE_ATTACH,
                pid,
                std::ptr::null_mut::<c_void>(),
                std::ptr::null_mut::<c_void>(),
            )
        };
        check(ret)?;
        // SAFETY: as above, for PTRACE_DETACH.
        unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                pid,
                std::ptr::null_mut::<c_void>(),
                std::ptr::null_mut::<c_void>(),
            )
        };
        Ok(())
    }

    /// A raw system call with all-zero arguments.
    pub(crate) fn syscall_zero_args(nr: c_long) -> io::Result<c_long> {
        // SAFETY: the caller names a system call for which all-zero arguments are harmless (the
        // probe uses it only on calls it expects the sandbox to refuse); no memory is passed.
        check(unsafe { libc::syscall(nr, 0usize, 0usize, 0usize, 0usize, 0usize, 0usize) })
    }

    /// `unshare(flags)`.
    pub(crate) fn unshare(flags: c_int) -> io::Result<()> {
        // SAFETY: unshare takes one integer and touches no memory of ours.
        check_int(unsafe { libc::unshare(flags) }).map(drop)
    }

    /// `clone(flags | SIGCHLD)` of a child that exits at once; reaped before returning.
    pub(crate) fn clone_exit(flags: u64) -> io::Result<()> {
        let mut unused_pidfd: c_int = -1;
        let pid = fork_like(flags, &mut unused_pidfd)?;
        if pid == 0 {
            // SAFETY: the child only exits.
            unsafe { libc::_exit(0) }
        }
        reap(pid as libc::pid_t, true);
        Ok(())
    }

    /// `prctl(PR_SET_PDEATHSIG, 0)`.
    pub(crate) fn clear_parent_death_signal() -> io::Result<()> {
        // SAFETY: PR_SET_PDEATHSIG takes one integer and touches no memory of ours.
        check_int(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0 as c_ulong, 0, 0, 0) }).map(drop)
    }

    /// Turns `ECHO` off on the terminal at `fd` (`tcgetattr`, then `TCSETS` through
    /// `tcsetattr`).
    pub(crate) fn echo_off(fd: RawFd) -> io::Result<()> {
        // SAFETY: termios is plain data for which all-zero is a valid value.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes one termios through the pointer, a live local; `fd` is
        // only used, not owned.
        check_int(unsafe { libc::tcgetattr(fd, &mut termios) })?;
        termios.c_lflag &= !libc::ECHO;
        // SAFETY: tcsetattr reads one termios from a live local.
        check_int(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) }).map(drop)
    }

    /// `ioctl(fd, TIOCSWINSZ, rows x cols)`.
    pub(crate) fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize from a live local.
        check_int(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size as *const libc::winsize) })
            .map(drop)
    }

    /// `fork()`; in the child, runs `child(arg)` (which must not return) instead of returning.
    pub(crate) fn fork_then(child: fn(RawFd) -> !, arg: RawFd) -> io::Result<libc::pid_t> {
        // SAFETY: the probe is single-threaded when it forks, so the child may run ordinary
        // code; the child never returns into the caller.
        let pid = check_int(unsafe { libc::fork() })?;
        if pid == 0 {
            child(arg);
        }
        Ok(pid)
    }

    /// Writes `data` to `fd` (best effort) and closes it.
    pub(crate) fn write_and_close(fd: RawFd, data: &[u8]) {
        // SAFETY: write reads `data.len()` bytes from a live slice; the caller owns `fd` and
        // gives it up here.
        unsafe {
            libc::write(fd, data.as_ptr().cast(), data.len());
            libc::close(fd);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The child side of a spawn.

/// What the child reports on its report socket (one SEQPACKET record each).
pub(crate) const REPORT_LISTENER: u32 = 1;
/// A failed step: `[REPORT_FAILED, step, errno]`.
pub(crate) const REPORT_FAILED: u32 = 2;

/// The steps a child takes, in order; a failure reports the step's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ChildStep {
    /// Joining the driver's cgroups.
    Cgroup = 12,
    /// Writing `/proc/self/{setgroups,uid_map,gid_map}` in the new user namespace.
    IdMaps = 1,
    /// Emptying the bounding, ambient, inheritable, permitted and effective sets.
    Capabilities = 2,
    /// `setsid()`.
    Setsid = 3,
    /// Resetting signal dispositions and the mask.
    Signals = 4,
    /// `PR_SET_PDEATHSIG(SIGKILL)` and the check that the parent still lives.
    ParentDeath = 5,
    /// Placing the transport at fd 3 and closing every other fd.
    Fds = 6,
    /// `setrlimit` for each limit.
    Rlimits = 7,
    /// `chdir` to the work directory.
    Chdir = 8,
    /// `PR_SET_NO_NEW_PRIVS` and `landlock_restrict_self`.
    Landlock = 9,
    /// Installing the seccomp filters and handing the listener to the parent.
    Seccomp = 10,
    /// `execve`.
    Exec = 11,
    /// Building the private mount tree (`crate::tree`).
    MountTree = 13,
    /// Forking the driver from the sandbox's init.
    Init = 14,
}

impl ChildStep {
    /// The step with number `n`.
    pub(crate) fn from_u32(n: u32) -> Option<Self> {
        use ChildStep::*;
        [
            Cgroup,
            IdMaps,
            Capabilities,
            Setsid,
            Signals,
            ParentDeath,
            Fds,
            Rlimits,
            Chdir,
            Landlock,
            Seccomp,
            Exec,
            MountTree,
            Init,
        ]
        .into_iter()
        .find(|s| *s as u32 == n)
    }
}

/// A `struct sock_fprog` pointing into a seccompiler program the plan's owner keeps alive.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SockFprog {
    len: u16,
    filter: *const seccompiler::sock_filter,
}

impl SockFprog {
    /// Points at `program`, which must outlive every use of the result (the spawner keeps both
    /// in one struct).
    pub(crate) fn new(program: &[seccompiler::sock_filter]) -> Option<Self> {
        Some(Self { len: u16::try_from(program.len()).ok()?, filter: program.as_ptr() })
    }
}

/// One seccomp filter to install: its program and flags.
#[derive(Debug)]
pub(crate) struct FilterPlan {
    /// The program.
    pub prog: SockFprog,
    /// `SECCOMP_FILTER_FLAG_*`.
    pub flags: c_uint,
}

/// One step of building the private mount tree, its paths prepared by `crate::tree`.
#[derive(Debug)]
pub(crate) enum MountStep {
    /// `mkdir(path, 0755)`; an existing directory is fine.
    Mkdir { path: CString },
    /// An empty file to bind a file onto.
    Touch { path: CString },
    /// `symlink(target, path)`.
    Symlink { target: CString, path: CString },
    /// `mount(2)`; `optional`: a missing target (`ENOENT`) is skipped.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
        optional: bool,
    },
    /// `mount_setattr(path, attr)` (`MOUNT_ATTR_*` set), recursively or not; kernels before
    /// 5.12 get a bind remount of the top mount instead.
    Harden { path: CString, attr: u64, recursive: bool },
    /// `pivot_root(new_root, put_old)`, then `chdir("/")`.
    PivotRoot { new_root: CString, put_old: CString },
    /// `chdir(new_root)`, `pivot_root(".", ".")`, the old root detached, `chdir("/")`.
    EnterRoot { new_root: CString },
}

/// A Landlock rule the child adds for a filesystem of its private tree.
#[derive(Debug)]
pub(crate) struct LandlockAdd {
    /// The directory, as the child sees it.
    pub path: CString,
    /// `LANDLOCK_ACCESS_FS_*` bits.
    pub access: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The uid and gid maps a child writes for its new user namespace.
#[derive(Debug)]
pub(crate) struct IdMaps {
    /// `"<uid> <uid> 1\n"`.
    pub uid_map: Vec<u8>,
    /// `"<gid> <gid> 1\n"`.
    pub gid_map: Vec<u8>,
}

/// Everything the child needs, prepared and owned by the parent. Raw pointers in here point
/// into the owner's buffers ([`crate::spawn::Prepared`]), which outlive the spawn.
#[derive(Debug)]
pub(crate) struct ChildPlan<'a> {
    /// Absolute path of the program.
    pub program: &'a CStr,
    /// Null-terminated argv.
    pub argv: &'a [*const c_char],
    /// Null-terminated envp.
    pub envp: &'a [*const c_char],
    /// The work directory.
    pub work_dir: &'a CStr,
    /// Maps to write when the child has its own user namespace.
    pub id_maps: Option<&'a IdMaps>,
    /// The `cgroup.procs` of the driver's cgroups (one per hierarchy), opened by the parent.
    pub cgroup_procs: [Option<RawFd>; crate::cgroup::MAX_HIERARCHIES],
    /// Highest capability number (`/proc/sys/kernel/cap_last_cap`).
    pub last_cap: u32,
    /// `clone3` namespace flags (0: none).
    pub namespaces: u64,
    /// The parent's pid, for the parent-death check without a pid namespace.
    pub parent_pid: libc::pid_t,
    /// Child end of the report socket.
    pub report_fd: RawFd,
    /// The transport, placed at fd 3.
    pub transport_fd: Option<RawFd>,
    /// Sources for fds 0, 1 and 2; `None` keeps what the parent has there.
    pub stdio: [Option<RawFd>; 3],
    /// `(resource, limit)` pairs.
    pub rlimits: &'a [(c_int, libc::rlimit)],
    /// Landlock ruleset to enforce.
    pub landlock_fd: Option<RawFd>,
    /// Filters, installed in order; the last one may hand back a listener.
    pub filters: &'a [FilterPlan],
    /// The private mount tree (empty: none).
    pub mounts: &'a [MountStep],
    /// Landlock rules for the tree's own filesystems.
    pub landlock_adds: &'a [LandlockAdd],
    /// With a pid namespace: run the sandbox's init, which reports the driver's wait status
    /// on this pipe.
    pub init_status_fd: Option<RawFd>,
    /// Address ranges init zeroes: the argument and environment strings of this process
    /// (`/proc/self/stat` `arg_start..arg_end`, `env_start..env_end`).
    pub wipe: [(usize, usize); 2],
}

/// Clones a child that sets itself up by `plan` and executes the program. Returns its pid and
/// pidfd. The child reports a failed step, or the seccomp listener, on `plan.report_fd`.
pub(crate) fn spawn(plan: &ChildPlan<'_>) -> io::Result<(libc::pid_t, OwnedFd)> {
    let mut pidfd: c_int = -1;
    let pid = fork_like(CLONE_PIDFD | plan.namespaces, &mut pidfd)?;
    if pid == 0 {
        child_main(plan);
    }
    // SAFETY: CLONE_PIDFD made the kernel store a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((pid as libc::pid_t, pidfd))
}

/// `clone3(flags)` with a zero stack, which behaves like `fork` (returns 0 in the child). Where
/// `clone3` is refused with `ENOSYS` (Docker's and containerd's default seccomp profiles do
/// that, so that libc falls back), the legacy `clone` with the same flags; it has taken
/// `CLONE_PIDFD` (pidfd stored at the parent-tid pointer) since Linux 5.2. Namespace flags and
/// `CLONE_PIDFD` all fit the legacy call's 32-bit flag word.
///
/// The caller must make the child run only async-signal-safe code and never return into Rust
/// code that allocates or unwinds; `spawn` and `probe_clone` do.
fn fork_like(flags: u64, pidfd: &mut c_int) -> io::Result<c_long> {
    let mut args = CloneArgs {
        flags,
        pidfd: pidfd as *mut c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a zero stack behaves like fork: the child gets a copy of this address
    // space, so every pointer the caller holds (into buffers it keeps alive across this call)
    // stays valid in it; what the child runs is the caller's obligation (see above). `pidfd` is
    // a live exclusive borrow the kernel writes in the parent when CLONE_PIDFD is set.
    let ret =
        unsafe { libc::syscall(SYS_CLONE3, &mut args as *mut CloneArgs, size_of::<CloneArgs>()) };
    match check(ret) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        other => return other,
    }
    let legacy_flags = c_ulong::try_from(flags)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?
        | libc::SIGCHLD as c_ulong;
    let no_stack: c_ulong = 0;
    let no_tid: c_ulong = 0;
    let no_tls: c_ulong = 0;
    // SAFETY: as above: the legacy clone with a zero stack behaves like fork. With CLONE_PIDFD
    // the kernel writes the pidfd through the third argument (parent_tid on every
    // architecture), which is the same live exclusive borrow; child_tid and tls are unused
    // (no CLONE_CHILD_SETTID/CLEARTID/SETTLS) and passed as 0 whatever their order.
    let ret = unsafe {
        libc::syscall(libc::SYS_clone, legacy_flags, no_stack, pidfd as *mut c_int, no_tid, no_tls)
    };
    check(ret)
}

/// Clones a child with `namespaces` that exits at once, and reaps it: whether this process
/// may create those namespaces.
pub(crate) fn probe_clone(namespaces: u64) -> io::Result<()> {
    let mut unused_pidfd: c_int = -1;
    let pid = fork_like(namespaces, &mut unused_pidfd)?;
    if pid == 0 {
        // SAFETY: see above.
        unsafe { libc::_exit(0) }
    }
    reap(pid as libc::pid_t, true);
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Reports `[REPORT_FAILED, step, errno]` and exits 127.
fn fail(report: RawFd, step: ChildStep) -> ! {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life.
    let errno = unsafe { *libc::__errno_location() };
    let record: [u32; 3] = [REPORT_FAILED, step as u32, errno as u32];
    // SAFETY: write reads 12 bytes from a live local; _exit ends the process and never returns.
    unsafe {
        libc::write(report, record.as_ptr().cast(), size_of_val(&record));
        libc::_exit(127)
    }
}

/// Writes `data` to the file at `path` (absolute, NUL-terminated).
///
/// # Safety
/// Only from the child: a raw open/write/close on caller-provided bytes.
unsafe fn write_file(path: &CStr, data: &[u8]) -> bool {
    // SAFETY: path is NUL-terminated; data is a live slice; the fd is ours alone.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let ok = libc::write(fd, data.as_ptr().cast(), data.len()) == data.len() as isize;
        libc::close(fd);
        ok
    }
}

fn c_opt(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// Builds the private mount tree; `Err(())` leaves errno set.
///
/// # Safety
/// Only from the child, in its own mount namespace with `CAP_SYS_ADMIN` there.
unsafe fn build_tree(steps: &[MountStep]) -> Result<(), ()> {
    let ok = |ret: c_int| if ret == 0 { Ok(()) } else { Err(()) };
    let errno = || io::Error::last_os_error().raw_os_error();
    // SAFETY: every pointer is a NUL-terminated string the plan owns, or null where the call
    // accepts null; the structs passed are live locals of the kernel's layout.
    unsafe {
        for step in steps {
            match step {
                MountStep::Mkdir { path } => {
                    if libc::mkdir(path.as_ptr(), 0o755) != 0 && errno() != Some(libc::EEXIST) {
                        return Err(());
                    }
                }
                MountStep::Touch { path } => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                        0o644 as c_uint,
                    );
                    if fd < 0 {
                        return Err(());
                    }
                    libc::close(fd);
                }
                MountStep::Symlink { target, path } => {
                    ok(libc::symlink(target.as_ptr(), path.as_ptr()))?;
                }
                MountStep::Mount { source, target, fstype, flags, data, optional } => {
                    let ret = libc::mount(
                        c_opt(source),
                        target.as_ptr(),
                        c_opt(fstype),
                        *flags,
                        c_opt(data).cast(),
                    );
                    if ret != 0 && !(*optional && errno() == Some(libc::ENOENT)) {
                        return Err(());
                    }
                }
                MountStep::Harden { path, attr, recursive } => {
                    let attr =
                        MountAttr { attr_set: *attr, attr_clr: 0, propagation: 0, userns_fd: 0 };
                    let ret = libc::syscall(
                        SYS_MOUNT_SETATTR,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        if *recursive { AT_RECURSIVE } else { 0 },
                        &attr as *const MountAttr,
                        size_of::<MountAttr>(),
                    );
                    if ret != 0 {
                        if errno() != Some(libc::ENOSYS) {
                            return Err(());
                        }
                        let mut flags = libc::MS_BIND | libc::MS_REMOUNT;
                        for (bit, flag) in [
                            (1, libc::MS_RDONLY),
                            (2, libc::MS_NOSUID),
                            (4, libc::MS_NODEV),
                            (8, libc::MS_NOEXEC),
                        ] {
                            if attr.attr_set & bit != 0 {
                                flags |= flag;
                            }
                        }
                        ok(libc::mount(
                            std::ptr::null(),
                            path.as_ptr(),
                            std::ptr::null(),
                            flags,
                            std::ptr::null(),
                        ))?;
                    }
                }
                MountStep::PivotRoot { new_root, put_old } => {
                    ok(libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr())
                        as c_int)?;
                    ok(libc::chdir(c"/".as_ptr()))?;
                }
                MountStep::EnterRoot { new_root } => {
                    ok(libc::chdir(new_root.as_ptr()))?;
                    ok(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as c_int)?;
                    ok(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                    ok(libc::chdir(c"/".as_ptr()))?;
                }
            }
        }
    }
    Ok(())
}

/// Adds `rules` to the Landlock ruleset `ruleset`; `Err(())` leaves errno set.
///
/// # Safety
/// Only from the child, before `landlock_restrict_self`.
unsafe fn add_landlock_rules(ruleset: c_int, rules: &[LandlockAdd]) -> Result<(), ()> {
    // SAFETY: each path is NUL-terminated and owned by the plan; the attribute is a live local
    // of the kernel's packed layout; the fd opened here is closed here.
    unsafe {
        for rule in rules {
            let fd = libc::open(rule.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(());
            }
            let attr = PathBeneathAttr { allowed_access: rule.access, parent_fd: fd };
            let ret = libc::syscall(
                SYS_LANDLOCK_ADD_RULE,
                ruleset,
                LANDLOCK_RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0 as c_uint,
            );
            libc::close(fd);
            if ret != 0 {
                return Err(());
            }
        }
    }
    Ok(())
}

/// The sandbox's init (pid 1 of the driver's pid namespace): every signal blocked and taken
/// with `sigwaitinfo`, so that none is lost to the kernel's protection of namespace inits;
/// SIGCHLD reaps every child, any other signal is forwarded to the driver; when the driver
/// dies its raw wait status goes to `status_fd` and init exits, which kills and reaps what is
/// left in the namespace. It holds no descriptor but `status_fd`, runs no foreign code, and
/// dies with the supervisor (PDEATHSIG, armed before the fork).
///
/// # Safety
/// Only from the child, with `all` the full signal set, already blocked.
unsafe fn run_init(driver: libc::pid_t, status_fd: RawFd, all: &libc::sigset_t) -> ! {
    // SAFETY: raw calls on integers and live locals; nothing allocates; the loop ends in _exit.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0 as c_ulong, 0, 0, 0);
        if status_fd > 0 {
            libc::syscall(SYS_CLOSE_RANGE, 0 as c_uint, (status_fd - 1) as c_uint, 0 as c_uint);
        }
        libc::syscall(SYS_CLOSE_RANGE, (status_fd + 1) as c_uint, c_uint::MAX, 0 as c_uint);
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let signal = libc::sigwaitinfo(all, &mut info);
            if signal < 0 {
                continue;
            }
            if signal != libc::SIGCHLD {
                libc::kill(driver, signal);
                continue;
            }
            loop {
                let mut status: c_int = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == driver {
                    libc::write(status_fd, (&status as *const c_int).cast(), size_of::<c_int>());
                    libc::_exit(0);
                }
            }
        }
    }
}

/// The child: one pass through [`ChildStep`], then `execve`.
fn child_main(plan: &ChildPlan<'_>) -> ! {
    let mut report = plan.report_fd;
    // SAFETY: (for the whole block) this runs in the freshly cloned child, which has exactly
    // one thread. Every call is a thin libc wrapper or raw system call on memory the parent
    // prepared (copied into this address space by clone3) or on locals; nothing allocates,
    // nothing unwinds, and every path ends in execve or `fail`/_exit.
    unsafe {
        // 0. The cgroups, first, so that everything after is accounted and limited there.
        for procs in plan.cgroup_procs.iter().flatten() {
            if libc::write(*procs, b"0".as_ptr().cast(), 1) != 1 {
                fail(report, ChildStep::Cgroup);
            }
        }
        // 1. Identity inside the new user namespace.
        if let Some(maps) = plan.id_maps {
            if libc::prctl(libc::PR_SET_DUMPABLE, 1 as c_ulong, 0, 0, 0) != 0
                || !write_file(c"/proc/self/setgroups", b"deny")
                || !write_file(c"/proc/self/uid_map", &maps.uid_map)
                || !write_file(c"/proc/self/gid_map", &maps.gid_map)
            {
                fail(report, ChildStep::IdMaps);
            }
            // The private mount tree, while this process holds CAP_SYS_ADMIN in its namespace.
            if build_tree(plan.mounts).is_err() {
                fail(report, ChildStep::MountTree);
            }
            for cap in 0..=plan.last_cap {
                if libc::prctl(libc::PR_CAPBSET_DROP, c_ulong::from(cap), 0, 0, 0) != 0 {
                    fail(report, ChildStep::Capabilities);
                }
            }
        }
        // 2. No capability in any set. Without a user namespace they are already empty and
        // these calls change nothing.
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong, 0, 0, 0)
            != 0
        {
            fail(report, ChildStep::Capabilities);
        }
        let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let data = [CapData::default(), CapData::default()];
        if libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) != 0 {
            fail(report, ChildStep::Capabilities);
        }
        // 3. A session of its own: no controlling terminal, so no TIOCSTI.
        if libc::setsid() < 0 {
            fail(report, ChildStep::Setsid);
        }
        // 4. Default dispositions, empty mask.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                // glibc refuses its two internal signals; those stay as they are.
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        let empty: u64 = 0;
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        ) != 0
        {
            fail(report, ChildStep::Signals);
        }
        // 5. Die with the parent. The report socket's peer is the parent's: if it hung up, the
        // parent died before PDEATHSIG was armed (getppid cannot tell inside a pid namespace).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0) != 0 {
            fail(report, ChildStep::ParentDeath);
        }
        let mut pfd = libc::pollfd { fd: report, events: libc::POLLRDHUP, revents: 0 };
        let hung_up =
            libc::poll(&mut pfd, 1, 0) > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0;
        if hung_up
            || (plan.namespaces & (libc::CLONE_NEWPID as u64) == 0
                && libc::getppid() != plan.parent_pid)
        {
            libc::_exit(127);
        }
        // 5b. The sandbox's own init: this process stays pid 1 and forks the driver.
        if let Some(status_fd) = plan.init_status_fd {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            // A raw fork: glibc's fork would run atfork handlers of the copied parent.
            let driver = libc::syscall(libc::SYS_clone, libc::SIGCHLD as c_ulong, 0, 0, 0, 0);
            if driver < 0 {
                fail(report, ChildStep::Init);
            }
            if driver > 0 {
                // The supervisor's command line and environment, copied into init with the
                // rest of its memory, are wiped: /proc/1/cmdline must not show them.
                for (start, end) in plan.wipe {
                    if end > start {
                        libc::memset(start as *mut c_void, 0, end - start);
                    }
                }
                run_init(driver as libc::pid_t, status_fd, &all);
            }
            // The driver: it dies with its init (whose death takes the namespace anyway).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0) != 0 {
                fail(report, ChildStep::Init);
            }
            if libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &empty as *const u64,
                std::ptr::null_mut::<u64>(),
                8usize,
            ) != 0
            {
                fail(report, ChildStep::Signals);
            }
        }
        // 6. Descriptors: lift every fd we keep above 10, put them in place, close the rest.
        let lift = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
        let lifted_report = lift(report);
        let lifted_transport = plan.transport_fd.map(lift);
        let lifted_landlock = plan.landlock_fd.map(lift);
        let mut lifted_stdio = [None; 3];
        for (slot, source) in lifted_stdio.iter_mut().zip(plan.stdio) {
            *slot = source.map(lift);
        }
        if lifted_report < 0
            || lifted_transport.is_some_and(|fd| fd < 0)
            || lifted_landlock.is_some_and(|fd| fd < 0)
            || lifted_stdio.iter().any(|fd| fd.is_some_and(|fd| fd < 0))
        {
            fail(report, ChildStep::Fds);
        }
        report = lifted_report;
        for (target, source) in (0..3).zip(lifted_stdio) {
            if let Some(source) = source
                && libc::dup2(source, target) < 0
            {
                fail(report, ChildStep::Fds);
            }
        }
        let mut next: c_int = 3;
        if let Some(transport) = lifted_transport {
            if libc::dup2(transport, 3) < 0 {
                fail(report, ChildStep::Fds);
            }
            next = 4;
        }
        if libc::dup3(report, next, libc::O_CLOEXEC) < 0 {
            fail(report, ChildStep::Fds);
        }
        report = next;
        next += 1;
        let mut landlock = -1;
        if let Some(fd) = lifted_landlock {
            if libc::dup3(fd, next, libc::O_CLOEXEC) < 0 {
                fail(report, ChildStep::Fds);
            }
            landlock = next;
            next += 1;
        }
        if libc::syscall(SYS_CLOSE_RANGE, next as c_uint, c_uint::MAX, 0 as c_uint) != 0 {
            // Kernels before 5.9: close one by one up to the descriptor limit.
            let mut limit: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            let top = c_int::try_from(limit.rlim_cur).unwrap_or(c_int::MAX).min(1 << 20);
            for fd in next..top {
                libc::close(fd);
            }
        }
        // The inherited stdio must survive exec.
        for fd in 0..3 {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
        }
        // 7. Resource limits.
        for (resource, limit) in plan.rlimits {
            if libc::setrlimit(*resource as _, limit) != 0 {
                fail(report, ChildStep::Rlimits);
            }
        }
        // 8. Work directory.
        if libc::chdir(plan.work_dir.as_ptr()) != 0 {
            fail(report, ChildStep::Chdir);
        }
        // 9. Landlock (needs no_new_privs, inherited from Phase A and set again here).
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as c_ulong, 0, 0, 0) != 0 {
            fail(report, ChildStep::Landlock);
        }
        if landlock >= 0 {
            if add_landlock_rules(landlock, plan.landlock_adds).is_err() {
                fail(report, ChildStep::Landlock);
            }
            if libc::syscall(SYS_LANDLOCK_RESTRICT_SELF, landlock, 0 as c_uint) != 0 {
                fail(report, ChildStep::Landlock);
            }
            libc::close(landlock);
        }
        // 10. Seccomp, last. The final filter may return a listener, which goes to the parent
        // over the report socket (sendmsg, close and execve are always allowed for this).
        let mut listener: c_long = -1;
        for filter in plan.filters {
            let ret = libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                filter.flags,
                &filter.prog as *const SockFprog,
            );
            if ret < 0 {
                fail(report, ChildStep::Seccomp);
            }
            if filter.flags & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
                listener = ret;
            }
        }
        if listener >= 0 {
            let tag: u32 = REPORT_LISTENER;
            let mut iov = libc::iovec { iov_base: &tag as *const u32 as *mut c_void, iov_len: 4 };
            let mut control = [0u64; 4];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<c_int>() as u32) as _;
            let header = libc::CMSG_FIRSTHDR(&msg);
            if header.is_null() {
                fail(report, ChildStep::Seccomp);
            }
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<c_int>(), listener as c_int);
            if libc::sendmsg(report, &msg, 0) < 0 {
                fail(report, ChildStep::Seccomp);
            }
            libc::close(listener as c_int);
        }
        // 11. Exec. On success the report socket closes (close-on-exec): the parent reads EOF.
        libc::execve(plan.program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(report, ChildStep::Exec)
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

// SAFETY: the raw pointers in `Prepared` (`argv_ptrs`, `envp_ptrs`, and each filter's
// `SockFprog`) point into heap buffers the same `Prepared` owns (its `CString`s and BPF
// programs), which do not move when the struct moves and are never shared or written after
// `prepare` returns; `spawn` consumes the struct. Sending it to another thread therefore
// cannot create shared access, so preparation may run on one thread and the spawn (from the
// long-lived thread that PDEATHSIG ties the child to) on another.
unsafe impl Send for crate::spawn::Prepared {}
