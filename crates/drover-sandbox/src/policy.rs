//! The sandbox policy: plain data, built by the caller (the `drover` binary converts validated
//! profiles from `sandbox/` into it). This crate reads no files to get it.
//!
//! Defaults ([`Policy::default`]), which are also those of `sandbox/default.toml`:
//!
//! | Field | Default |
//! |---|---|
//! | `env` | empty: the driver sees only what the policy lists (plus `DROVER_TRANSPORT_FD=3` when a transport is given) |
//! | `read` | none: nothing is readable unless listed |
//! | `write` | none besides the work directory |
//! | `devices` | none |
//! | `limits` | core 0, 1024 open files, 1 GiB file size, 3600 s CPU, no memory cgroup limit, 512 pids and one core (1000 millicores) per driver in its cgroups, no wall-clock deadline; never an address-space limit (CUDA reserves huge mappings) |
//! | `network` | off: a network namespace when available, and always `socket()` restricted to `AF_UNIX` (other families: `ENOSYS`) |
//! | `namespaces` | on: user, pid, net, mount, ipc, uts and cgroup namespaces when the kernel allows them unprivileged, and with them the private mount tree (`crate::spawn::tree`): only the granted paths, the driver's own /proc, a minimal /dev |
//! | `limits.work_dir_bytes`, `limits.work_dir_inodes` | 256 MiB and 16384: the work directory is a tmpfs of that size in the private tree |
//! | `seccomp.default_action` | [`SeccompDefault::Kill`] |
//! | `seccomp.allow` | empty (so only the calls the sandbox itself needs: a useful policy lists its own) |
//! | `require` | nothing: a missing kernel feature is a logged degradation, not an error |

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that decides how a driver is confined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The whole environment of the driver, in order.
    pub env: Vec<(OsString, OsString)>,
    /// Paths (files or directory trees) the driver may read and execute.
    pub read: Vec<PathBuf>,
    /// Paths (beside the work directory) the driver may write. A path under `/proc` means the
    /// driver's own procfs in its private tree (see [`crate::spawn::tree`]), never the host's.
    pub write: Vec<PathBuf>,
    /// Device nodes the driver may open read-write and `ioctl`. A final `*` in the file name
    /// matches any suffix (`/dev/nvidia*`); devices that do not exist are skipped.
    pub devices: Vec<PathBuf>,
    /// Resource limits.
    pub limits: Limits,
    /// Whether the driver may reach the network.
    pub network: bool,
    /// Whether to use namespaces when the kernel allows them.
    pub namespaces: bool,
    /// The system call filter.
    pub seccomp: SeccompPolicy,
    /// Kernel features that must be present; spawning fails otherwise.
    pub require: Vec<Feature>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            read: Vec::new(),
            write: Vec::new(),
            devices: Vec::new(),
            limits: Limits::default(),
            network: false,
            namespaces: true,
            seccomp: SeccompPolicy::default(),
            require: Vec::new(),
        }
    }
}

/// Resource limits. Each soft and hard limit is set to the same value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_NOFILE`. Default 1024.
    pub open_files: u64,
    /// `RLIMIT_FSIZE`, bytes. Default 1 GiB.
    pub file_size_bytes: u64,
    /// `RLIMIT_CPU`, seconds. Default 3600.
    pub cpu_seconds: u64,
    /// Memory limit of the driver's cgroup (all its processes), bytes. Default none. Needs a
    /// [`crate::cgroup::MemoryParent`]; an OOM kill is then reported as such.
    pub memory_bytes: Option<u64>,
    /// Most processes and threads of the driver together (its pids cgroup). Default 512.
    pub pids: Option<u32>,
    /// CPU quota of the driver (its cpu cgroup), in thousandths of a core. Default 1000 (one
    /// core).
    pub cpu_millicores: Option<u32>,
    /// Wall-clock deadline from spawn; the supervisor kills the driver when it passes. Default
    /// none.
    pub wall_clock: Option<Duration>,
    /// Size of the work directory's tmpfs in the private tree, bytes. Default 256 MiB.
    pub work_dir_bytes: u64,
    /// Inodes of the work directory's tmpfs in the private tree. Default 16384.
    pub work_dir_inodes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            open_files: 1024,
            file_size_bytes: 1 << 30,
            cpu_seconds: 3600,
            memory_bytes: None,
            pids: Some(512),
            cpu_millicores: Some(1000),
            wall_clock: None,
            work_dir_bytes: 256 << 20,
            work_dir_inodes: 16384,
        }
    }
}

/// What the filter does with a system call that is not allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompDefault {
    /// The supervisor is told which call it was (seccomp user notification), kills the whole
    /// sandbox and reports the call by name. On kernels without user notification this falls
    /// back to [`SeccompDefault::KillProcess`], as a logged degradation. The default.
    #[default]
    Kill,
    /// The kernel kills the process (`SECCOMP_RET_KILL_PROCESS`); the death is reported as a
    /// seccomp kill without the call's name.
    KillProcess,
    /// Bring-up mode: the call runs, and the supervisor reports it by name (user notification;
    /// on older kernels `SECCOMP_RET_LOG`, visible only in the kernel's audit log).
    Log,
}

/// The system call allowlist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeccompPolicy {
    /// What happens to calls not allowed.
    pub default_action: SeccompDefault,
    /// System calls allowed, by name (`read`, `openat`, ...).
    pub allow: Vec<String>,
    /// System calls answered with an errno instead of being run or killed (`clone3` ->
    /// `ENOSYS` makes glibc fall back to `clone`).
    pub errno: BTreeMap<String, i32>,
}

/// A kernel feature a policy can require.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// Landlock filesystem rules.
    Landlock,
    /// Landlock signal and abstract-unix-socket scoping (ABI 6, Linux 6.12).
    LandlockScoping,
    /// Landlock `ioctl` control on device files (ABI 5, Linux 6.10).
    LandlockIoctlDev,
    /// seccomp user notification, which names the killed system call.
    SeccompNotify,
    /// Unprivileged user namespaces, and with them pid, net, mount, ipc, uts and cgroup ones.
    Namespaces,
    /// A memory cgroup for the driver (a memory limit that is enforced, OOM kills named).
    MemoryCgroup,
    /// The private mount tree (needs the namespaces).
    PrivateTree,
}

impl Feature {
    /// Every feature, in a fixed order.
    pub const ALL: [Feature; 7] = [
        Feature::Landlock,
        Feature::LandlockScoping,
        Feature::LandlockIoctlDev,
        Feature::SeccompNotify,
        Feature::Namespaces,
        Feature::MemoryCgroup,
        Feature::PrivateTree,
    ];

    /// The name profiles and `drover sandbox status` use.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Landlock => "landlock",
            Feature::LandlockScoping => "landlock_scoping",
            Feature::LandlockIoctlDev => "landlock_ioctl_dev",
            Feature::SeccompNotify => "seccomp_notify",
            Feature::Namespaces => "namespaces",
            Feature::MemoryCgroup => "memory_cgroup",
            Feature::PrivateTree => "private_tree",
        }
    }
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
