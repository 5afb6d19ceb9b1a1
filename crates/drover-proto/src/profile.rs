//! A sandbox profile file (`sandbox/*.toml`): how a driver is confined, as data.
//!
//! Every field is optional, because a profile may be a fragment that other profiles include
//! (`sandbox/seccomp/*.toml` are fragments holding only a `[seccomp]` table). The `drover`
//! binary loads a profile by validating each file against `schemas/sandbox-profile.json`,
//! merging its `include`s beneath it (lists are concatenated, the including file's scalars
//! win), and applying the defaults below to whatever is still unset:
//!
//! | Field | Default |
//! |---|---|
//! | `env` | empty (the driver inherits nothing; `DROVER_TRANSPORT_FD` is set by drover) |
//! | `filesystem.read`, `.write`, `.devices` | empty |
//! | `filesystem.work_dir` | chosen by the caller (`drover exec`: a fresh private directory) |
//! | `limits.open_files` | 1024 |
//! | `limits.file_size_bytes` | 1 GiB |
//! | `limits.cpu_seconds` | 3600 |
//! | `limits.memory_bytes` | none (no memory cgroup) |
//! | `limits.pids` | 512 (processes and threads, in the driver's pids cgroup) |
//! | `limits.cpu_millicores` | 1000 (one core, in the driver's cpu cgroup) |
//! | `limits.wall_clock_seconds` | none |
//! | `limits.work_dir_bytes` | 256 MiB (the work directory's tmpfs in the private tree) |
//! | `limits.work_dir_inodes` | 16384 |
//! | `network` | `false` |
//! | `namespaces` | `true` |
//! | `seccomp.default_action` | `kill` |
//! | `require` | empty |
//!
//! ```toml
//! include = ["seccomp/base.toml"]
//! description = "A driver that needs nothing but its work directory."
//! require = ["landlock"]
//!
//! [env]
//! PATH = "/usr/bin:/bin"
//!
//! [filesystem]
//! read = ["/usr", "/lib", "/etc"]
//!
//! [limits]
//! wall_clock_seconds = 600
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One profile file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile files merged beneath this one, relative to this file's directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(min = 6, max = 1024), regex(pattern = r"^[A-Za-z0-9._/-]+\.toml$"))
    )]
    pub include: Vec<String>,
    /// What the profile is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub description: Option<String>,
    /// Kernel features that must be present; spawning fails closed without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), extend("uniqueItems" = true))]
    pub require: Vec<SandboxFeature>,
    /// The driver's whole environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 128,
        "propertyNames" = {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "maxLength": 128},
        "additionalProperties" = {"type": "string", "maxLength": 4096}
    ))]
    pub env: BTreeMap<String, String>,
    /// Filesystem access (Landlock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemProfile>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsProfile>,
    /// Whether the driver may use the network. Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    /// Whether to use user, pid, net, mount, ipc, uts and cgroup namespaces when the kernel
    /// allows them unprivileged. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<bool>,
    /// The system call filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<SeccompProfile>,
}

/// Filesystem access. Paths are absolute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesystemProfile {
    /// Files and directory trees the driver may read and execute.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 4096), regex(pattern = r"^/")))]
    pub read: Vec<String>,
    /// Files and directory trees the driver may write, besides its work directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 4096), regex(pattern = r"^/")))]
    pub write: Vec<String>,
    /// Device nodes the driver may open read-write and `ioctl`; a final `*` matches any
    /// suffix (`/dev/nvidia*`). Missing devices are skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 6, max = 4096), regex(pattern = r"^/dev/")))]
    pub devices: Vec<String>,
    /// The work directory (writable, and the working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^/"))]
    pub work_dir: Option<String>,
}

/// Resource limits (soft = hard). There is deliberately no address-space limit: CUDA reserves
/// huge virtual ranges; bound memory with a cgroup instead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsProfile {
    /// `RLIMIT_NOFILE`. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 1_048_576))]
    pub open_files: Option<u32>,
    /// `RLIMIT_FSIZE` in bytes. Default 1 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub file_size_bytes: Option<u64>,
    /// `RLIMIT_CPU` in seconds. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub cpu_seconds: Option<u32>,
    /// Memory limit of the driver's cgroup (all its processes together), in bytes; an OOM kill
    /// is reported as such. Needs a memory cgroup (root at start-up). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1_048_576))]
    pub memory_bytes: Option<u64>,
    /// Most processes and threads of the driver together (its pids cgroup), so a fork or
    /// thread bomb stops inside the driver's own cgroup. Needs a pids cgroup. Default 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 4_194_304))]
    pub pids: Option<u32>,
    /// CPU quota of the driver's cgroup, in thousandths of a core (1000 = one core, 2500 = two
    /// and a half), over a 100 ms period. Needs a cpu cgroup. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 1_024_000))]
    pub cpu_millicores: Option<u32>,
    /// Wall-clock deadline in seconds; the supervisor kills the driver when it passes.
    /// Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub wall_clock_seconds: Option<u32>,
    /// Size of the work directory, a tmpfs in the driver's private mount tree, in bytes; a
    /// write beyond it fails with `ENOSPC`. Default 256 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 65_536))]
    pub work_dir_bytes: Option<u64>,
    /// Files and directories the work directory can hold. Default 16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 16_777_216))]
    pub work_dir_inodes: Option<u32>,
}

/// The system call filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeccompProfile {
    /// What happens to a call that is not allowed. Default `kill`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<SeccompDefaultAction>,
    /// System calls allowed, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 512),
        inner(length(min = 1, max = 32), regex(pattern = r"^[a-z0-9_]+$"))
    )]
    pub allow: Vec<String>,
    /// System calls answered with an errno instead of running (`clone3 = "ENOSYS"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 64,
        "propertyNames" = {"pattern": "^[a-z0-9_]+$", "maxLength": 32}
    ))]
    pub errno: BTreeMap<String, Errno>,
}

/// What the filter does with a call that is not allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SeccompDefaultAction {
    /// The supervisor is notified, kills the sandbox and names the call (kernel kill without
    /// a name where user notification is missing).
    Kill,
    /// The kernel kills the process; the call is not named.
    KillProcess,
    /// Bring-up: the call runs and the supervisor reports it by name.
    Log,
}

/// An errno a filter may answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Errno {
    /// Operation not permitted.
    #[serde(rename = "EPERM")]
    Eperm,
    /// Permission denied.
    #[serde(rename = "EACCES")]
    Eacces,
    /// Invalid argument.
    #[serde(rename = "EINVAL")]
    Einval,
    /// Function not implemented (makes glibc fall back, e.g. from `clone3` to `clone`).
    #[serde(rename = "ENOSYS")]
    Enosys,
    /// Address family not supported.
    #[serde(rename = "EAFNOSUPPORT")]
    Eafnosupport,
    /// Operation not supported.
    #[serde(rename = "EOPNOTSUPP")]
    Eopnotsupp,
}

impl Errno {
    /// The errno value on Linux.
    pub fn value(self) -> i32 {
        match self {
            Errno::Eperm => 1,
            Errno::Eacces => 13,
            Errno::Einval => 22,
            Errno::Enosys => 38,
            Errno::Eafnosupport => 97,
            Errno::Eopnotsupp => 95,
        }
    }
}

/// A kernel feature a profile can require.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SandboxFeature {
    /// Landlock filesystem rules.
    Landlock,
    /// Landlock signal and abstract-unix-socket scoping (ABI 6, Linux 6.12).
    LandlockScoping,
    /// Landlock control of device ioctls (ABI 5, Linux 6.10).
    LandlockIoctlDev,
    /// seccomp user notification, so a killed call is named.
    SeccompNotify,
    /// Unprivileged user, pid, net and mount namespaces.
    Namespaces,
    /// A memory cgroup for the driver, so `limits.memory_bytes` is enforced.
    MemoryCgroup,
    /// The private mount tree: only the granted paths, the driver's own /proc, a minimal
    /// /dev, a tmpfs work directory (needs the namespaces).
    PrivateTree,
}
