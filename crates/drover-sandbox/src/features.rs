//! What this kernel and this process offer the sandbox, detected once per process.
//!
//! [`Features::get`] runs the cheap probes (a few system calls and `/proc` reads) the first time
//! and caches them. Whether namespaces can be created unprivileged is only known by trying:
//! [`Features::namespaces`] clones a child into every namespace once (about a millisecond) and
//! caches that answer too. `drover sandbox status` prints all of it.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::policy::Feature;

/// The namespaces a sandboxed driver gets when they are available.
pub(crate) const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u64;

/// The detected features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// Landlock ABI version, or why Landlock is unavailable.
    pub landlock: Result<u32, String>,
    /// Whether seccomp filters can be installed.
    pub seccomp_filter: bool,
    /// Whether seccomp user notification (`SECCOMP_RET_USER_NOTIF`) exists.
    pub seccomp_notify: bool,
    /// Whether `close_range(2)` exists (otherwise fds are closed one by one).
    pub close_range: bool,
    /// Whether this process is PID 1.
    pub pid1: bool,
    /// Whether this process is a child subreaper.
    pub subreaper: bool,
}

/// cgroup v2 facts about this process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cgroup {
    /// The cgroup v2 directory of this process, when cgroup v2 is mounted.
    pub dir: Option<PathBuf>,
    /// Controllers available there (`cgroup.controllers`).
    pub controllers: Vec<String>,
    /// Whether this process may create child cgroups there (delegation).
    pub delegated: bool,
}

impl Features {
    /// The cached features, detected on first use.
    pub fn get() -> &'static Features {
        static FEATURES: OnceLock<Features> = OnceLock::new();
        FEATURES.get_or_init(Features::detect)
    }

    /// Detects the features now (uncached).
    pub fn detect() -> Features {
        Features {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            landlock: drover_sys::kernel::landlock_abi().map_err(|e| match e.raw_os_error() {
                Some(libc::ENOSYS) => "the kernel has no Landlock (ENOSYS)".to_owned(),
                Some(libc::EOPNOTSUPP) => {
                    "Landlock is built but disabled at boot (EOPNOTSUPP)".to_owned()
                }
                _ => format!("Landlock unavailable: {e}"),
            }),
            seccomp_filter: drover_sys::kernel::seccomp_action_available(seccompiler_allow()),
            seccomp_notify: drover_sys::kernel::seccomp_action_available(
                drover_sys::seccomp::SECCOMP_RET_USER_NOTIF,
            ),
            close_range: drover_sys::kernel::close_range_available(),
            pid1: std::process::id() == 1,
            subreaper: drover_sys::process::is_child_subreaper(),
        }
    }

    /// Whether unprivileged namespaces work here, tried once per process by cloning a child
    /// into all of them; `Err` carries the reason.
    pub fn namespaces() -> &'static Result<(), String> {
        static NAMESPACES: OnceLock<Result<(), String>> = OnceLock::new();
        NAMESPACES.get_or_init(|| {
            drover_sys::clone::probe_clone(NAMESPACE_FLAGS).map_err(|e| {
                format!("cannot create user/pid/net/mount namespaces unprivileged: {e}")
            })
        })
    }

    /// The Landlock ABI, or 0 without Landlock.
    pub fn landlock_abi(&self) -> u32 {
        self.landlock.as_ref().copied().unwrap_or(0)
    }

    /// Whether `feature` is present; `Err` says why not. Probes namespaces if asked about them.
    pub fn check(&self, feature: Feature) -> Result<(), String> {
        let abi = self.landlock_abi();
        match feature {
            Feature::Landlock => self.landlock.as_ref().map(drop).map_err(Clone::clone),
            Feature::LandlockScoping if abi >= 6 => Ok(()),
            Feature::LandlockScoping => Err(format!(
                "Landlock ABI {abi} has no signal/abstract-socket scoping (needs 6, Linux 6.12)"
            )),
            Feature::LandlockIoctlDev if abi >= 5 => Ok(()),
            Feature::LandlockIoctlDev => Err(format!(
                "Landlock ABI {abi} cannot control device ioctls (needs 5, Linux 6.10)"
            )),
            Feature::SeccompNotify if self.seccomp_notify => Ok(()),
            Feature::SeccompNotify => {
                Err("seccomp user notification unavailable (Linux 5.5+)".into())
            }
            Feature::Namespaces | Feature::PrivateTree => Features::namespaces().clone(),
            Feature::MemoryCgroup => match crate::cgroup::memory_hierarchy() {
                Some(_) => Ok(()),
                None => Err("this kernel has no memory cgroup controller".into()),
            },
        }
    }
}

fn seccompiler_allow() -> u32 {
    u32::from(seccompiler::SeccompAction::Allow)
}

impl Cgroup {
    /// Reads this process's cgroup v2 facts from `/proc/self/{cgroup,mountinfo}`.
    pub fn detect() -> Cgroup {
        detect_cgroup()
    }
}

fn detect_cgroup() -> Cgroup {
    let Some(relative) = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
    else {
        return Cgroup::default();
    };
    // Field 5 of mountinfo is the mount point; the filesystem type follows the " - " separator.
    let mount = std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|text| {
        text.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
    });
    let Some(mount) = mount else { return Cgroup::default() };
    let dir = mount.join(relative.trim().trim_start_matches('/'));
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let delegated = nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok();
    Cgroup { dir: Some(dir), controllers, delegated }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_consistent_with_the_kernel() {
        let features = Features::detect();
        assert!(!features.kernel.is_empty());
        // Every Linux drover supports has seccomp filters and close_range.
        assert!(features.seccomp_filter);
        assert_eq!(features.pid1, std::process::id() == 1);
        match &features.landlock {
            Ok(abi) => assert!(*abi >= 1),
            Err(reason) => assert!(!reason.is_empty()),
        }
        let landlock_ok = features.check(Feature::Landlock).is_ok();
        assert_eq!(landlock_ok, features.landlock.is_ok());
        if features.landlock_abi() < 6 {
            assert!(features.check(Feature::LandlockScoping).unwrap_err().contains("ABI"));
        }
    }
}
