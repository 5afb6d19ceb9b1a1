//! Phase A: the supervisor drops its own privilege, once, at start-up, while it still has
//! exactly one thread (capability sets and `prctl` state are per thread).
//!
//! The order, asserted by this module's tests through a recording [`PrivilegeSys`]:
//!
//! ```text
//! started as root                         started non-root (container: USER 65532, --cap-drop ALL)
//! ---------------                         ----------------------------------------------------
//! PR_SET_CHILD_SUBREAPER (unless PID 1)   PR_SET_CHILD_SUBREAPER (unless PID 1)
//! lock securebits                         lock securebits + clear bounding set, only when
//! clear bounding set                        CAP_SETPCAP is effective (otherwise nothing to do,
//! clear ambient, inheritable                or verification fails closed)
//! setgroups([])                           clear ambient, inheritable
//! setresgid(gid, gid, gid)                (no id change: the uid is what the container gave)
//! setresuid(uid, uid, uid)                clear permitted, effective
//! clear permitted, effective              PR_SET_NO_NEW_PRIVS
//! PR_SET_NO_NEW_PRIVS                     PR_SET_DUMPABLE(0)
//! PR_SET_DUMPABLE(0)  (after the id change, which resets it)
//! verify                                  verify
//! ```
//!
//! Verification reads `/proc/self/status` and requires `CapInh`, `CapPrm`, `CapEff`, `CapBnd`
//! and `CapAmb` all zero and `NoNewPrivs: 1`, then requires `setuid(0)` to fail, the process to
//! be non-dumpable, and neither the real nor the effective uid to be 0. Any failed step is a
//! [`PrivilegeError`]: the caller must abort start-up (fail closed).
//!
//! Defaults: uid and gid 65534 (`nobody`/`nogroup`) when started as root ([`DropConfig`]).
//!
//! The only way to get a [`Dropped`] is a successful verification, and spawning a sandboxed
//! driver requires one, so a supervisor that still holds privilege cannot start drivers.
//!
//! ```no_run
//! use drover_sandbox::privilege::{drop_privileges, DropConfig, LinuxSys};
//!
//! // First thing in main, before any thread or async runtime exists.
//! let dropped = drop_privileges(&DropConfig::default(), &LinuxSys).expect("privilege drop");
//! assert_ne!(dropped.uid(), 0);
//! ```

use std::io;

use thiserror::Error;

/// The uid and gid Phase A drops to when started as root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropConfig {
    /// Target user id. Default 65534.
    pub uid: u32,
    /// Target group id. Default 65534.
    pub gid: u32,
}

impl Default for DropConfig {
    fn default() -> Self {
        Self { uid: 65534, gid: 65534 }
    }
}

/// A capability set, as `/proc/self/status` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapSet {
    /// `CapInh`.
    Inheritable,
    /// `CapPrm`.
    Permitted,
    /// `CapEff`.
    Effective,
    /// `CapBnd`.
    Bounding,
    /// `CapAmb`.
    Ambient,
}

impl CapSet {
    /// All five, in `/proc/self/status` order.
    pub const ALL: [CapSet; 5] = [
        CapSet::Inheritable,
        CapSet::Permitted,
        CapSet::Effective,
        CapSet::Bounding,
        CapSet::Ambient,
    ];

    /// The `/proc/self/status` key.
    pub fn status_key(self) -> &'static str {
        match self {
            CapSet::Inheritable => "CapInh",
            CapSet::Permitted => "CapPrm",
            CapSet::Effective => "CapEff",
            CapSet::Bounding => "CapBnd",
            CapSet::Ambient => "CapAmb",
        }
    }
}

/// The narrow OS seam of Phase A: one method per privileged operation, in the words of the
/// order above. [`LinuxSys`] is the real one; tests record calls through their own.
pub trait PrivilegeSys {
    /// Real uid.
    fn getuid(&self) -> u32;
    /// Effective uid.
    fn geteuid(&self) -> u32;
    /// This process's pid (1 when it is a container's init).
    fn getpid(&self) -> u32;
    /// Whether `cap_setpcap` is in the effective set.
    fn has_setpcap(&self) -> bool;
    /// `PR_SET_CHILD_SUBREAPER`.
    fn set_child_subreaper(&self) -> io::Result<()>;
    /// `PR_SET_SECUREBITS`: NOROOT, NO_SETUID_FIXUP, KEEP_CAPS and NO_CAP_AMBIENT_RAISE locked.
    fn lock_securebits(&self) -> io::Result<()>;
    /// Empties one capability set (the bounding set by `PR_CAPBSET_DROP`).
    fn clear_caps(&self, set: CapSet) -> io::Result<()>;
    /// `setgroups(0, NULL)`.
    fn clear_groups(&self) -> io::Result<()>;
    /// `setresgid(gid, gid, gid)`.
    fn setresgid(&self, gid: u32) -> io::Result<()>;
    /// `setresuid(uid, uid, uid)`.
    fn setresuid(&self, uid: u32) -> io::Result<()>;
    /// `PR_SET_NO_NEW_PRIVS`.
    fn set_no_new_privs(&self) -> io::Result<()>;
    /// `PR_SET_DUMPABLE(0)`.
    fn set_non_dumpable(&self) -> io::Result<()>;
    /// Whether the process is dumpable.
    fn is_dumpable(&self) -> io::Result<bool>;
    /// The text of `/proc/self/status`.
    fn proc_status(&self) -> io::Result<String>;
    /// `setuid(0)`; Phase A requires this to fail.
    fn try_setuid_root(&self) -> io::Result<()>;
}

/// The real [`PrivilegeSys`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxSys;

impl PrivilegeSys for LinuxSys {
    fn getuid(&self) -> u32 {
        nix::unistd::getuid().as_raw()
    }
    fn geteuid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }
    fn getpid(&self) -> u32 {
        nix::unistd::getpid().as_raw().unsigned_abs()
    }
    fn has_setpcap(&self) -> bool {
        caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false)
    }
    fn set_child_subreaper(&self) -> io::Result<()> {
        drover_sys::process::set_child_subreaper()
    }
    fn lock_securebits(&self) -> io::Result<()> {
        drover_sys::process::set_securebits(drover_sys::process::LOCKED_SECUREBITS)
    }
    fn clear_caps(&self, set: CapSet) -> io::Result<()> {
        let set = match set {
            CapSet::Bounding => return drover_sys::process::drop_bounding_set(last_cap()),
            CapSet::Inheritable => caps::CapSet::Inheritable,
            CapSet::Permitted => caps::CapSet::Permitted,
            CapSet::Effective => caps::CapSet::Effective,
            CapSet::Ambient => caps::CapSet::Ambient,
        };
        caps::clear(None, set).map_err(|e| io::Error::other(e.to_string()))
    }
    fn clear_groups(&self) -> io::Result<()> {
        nix::unistd::setgroups(&[]).map_err(io::Error::from)
    }
    fn setresgid(&self, gid: u32) -> io::Result<()> {
        let gid = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setresgid(gid, gid, gid).map_err(io::Error::from)
    }
    fn setresuid(&self, uid: u32) -> io::Result<()> {
        let uid = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresuid(uid, uid, uid).map_err(io::Error::from)
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)
    }
    fn set_non_dumpable(&self) -> io::Result<()> {
        nix::sys::prctl::set_dumpable(false).map_err(io::Error::from)
    }
    fn is_dumpable(&self) -> io::Result<bool> {
        drover_sys::process::is_dumpable()
    }
    fn proc_status(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/status")
    }
    fn try_setuid_root(&self) -> io::Result<()> {
        drover_sys::process::try_setuid_root()
    }
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`); 63 when
/// unreadable, so that every possible capability is dropped.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Proof that Phase A completed and verified. Only [`drop_privileges`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    uid: u32,
    gid: u32,
    started_as_root: bool,
    pid1: bool,
}

impl Dropped {
    /// The uid the process runs as now.
    pub fn uid(&self) -> u32 {
        self.uid
    }
    /// The gid the process runs as now.
    pub fn gid(&self) -> u32 {
        self.gid
    }
    /// Whether the process was started as root (and changed identity).
    pub fn started_as_root(&self) -> bool {
        self.started_as_root
    }
    /// Whether the process is PID 1 (a container's init), which reaps orphans by nature.
    pub fn pid1(&self) -> bool {
        self.pid1
    }
}

/// A step of Phase A, for errors and for the recorded order in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `PR_SET_CHILD_SUBREAPER`.
    Subreaper,
    /// `PR_SET_SECUREBITS`.
    Securebits,
    /// Clearing one capability set.
    ClearCaps(CapSet),
    /// `setgroups([])`.
    Setgroups,
    /// `setresgid`.
    Setresgid,
    /// `setresuid`.
    Setresuid,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// `PR_SET_DUMPABLE(0)`.
    NonDumpable,
}

/// Why Phase A failed. Every variant is fatal.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    /// A privileged operation failed.
    #[error("privilege drop failed at {step:?}")]
    Step {
        /// The operation.
        step: Step,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Started non-root but asked to become another user, which needs privilege.
    #[error("started as uid {current}, which cannot switch to uid {requested} (only root can)")]
    CannotSwitch {
        /// The uid the process has.
        current: u32,
        /// The uid it was asked for.
        requested: u32,
    },
    /// The configured target is root.
    #[error("refusing to drop to uid 0 / gid 0: the supervisor must not run as root")]
    TargetIsRoot,
    /// `/proc/self/status` could not be read.
    #[error("cannot read /proc/self/status to verify the privilege drop")]
    ReadStatus(#[source] io::Error),
    /// A capability set is not empty after the drop.
    #[error(
        "{key} is {mask:#018x} after the privilege drop, not 0{hint}",
        hint = if *key == "CapBnd" {
            " (a non-root process cannot clear its bounding set: start the container with --cap-drop ALL)"
        } else { "" }
    )]
    CapsRemain {
        /// The status key, e.g. `CapBnd`.
        key: &'static str,
        /// The mask found.
        mask: u64,
    },
    /// A status line is missing or unparsable.
    #[error("/proc/self/status has no parsable {key} line")]
    StatusField {
        /// The key looked for.
        key: &'static str,
    },
    /// `NoNewPrivs` is not 1.
    #[error("NoNewPrivs is {found} after the privilege drop, not 1")]
    NoNewPrivsUnset {
        /// The value found.
        found: u64,
    },
    /// `setuid(0)` succeeded: root could be regained.
    #[error("setuid(0) succeeded after the privilege drop: root could be regained")]
    RootRegainable,
    /// `setuid(0)` failed with something other than EPERM.
    #[error("setuid(0) failed with an unexpected error (expected EPERM)")]
    SetuidProbe(#[source] io::Error),
    /// The process is still root.
    #[error("still running as uid {uid} (euid {euid}) after the privilege drop")]
    StillRoot {
        /// Real uid.
        uid: u32,
        /// Effective uid.
        euid: u32,
    },
    /// The process is still dumpable.
    #[error("the process is still dumpable after PR_SET_DUMPABLE(0)")]
    StillDumpable,
}

/// Runs Phase A through `sys` and verifies the result. See the module docs for the order.
pub fn drop_privileges<S: PrivilegeSys + ?Sized>(
    config: &DropConfig,
    sys: &S,
) -> Result<Dropped, PrivilegeError> {
    if config.uid == 0 || config.gid == 0 {
        return Err(PrivilegeError::TargetIsRoot);
    }
    let step = |step: Step, result: io::Result<()>| {
        result.map_err(|source| PrivilegeError::Step { step, source })
    };
    let started_as_root = sys.geteuid() == 0 || sys.getuid() == 0;
    let pid1 = sys.getpid() == 1;
    if !pid1 {
        step(Step::Subreaper, sys.set_child_subreaper())?;
    }
    if started_as_root || sys.has_setpcap() {
        step(Step::Securebits, sys.lock_securebits())?;
        step(Step::ClearCaps(CapSet::Bounding), sys.clear_caps(CapSet::Bounding))?;
    }
    step(Step::ClearCaps(CapSet::Ambient), sys.clear_caps(CapSet::Ambient))?;
    step(Step::ClearCaps(CapSet::Inheritable), sys.clear_caps(CapSet::Inheritable))?;
    if started_as_root {
        step(Step::Setgroups, sys.clear_groups())?;
        step(Step::Setresgid, sys.setresgid(config.gid))?;
        step(Step::Setresuid, sys.setresuid(config.uid))?;
    }
    step(Step::ClearCaps(CapSet::Permitted), sys.clear_caps(CapSet::Permitted))?;
    step(Step::ClearCaps(CapSet::Effective), sys.clear_caps(CapSet::Effective))?;
    step(Step::NoNewPrivs, sys.set_no_new_privs())?;
    step(Step::NonDumpable, sys.set_non_dumpable())?;
    verify(sys)?;
    Ok(Dropped {
        uid: sys.getuid(),
        gid: config_gid(sys, config, started_as_root),
        started_as_root,
        pid1,
    })
}

fn config_gid<S: PrivilegeSys + ?Sized>(
    sys: &S,
    config: &DropConfig,
    started_as_root: bool,
) -> u32 {
    if started_as_root {
        config.gid
    } else {
        sys.proc_status()
            .ok()
            .and_then(|s| {
                status_field(&s, "Gid").and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(u32::MAX)
    }
}

/// Checks a started-non-root process against the requested uid: `None` or the current uid.
pub fn check_requested_uid<S: PrivilegeSys + ?Sized>(
    requested: Option<u32>,
    sys: &S,
) -> Result<(), PrivilegeError> {
    let current = sys.getuid();
    match requested {
        Some(requested) if current != 0 && requested != current => {
            Err(PrivilegeError::CannotSwitch { current, requested })
        }
        _ => Ok(()),
    }
}

/// The verification half of Phase A, on its own.
pub fn verify<S: PrivilegeSys + ?Sized>(sys: &S) -> Result<(), PrivilegeError> {
    let status = sys.proc_status().map_err(PrivilegeError::ReadStatus)?;
    for set in CapSet::ALL {
        let key = set.status_key();
        let mask = status_field(&status, key)
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or(PrivilegeError::StatusField { key })?;
        if mask != 0 {
            return Err(PrivilegeError::CapsRemain { key, mask });
        }
    }
    let nnp = status_field(&status, "NoNewPrivs")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or(PrivilegeError::StatusField { key: "NoNewPrivs" })?;
    if nnp != 1 {
        return Err(PrivilegeError::NoNewPrivsUnset { found: nnp });
    }
    match sys.try_setuid_root() {
        Ok(()) => return Err(PrivilegeError::RootRegainable),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) => return Err(PrivilegeError::SetuidProbe(e)),
    }
    let (uid, euid) = (sys.getuid(), sys.geteuid());
    if uid == 0 || euid == 0 {
        return Err(PrivilegeError::StillRoot { uid, euid });
    }
    if sys
        .is_dumpable()
        .map_err(|source| PrivilegeError::Step { step: Step::NonDumpable, source })?
    {
        return Err(PrivilegeError::StillDumpable);
    }
    Ok(())
}

/// The value of `key:` in `/proc/<pid>/status` text, without surrounding whitespace.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then_some(v.trim())
    })
}

#[cfg(test)]
mod tests;
