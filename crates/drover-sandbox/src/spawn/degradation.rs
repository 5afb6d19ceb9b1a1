//! What a spawn gives up where the kernel or the environment lacks something: every
//! [`Degradation`] is named, never silent (`drover exec` prints each, `drover sandbox status`
//! lists them).

use crate::cgroup::Controller;
use crate::features::Features;
use crate::policy::Policy;

/// A protection weaker than the policy asked for, because the kernel or the environment lacks
/// something. Never silent: `drover exec` prints each, and `drover sandbox status` lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Degradation {
    /// No namespaces: the driver shares the supervisor's pid, net and mount namespaces.
    NoNamespaces {
        /// Why.
        reason: String,
    },
    /// No Landlock: no filesystem confinement beyond file permissions.
    NoLandlock {
        /// Why.
        reason: String,
    },
    /// Landlock without scoping: signals and abstract sockets are confined only by the pid and
    /// network namespaces (when present).
    NoLandlockScoping {
        /// The kernel's Landlock ABI.
        abi: u32,
    },
    /// Device files are opened without Landlock `ioctl` control.
    NoLandlockIoctlDev {
        /// The kernel's Landlock ABI.
        abi: u32,
    },
    /// Refused calls are killed by the kernel, so deaths do not name the call.
    SeccompUnnamed,
    /// Log mode logs to the kernel audit log only.
    SeccompLogToAudit,
    /// The memory limit is not enforced: no memory cgroup was given (or exists).
    NoMemoryCgroup,
    /// No private mount tree (it needs the namespaces).
    NoPrivateTree,
    /// These cgroup limits are not enforced: no hierarchy with their controller was given.
    NoCgroup {
        /// The controllers of the unenforced limits.
        controllers: Vec<Controller>,
    },
}

impl std::fmt::Display for Degradation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Degradation::NoNamespaces { reason } => write!(
                f,
                "no namespaces ({reason}): the driver shares the supervisor's pid, network and mount namespaces; network is denied by seccomp only, and processes the driver forks can outlive a supervisor killed by SIGKILL"
            ),
            Degradation::NoLandlock { reason } => {
                write!(f, "no Landlock ({reason}): filesystem access is limited by file permissions only")
            }
            Degradation::NoLandlockScoping { abi } => write!(
                f,
                "Landlock ABI {abi} has no signal/abstract-socket scoping (needs 6): only namespaces keep the driver from signalling same-uid processes"
            ),
            Degradation::NoLandlockIoctlDev { abi } => {
                write!(f, "Landlock ABI {abi} cannot restrict device ioctls (needs 5)")
            }
            Degradation::SeccompUnnamed => f.write_str(
                "no seccomp user notification: refused calls are killed by the kernel and not named",
            ),
            Degradation::SeccompLogToAudit => f.write_str(
                "no seccomp user notification: log mode writes to the kernel audit log only",
            ),
            Degradation::NoPrivateTree => f.write_str(
                "no private mount tree: the driver sees the host's filesystem (within Landlock's rules), the host's /proc (every process and its command line, the kernel command line) and can connect to host UNIX sockets",
            ),
            Degradation::NoCgroup { controllers } => {
                let names: Vec<&str> = controllers.iter().map(|c| c.name()).collect();
                write!(
                    f,
                    "no {} cgroup: these limits of the driver are not enforced, so it can starve other drivers and the supervisor",
                    names.join(", ")
                )
            }
            Degradation::NoMemoryCgroup => f.write_str(
                "no memory cgroup: the memory limit is not enforced and an OOM kill looks like any SIGKILL",
            ),
        }
    }
}

/// The degradations `policy` suffers on this kernel, as far as known without spawning
/// (namespaces are known by trying; see [`expected_degradations`]).
pub(super) fn feature_degradations(policy: &Policy, features: &Features) -> Vec<Degradation> {
    let mut out = Vec::new();
    match &features.landlock {
        Ok(abi) => {
            if *abi < 6 {
                out.push(Degradation::NoLandlockScoping { abi: *abi });
            }
            if *abi < 5 && !policy.devices.is_empty() {
                out.push(Degradation::NoLandlockIoctlDev { abi: *abi });
            }
        }
        Err(reason) => out.push(Degradation::NoLandlock { reason: reason.clone() }),
    }
    if !features.seccomp_notify {
        match policy.seccomp.default_action {
            crate::SeccompDefault::Kill => out.push(Degradation::SeccompUnnamed),
            crate::SeccompDefault::Log => out.push(Degradation::SeccompLogToAudit),
            crate::SeccompDefault::KillProcess => {}
        }
    }
    out
}

/// Every degradation `policy` would suffer here, probing namespaces once (a clone) if the
/// policy wants them. `drover sandbox status` reports these.
pub fn expected_degradations(policy: &Policy) -> Vec<Degradation> {
    let mut out = feature_degradations(policy, Features::get());
    if policy.namespaces
        && let Err(reason) = Features::namespaces()
    {
        out.insert(0, Degradation::NoNamespaces { reason: reason.clone() });
        out.insert(1, Degradation::NoPrivateTree);
    }
    if !policy.namespaces {
        out.push(Degradation::NoPrivateTree);
    }
    out
}
