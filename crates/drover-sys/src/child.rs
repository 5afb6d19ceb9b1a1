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
use std::os::fd::{BorrowedFd, OwnedFd};

use libc::{c_char, c_int};

use crate::mount::{LandlockAdd, MountStep};
use crate::seccomp::SeccompFilter;

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

mod steps;

pub(crate) use steps::child_main;

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
