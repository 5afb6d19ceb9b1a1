//! The child of a spawn, between `clone` and `execve`: its plan ([`ChildPlan`], prepared and
//! owned by the parent) and the steps it takes ([`ChildStep`], in order).
//!
//! The child runs in a copy of a possibly multi-threaded parent, so it may only make
//! async-signal-safe calls: thin libc wrappers and raw system calls on data the parent
//! prepared, never an allocation, never a panic (no indexing, no formatting), and it leaves
//! only through `execve` or `_exit`. The plan's types keep that data sound to use there: C
//! strings and arrays of them are owned ([`CStringArray`]), descriptors are borrowed (so they
//! are open when the child is cloned), filters own their programs.

use std::ffi::{CStr, CString};
use std::fmt;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use libc::{c_char, c_int, c_long, c_uint, c_ulong, c_void};

use crate::mount::{self, LandlockAdd, MountStep};
use crate::nr;
use crate::report::{REPORT_FAILED, REPORT_LISTENER};
use crate::seccomp::{SECCOMP_FILTER_FLAG_NEW_LISTENER, SeccompFilter};

/// `SECCOMP_SET_MODE_FILTER` for `seccomp(2)`.
const SECCOMP_SET_MODE_FILTER: c_uint = 1;

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
    /// Building the private mount tree.
    MountTree = 13,
    /// Forking the driver from the sandbox's init.
    Init = 14,
}

impl ChildStep {
    /// The step with number `n`.
    pub fn from_u32(n: u32) -> Option<Self> {
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

/// A null-terminated array of C strings (`argv`, `envp`) that owns its strings.
pub struct CStringArray {
    /// Keeps the strings `pointers` points into alive.
    _strings: Vec<CString>,
    /// One pointer per string, then a null pointer.
    pointers: Vec<*const c_char>,
}

impl CStringArray {
    /// The array of `strings`.
    pub fn new(strings: Vec<CString>) -> Self {
        let pointers =
            strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        Self { _strings: strings, pointers }
    }

    /// The pointer `execve` takes.
    fn as_ptr(&self) -> *const *const c_char {
        self.pointers.as_ptr()
    }
}

impl fmt::Debug for CStringArray {
    /// Only the length: an environment can carry secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CStringArray").field("len", &self._strings.len()).finish()
    }
}

// SAFETY: the raw pointers point into the heap buffers of the `CString`s the same value owns,
// which do not move when the struct moves and are never written after `new`. Moving the value
// to another thread therefore moves the only access to those buffers with it.
unsafe impl Send for CStringArray {}
// SAFETY: as above; shared access only ever reads.
unsafe impl Sync for CStringArray {}

/// The uid and gid maps a child writes for its new user namespace.
#[derive(Debug)]
pub struct IdMaps {
    /// `"<uid> <uid> 1\n"`.
    pub uid_map: Vec<u8>,
    /// `"<gid> <gid> 1\n"`.
    pub gid_map: Vec<u8>,
}

/// Everything the child needs, prepared and owned by the parent.
pub struct ChildPlan<'a> {
    /// Absolute path of the program.
    pub program: &'a CStr,
    /// The arguments, `argv[0]` first.
    pub argv: &'a CStringArray,
    /// The environment, `KEY=value` each.
    pub envp: &'a CStringArray,
    /// The work directory.
    pub work_dir: &'a CStr,
    /// Maps to write when the child has its own user namespace; with them the child also
    /// builds `mounts` and empties its bounding set.
    pub id_maps: Option<&'a IdMaps>,
    /// The `cgroup.procs` of the driver's cgroups (one per hierarchy), opened by the parent.
    pub cgroup_procs: &'a [OwnedFd],
    /// Highest capability number (`/proc/sys/kernel/cap_last_cap`).
    pub last_cap: u32,
    /// Namespace flags (`CLONE_NEW*`; 0: none).
    pub namespaces: u64,
    /// Child end of the report socket ([`crate::report`]).
    pub report: BorrowedFd<'a>,
    /// The transport, placed at fd 3.
    pub transport: Option<BorrowedFd<'a>>,
    /// Sources for fds 0, 1 and 2; `None` keeps what the parent has there.
    pub stdio: [Option<BorrowedFd<'a>>; 3],
    /// `(resource, limit)` pairs.
    pub rlimits: &'a [(c_int, libc::rlimit)],
    /// Landlock ruleset to enforce.
    pub landlock: Option<BorrowedFd<'a>>,
    /// Filters, installed in order; the last one may hand back a listener.
    pub filters: &'a [SeccompFilter],
    /// The private mount tree (empty: none).
    pub mounts: &'a [MountStep],
    /// Landlock rules for the tree's own filesystems.
    pub landlock_adds: &'a [LandlockAdd],
    /// With a pid namespace: run the sandbox's init, which reports the driver's wait status
    /// on this pipe.
    pub init_status: Option<BorrowedFd<'a>>,
}

impl fmt::Debug for ChildPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildPlan")
            .field("program", &self.program)
            .field("argv", &self.argv)
            .field("work_dir", &self.work_dir)
            .field("namespaces", &self.namespaces)
            .field("filters", &self.filters)
            .field("mounts", &self.mounts.len())
            .finish_non_exhaustive()
    }
}

/// What the parent learns about itself just before the clone, for the child.
pub(crate) struct ParentFacts {
    /// The parent's pid, for the parent-death check without a pid namespace.
    pub(crate) pid: libc::pid_t,
    /// Address ranges init zeroes: the argument and environment strings of the parent
    /// (`/proc/self/stat` `arg_start..arg_end`, `env_start..env_end`), copied into init.
    pub(crate) wipe: [(usize, usize); 2],
}

/// The child: one pass through [`ChildStep`], then `execve`.
///
/// # Safety
/// Only in the child of a fork-like clone ([`crate::clone::spawn`]), which has one thread and
/// must never return into the caller's code.
pub(crate) unsafe fn child_main(plan: &ChildPlan<'_>, parent: &ParentFacts) -> ! {
    let mut report = plan.report.as_raw_fd();
    // SAFETY: (for the whole block) this runs in the freshly cloned child, which has exactly
    // one thread. Every call is a thin libc wrapper or raw system call on memory the parent
    // prepared (copied into this address space by the clone; the plan's types own or borrow
    // all of it, so it is live) or on locals; nothing allocates, nothing unwinds, and every
    // path ends in execve or `fail`/_exit. The only write through an address not of a local is
    // init's wipe of `parent.wipe`: ranges the kernel reported as this process's argument and
    // environment strings, which init, running only `run_init` afterwards, never reads.
    unsafe {
        // 0. The cgroups, first, so that everything after is accounted and limited there.
        for procs in plan.cgroup_procs {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
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
            if mount::build_tree(plan.mounts).is_err() {
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
            || (plan.namespaces & (libc::CLONE_NEWPID as u64) == 0 && libc::getppid() != parent.pid)
        {
            libc::_exit(127);
        }
        // 5b. The sandbox's own init: this process stays pid 1 and forks the driver.
        if let Some(status_fd) = plan.init_status.map(|fd| fd.as_raw_fd()) {
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
                for (start, end) in parent.wipe {
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
        if libc::syscall(nr::CLOSE_RANGE, next as c_uint, c_uint::MAX, 0 as c_uint) != 0 {
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
            if mount::add_landlock_rules(landlock, plan.landlock_adds).is_err() {
                fail(report, ChildStep::Landlock);
            }
            if libc::syscall(nr::LANDLOCK_RESTRICT_SELF, landlock, 0 as c_uint) != 0 {
                fail(report, ChildStep::Landlock);
            }
            libc::close(landlock);
        }
        // 10. Seccomp, last. The final filter may return a listener, which goes to the parent
        // over the report socket (sendmsg, close and execve are always allowed for this).
        let mut listener: c_long = -1;
        for filter in plan.filters {
            let prog = filter.fprog();
            let ret = libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                filter.flags(),
                &prog as *const libc::sock_fprog,
            );
            if ret < 0 {
                fail(report, ChildStep::Seccomp);
            }
            if filter.flags() & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_null_terminated_and_debug_shows_no_value() {
        let env = CStringArray::new(vec![c"KEY=secret-value".to_owned(), c"A=b".to_owned()]);
        assert_eq!(env.pointers.len(), 3);
        assert!(env.pointers[2].is_null());
        let shown = format!("{env:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("len: 2"), "{shown}");
    }

    #[test]
    fn every_step_number_round_trips() {
        for n in 0..20 {
            if let Some(step) = ChildStep::from_u32(n) {
                assert_eq!(step as u32, n);
            }
        }
        assert_eq!(ChildStep::from_u32(13), Some(ChildStep::MountTree));
        assert_eq!(ChildStep::from_u32(0), None);
    }
}
