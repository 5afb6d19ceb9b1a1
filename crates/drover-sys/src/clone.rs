//! Cloning children: [`spawn`] (a sandboxed child that runs [`crate::child`]'s steps and
//! executes its program) and [`probe_clone`] (a child that exits at once).
//!
//! Both clone like `fork` (a copy of the address space, a zero stack) with namespace flags
//! only: any other clone flag (`CLONE_VM`, `CLONE_THREAD`, `CLONE_SETTLS`, ...) would let the
//! child share memory or a stack with this process, so it is refused with `EINVAL`. The child
//! runs only code of this crate that is async-signal-safe and allocation-free, and never
//! returns into the caller.

use std::io;
use std::mem::size_of;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::OnceLock;

use libc::{c_int, c_long, c_ulong};

use crate::child::{self, ChildPlan};
use crate::{check, invalid, nr};

/// `clone3` flag: return a pidfd for the child.
const CLONE_PIDFD: u64 = 0x1000;

/// Every namespace flag the legacy `clone` also takes (so not `CLONE_NEWTIME`, whose bit is
/// the legacy call's exit signal): the only flags a caller may pass.
pub const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

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

/// Clones a child that sets itself up by `plan` and executes the program. Returns its pid and
/// pidfd. The child reports a failed step, or the seccomp listener, on `plan.report`
/// ([`crate::report`]).
///
/// `EINVAL` without cloning when `plan.namespaces` holds anything but namespace flags, or when
/// `plan.mounts` is not empty without a new mount and user namespace (the tree is built only
/// there).
pub fn spawn(plan: &ChildPlan<'_>) -> io::Result<(libc::pid_t, OwnedFd)> {
    let new_tree = (libc::CLONE_NEWNS | libc::CLONE_NEWUSER) as u64;
    if !plan.mounts.is_empty() && plan.namespaces & new_tree != new_tree {
        return Err(invalid());
    }
    let facts = child::ParentFacts {
        pid: std::process::id() as libc::pid_t,
        wipe: if plan.init_status.is_some() { supervisor_strings() } else { [(0, 0); 2] },
    };
    let mut pidfd: c_int = -1;
    let pid = fork_like(CLONE_PIDFD | plan.namespaces, &mut pidfd)?;
    if pid == 0 {
        // SAFETY: this is the child of the fork-like clone above, with one thread;
        // child_main never returns.
        unsafe { child::child_main(plan, &facts) }
    }
    // SAFETY: CLONE_PIDFD made the kernel store a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((pid as libc::pid_t, pidfd))
}

/// Clones a child with `namespaces` that exits at once, and reaps it: whether this process
/// may create those namespaces. `EINVAL` for anything but namespace flags.
pub fn probe_clone(namespaces: u64) -> io::Result<()> {
    let mut unused_pidfd: c_int = -1;
    let pid = fork_like(namespaces, &mut unused_pidfd)?;
    if pid == 0 {
        // SAFETY: the child only exits, which is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    crate::process::reap(pid as libc::pid_t, true);
    Ok(())
}

/// `clone3(flags)` with a zero stack, which behaves like `fork` (returns 0 in the child). Where
/// `clone3` is refused with `ENOSYS` (Docker's and containerd's default seccomp profiles do
/// that, so that libc falls back), the legacy `clone` with the same flags; it has taken
/// `CLONE_PIDFD` (pidfd stored at the parent-tid pointer) since Linux 5.2. Namespace flags and
/// `CLONE_PIDFD` all fit the legacy call's 32-bit flag word.
///
/// Refuses (`EINVAL`) any flag but namespaces and `CLONE_PIDFD`. The caller must make the child
/// run only async-signal-safe code and never return into code that allocates or unwinds;
/// `spawn` and `probe_clone` do.
fn fork_like(flags: u64, pidfd: &mut c_int) -> io::Result<c_long> {
    if flags & !(NAMESPACE_FLAGS | CLONE_PIDFD) != 0 {
        return Err(invalid());
    }
    let mut args = CloneArgs {
        flags,
        pidfd: pidfd as *mut c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a zero stack and without CLONE_VM/CLONE_THREAD/CLONE_SETTLS (only
    // namespace flags and CLONE_PIDFD pass the check above) behaves like fork: the child gets a
    // copy of this address space, so every pointer the caller holds (into buffers it keeps
    // alive across this call) stays valid in it; what the child runs is the caller's
    // obligation (see above). `pidfd` is a live exclusive borrow the kernel writes in the
    // parent when CLONE_PIDFD is set.
    let ret =
        unsafe { libc::syscall(nr::CLONE3, &mut args as *mut CloneArgs, size_of::<CloneArgs>()) };
    match check(ret) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        other => return other,
    }
    let legacy_flags = c_ulong::try_from(flags).map_err(|_| invalid())? | libc::SIGCHLD as c_ulong;
    let no_stack: c_ulong = 0;
    let no_tid: c_ulong = 0;
    let no_tls: c_ulong = 0;
    // SAFETY: as above: the legacy clone with a zero stack and the same checked flags behaves
    // like fork. With CLONE_PIDFD the kernel writes the pidfd through the third argument
    // (parent_tid on every architecture), which is the same live exclusive borrow; child_tid
    // and tls are unused (no CLONE_CHILD_SETTID/CLEARTID/SETTLS) and passed as 0 whatever
    // their order.
    let ret = unsafe {
        libc::syscall(libc::SYS_clone, legacy_flags, no_stack, pidfd as *mut c_int, no_tid, no_tls)
    };
    check(ret)
}

/// Where this process's argument and environment strings are (`/proc/self/stat` fields 48 to
/// 51), read once; the sandbox's init wipes its copy of them.
fn supervisor_strings() -> [(usize, usize); 2] {
    static AREAS: OnceLock<[(usize, usize); 2]> = OnceLock::new();
    *AREAS.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name, which ends with the last ')', start at field 3.
        let fields: Vec<usize> = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
        [(field(48), field(49)), (field(50), field(51))]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespace_flags_are_cloned() {
        for flags in [libc::CLONE_VM as u64, libc::CLONE_THREAD as u64, libc::CLONE_SETTLS as u64] {
            let err = probe_clone(flags).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{flags:#x}");
        }
        // No namespace at all is a plain fork, allowed everywhere.
        probe_clone(0).unwrap();
    }

    #[test]
    fn a_mount_tree_needs_its_own_namespaces() {
        let argv = child::CStringArray::new(vec![c"/bin/true".to_owned()]);
        let (report, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mounts = [crate::mount::MountStep::Mkdir { path: c"/tmp/never-made".to_owned() }];
        let plan = ChildPlan {
            program: c"/bin/true",
            argv: &argv,
            envp: &argv,
            work_dir: c"/",
            id_maps: None,
            cgroup_procs: &[],
            last_cap: 0,
            namespaces: libc::CLONE_NEWNS as u64,
            report: std::os::fd::AsFd::as_fd(&report),
            transport: None,
            stdio: [None, None, None],
            rlimits: &[],
            landlock: None,
            filters: &[],
            mounts: &mounts,
            landlock_adds: &[],
            init_status: None,
        };
        // Refused before any clone: the host's mount table is never touched.
        assert_eq!(spawn(&plan).unwrap_err().raw_os_error(), Some(libc::EINVAL));
        let plan = ChildPlan { namespaces: libc::CLONE_VM as u64, mounts: &[], ..plan };
        assert_eq!(spawn(&plan).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }
}
