//! The child's steps between clone and `execve`, one function each, in the order of
//! [`ChildStep`]; the sandbox's init (`run_init`); and the failure report.

use std::convert::Infallible;
use std::ffi::CStr;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsRawFd, RawFd};

use libc::{c_int, c_long, c_uint, c_ulong, c_void};

use super::{ChildPlan, ChildStep, IdMaps, ParentFacts};
use crate::mount;
use crate::nr;
use crate::report::{REPORT_FAILED, REPORT_LISTENER};
use crate::seccomp::SECCOMP_FILTER_FLAG_NEW_LISTENER;

/// `SECCOMP_SET_MODE_FILTER` for `seccomp(2)`.
const SECCOMP_SET_MODE_FILTER: c_uint = 1;

/// The child: one pass through [`ChildStep`], then `execve`; a failed step is reported on
/// the report socket (`[REPORT_FAILED, step, errno]`) and the child exits 127.
///
/// # Safety
/// Only in the child of a fork-like clone ([`crate::clone::spawn`]), which has one thread and
/// must never return into the caller's code.
pub(crate) unsafe fn child_main(plan: &ChildPlan<'_>, parent: &ParentFacts) -> ! {
    let mut report = plan.report.as_raw_fd();
    // SAFETY: this is the freshly cloned child (this function's contract), the one context
    // every step function requires.
    let Err(step) = unsafe { run_steps(plan, parent, &mut report) };
    fail(report, step)
}

/// The steps in order, then `execve`; returns only the step that failed. `report` follows the
/// report socket as step 6 moves it.
///
/// Every step function below is `unsafe` for one reason: it may run only in the freshly
/// cloned child (one thread, no lock held, never returning into the caller's code), where it
/// changes this process's own state. Each makes thin libc wrappers and raw system calls on
/// memory the parent prepared (copied into this address space by the clone; the plan's types
/// own or borrow all of it, so it is live) or on locals; none allocates or unwinds.
unsafe fn run_steps(
    plan: &ChildPlan<'_>,
    parent: &ParentFacts,
    report: &mut RawFd,
) -> Result<Infallible, ChildStep> {
    // SAFETY: (for each call) this is the freshly cloned child, the caller's contract.
    unsafe {
        join_cgroups(plan)?;
        if let Some(maps) = plan.id_maps {
            enter_user_namespace(plan, maps)?;
        }
        clear_capabilities()?;
        new_session()?;
        reset_signals()?;
        die_with_parent(plan, parent, *report)?;
        if let Some(status) = plan.init_status {
            become_init(parent, status.as_raw_fd())?;
        }
        let landlock = arrange_fds(plan, report)?;
        set_rlimits(plan)?;
        enter_work_dir(plan)?;
        restrict_landlock(plan, landlock)?;
        install_seccomp(plan, *report)?;
        // 11. Exec. On success the report socket closes (close-on-exec): the parent reads EOF.
        // SAFETY: the program path is NUL-terminated and both arrays are null-terminated
        // arrays of NUL-terminated strings, all owned by the plan.
        libc::execve(plan.program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
    }
    Err(ChildStep::Exec)
}

/// Step 0: the cgroups, first, so that everything after is accounted and limited there.
unsafe fn join_cgroups(plan: &ChildPlan<'_>) -> Result<(), ChildStep> {
    for procs in plan.cgroup_procs {
        // SAFETY: write reads one byte of a static string; the descriptor is the plan's.
        if unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
            return Err(ChildStep::Cgroup);
        }
    }
    Ok(())
}

/// Step 1: identity inside the new user namespace, the private mount tree (while this process
/// holds `CAP_SYS_ADMIN` in its namespace), then the bounding set dropped.
unsafe fn enter_user_namespace(plan: &ChildPlan<'_>, maps: &IdMaps) -> Result<(), ChildStep> {
    // SAFETY: prctl takes integers only; write_file gets NUL-terminated paths and live slices.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 1 as c_ulong, 0, 0, 0) != 0
            || !write_file(c"/proc/self/setgroups", b"deny")
            || !write_file(c"/proc/self/uid_map", &maps.uid_map)
            || !write_file(c"/proc/self/gid_map", &maps.gid_map)
        {
            return Err(ChildStep::IdMaps);
        }
    }
    // SAFETY: this is the child, in the new mount and user namespaces `spawn` checked the plan
    // for, holding CAP_SYS_ADMIN there since the id maps were written.
    if unsafe { mount::build_tree(plan.mounts) }.is_err() {
        return Err(ChildStep::MountTree);
    }
    for cap in 0..=plan.last_cap {
        // SAFETY: PR_CAPBSET_DROP takes one integer.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c_ulong::from(cap), 0, 0, 0) } != 0 {
            return Err(ChildStep::Capabilities);
        }
    }
    Ok(())
}

/// Step 2: no capability in any set. Without a user namespace they are already empty and
/// these calls change nothing.
unsafe fn clear_capabilities() -> Result<(), ChildStep> {
    let clear_all = libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong;
    // SAFETY: PR_CAP_AMBIENT takes integers only.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, clear_all, 0, 0, 0) } != 0 {
        return Err(ChildStep::Capabilities);
    }
    let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData::default(), CapData::default()];
    // SAFETY: capset reads one header and, for version 3, two data structs, all live locals
    // of the kernel's layout.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
        return Err(ChildStep::Capabilities);
    }
    Ok(())
}

/// Step 3: a session of its own: no controlling terminal, so no TIOCSTI.
unsafe fn new_session() -> Result<(), ChildStep> {
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 { Err(ChildStep::Setsid) } else { Ok(()) }
}

/// Sets the signal mask to `mask` (64 bits) with the raw system call.
unsafe fn set_signal_mask(mask: u64) -> bool {
    // SAFETY: rt_sigprocmask reads 8 bytes from a live local and writes nothing (null old set).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        ) == 0
    }
}

/// Step 4: default dispositions, empty mask.
unsafe fn reset_signals() -> Result<(), ChildStep> {
    // SAFETY: sigaction is plain data for which all-zero is a valid value.
    let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
    default.sa_sigaction = libc::SIG_DFL;
    for signal in 1..libc::SIGRTMAX() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // glibc refuses its two internal signals; those stay as they are.
            // SAFETY: sigaction reads one struct from a live local and writes nothing.
            unsafe { libc::sigaction(signal, &default, std::ptr::null_mut()) };
        }
    }
    // SAFETY: this is the child (the caller's contract).
    if unsafe { set_signal_mask(0) } { Ok(()) } else { Err(ChildStep::Signals) }
}

/// Step 5: die with the parent. The report socket's peer is the parent's: if it hung up, the
/// parent died before PDEATHSIG was armed (getppid cannot tell inside a pid namespace).
unsafe fn die_with_parent(
    plan: &ChildPlan<'_>,
    parent: &ParentFacts,
    report: RawFd,
) -> Result<(), ChildStep> {
    // SAFETY: prctl takes integers only; poll reads and writes one live local pollfd; getppid
    // and _exit take no memory.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0) != 0 {
            return Err(ChildStep::ParentDeath);
        }
        let mut pfd = libc::pollfd { fd: report, events: libc::POLLRDHUP, revents: 0 };
        let hung_up =
            libc::poll(&mut pfd, 1, 0) > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0;
        if hung_up
            || (plan.namespaces & (libc::CLONE_NEWPID as u64) == 0 && libc::getppid() != parent.pid)
        {
            libc::_exit(127);
        }
    }
    Ok(())
}

/// Step 5b: the sandbox's own init. This process stays pid 1 and forks the driver; init
/// never returns from here, the driver does.
unsafe fn become_init(parent: &ParentFacts, status_fd: RawFd) -> Result<(), ChildStep> {
    // SAFETY: sigset_t is plain data for which all-zero is a valid value.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigfillset writes one live local; sigprocmask reads it and writes nothing.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    // A raw fork: glibc's fork would run atfork handlers of the copied parent.
    // SAFETY: clone with only SIGCHLD and a zero stack is fork; this process has one thread,
    // and each side goes on with this module's allocation-free code only.
    let driver = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as c_ulong, 0, 0, 0, 0) };
    if driver < 0 {
        return Err(ChildStep::Init);
    }
    if driver > 0 {
        // The supervisor's command line and environment, copied into init with the rest of
        // its memory, are wiped: /proc/1/cmdline must not show them.
        for (start, end) in parent.wipe {
            if end > start {
                // SAFETY: the range is what the kernel reports as this process's argument or
                // environment strings (mapped, writable); init runs only `run_init` after
                // this, which never reads them.
                unsafe { libc::memset(start as *mut c_void, 0, end - start) };
            }
        }
        // SAFETY: this is init, in the child, with `all` the full set, blocked just above.
        unsafe { run_init(driver as libc::pid_t, status_fd, &all) }
    }
    // The driver: it dies with its init (whose death takes the namespace anyway).
    // SAFETY: prctl takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0) } != 0 {
        return Err(ChildStep::Init);
    }
    // SAFETY: this is the child (the caller's contract).
    if unsafe { set_signal_mask(0) } { Ok(()) } else { Err(ChildStep::Signals) }
}

/// Step 6: descriptors. Every fd we keep is lifted above 10, then put in place (stdio, the
/// transport at 3, the report socket and the Landlock ruleset after it), and the rest closed.
/// `report` follows the report socket; returns the ruleset's new number (-1: none).
unsafe fn arrange_fds(plan: &ChildPlan<'_>, report: &mut RawFd) -> Result<c_int, ChildStep> {
    // SAFETY: fcntl, dup2, dup3 and close take integers only: at worst they fail (EBADF) or
    // close a descriptor of this child, which owns its copies of all of them.
    unsafe {
        let lift = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
        let lifted_report = lift(*report);
        let lifted_transport = plan.transport.map(|fd| lift(fd.as_raw_fd()));
        let lifted_landlock = plan.landlock.map(|fd| lift(fd.as_raw_fd()));
        let mut lifted_stdio = [None; 3];
        for (slot, source) in lifted_stdio.iter_mut().zip(plan.stdio) {
            *slot = source.map(|fd| lift(fd.as_raw_fd()));
        }
        if lifted_report < 0
            || lifted_transport.is_some_and(|fd| fd < 0)
            || lifted_landlock.is_some_and(|fd| fd < 0)
            || lifted_stdio.iter().any(|fd| fd.is_some_and(|fd| fd < 0))
        {
            return Err(ChildStep::Fds);
        }
        *report = lifted_report;
        for (target, source) in (0..3).zip(lifted_stdio) {
            if let Some(source) = source
                && libc::dup2(source, target) < 0
            {
                return Err(ChildStep::Fds);
            }
        }
        let mut next: c_int = 3;
        if let Some(transport) = lifted_transport {
            if libc::dup2(transport, 3) < 0 {
                return Err(ChildStep::Fds);
            }
            next = 4;
        }
        if libc::dup3(*report, next, libc::O_CLOEXEC) < 0 {
            return Err(ChildStep::Fds);
        }
        *report = next;
        next += 1;
        let mut landlock = -1;
        if let Some(fd) = lifted_landlock {
            if libc::dup3(fd, next, libc::O_CLOEXEC) < 0 {
                return Err(ChildStep::Fds);
            }
            landlock = next;
            next += 1;
        }
        if libc::syscall(nr::CLOSE_RANGE, next as c_uint, c_uint::MAX, 0 as c_uint) != 0 {
            // Kernels before 5.9: close one by one up to the descriptor limit.
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
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
        Ok(landlock)
    }
}

/// Step 7: resource limits.
unsafe fn set_rlimits(plan: &ChildPlan<'_>) -> Result<(), ChildStep> {
    for (resource, limit) in plan.rlimits {
        // SAFETY: setrlimit reads one rlimit from the plan.
        if unsafe { libc::setrlimit(*resource as _, limit) } != 0 {
            return Err(ChildStep::Rlimits);
        }
    }
    Ok(())
}

/// Step 8: the work directory.
unsafe fn enter_work_dir(plan: &ChildPlan<'_>) -> Result<(), ChildStep> {
    // SAFETY: the path is NUL-terminated and owned by the plan.
    if unsafe { libc::chdir(plan.work_dir.as_ptr()) } != 0 { Err(ChildStep::Chdir) } else { Ok(()) }
}

/// Step 9: Landlock (needs no_new_privs, inherited from Phase A and set again here): the
/// tree's own rules, then the ruleset enforced and closed.
unsafe fn restrict_landlock(plan: &ChildPlan<'_>, landlock: c_int) -> Result<(), ChildStep> {
    // SAFETY: prctl takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as c_ulong, 0, 0, 0) } != 0 {
        return Err(ChildStep::Landlock);
    }
    if landlock < 0 {
        return Ok(());
    }
    // SAFETY: this is the child, before landlock_restrict_self.
    if unsafe { mount::add_landlock_rules(landlock, plan.landlock_adds) }.is_err() {
        return Err(ChildStep::Landlock);
    }
    // SAFETY: landlock_restrict_self and close take integers only.
    unsafe {
        if libc::syscall(nr::LANDLOCK_RESTRICT_SELF, landlock, 0 as c_uint) != 0 {
            return Err(ChildStep::Landlock);
        }
        libc::close(landlock);
    }
    Ok(())
}

/// Step 10: seccomp, last. The final filter may return a listener, which goes to the parent
/// over the report socket (sendmsg, close and execve are always allowed for this).
unsafe fn install_seccomp(plan: &ChildPlan<'_>, report: RawFd) -> Result<(), ChildStep> {
    let mut listener: c_long = -1;
    for filter in plan.filters {
        let prog = filter.fprog();
        // SAFETY: the kernel reads one sock_fprog, a live local, and the program it points to,
        // owned by the plan's filter (its length checked to fit when the filter was made).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                filter.flags(),
                &prog as *const libc::sock_fprog,
            )
        };
        if ret < 0 {
            return Err(ChildStep::Seccomp);
        }
        if filter.flags() & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
            listener = ret;
        }
    }
    if listener < 0 {
        return Ok(());
    }
    let tag: u32 = REPORT_LISTENER;
    let mut iov = libc::iovec { iov_base: &tag as *const u32 as *mut c_void, iov_len: 4 };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data for which all-zero is a valid value; the header written
    // through CMSG_FIRSTHDR lies in `control` (aligned, 32 bytes, more than CMSG_SPACE of one
    // int); sendmsg reads the live iovec, tag and control buffer.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<c_int>() as u32) as _;
        let header = libc::CMSG_FIRSTHDR(&msg);
        if header.is_null() {
            return Err(ChildStep::Seccomp);
        }
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<c_int>(), listener as c_int);
        if libc::sendmsg(report, &msg, 0) < 0 {
            return Err(ChildStep::Seccomp);
        }
        libc::close(listener as c_int);
    }
    Ok(())
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
            libc::syscall(nr::CLOSE_RANGE, 0 as c_uint, (status_fd - 1) as c_uint, 0 as c_uint);
        }
        libc::syscall(nr::CLOSE_RANGE, (status_fd + 1) as c_uint, c_uint::MAX, 0 as c_uint);
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
