//! Phase B: spawning a driver in the sandbox, and Phase C's wait for its death.
//!
//! [`prepare`] does every allocation: it resolves the program against the policy's `PATH`,
//! builds argv and envp as C strings, the uid/gid maps, the rlimits, the Landlock ruleset (an
//! fd) and the seccomp programs. [`Prepared::spawn`] then clones the child with `clone3`
//! (into new user, pid, net, mount, ipc, uts and cgroup namespaces when the kernel allows it
//! unprivileged) and the child, allocating nothing, runs these steps and `execve`s:
//!
//! ```text
//! 1. user namespace: setgroups=deny, uid_map and gid_map (own ids only); the private mount
//!    tree (crate::tree); bounding set dropped
//! 2. ambient, inheritable, permitted, effective capability sets emptied
//! 3. setsid()                         (no controlling terminal: no TIOCSTI injection)
//! 4. every signal disposition SIG_DFL, empty signal mask
//! 5. PR_SET_PDEATHSIG(SIGKILL), then exit if the parent is already gone
//! 5b. with a pid namespace: this process stays as the sandbox's init (pid 1) and forks the
//!    driver (pid 2), which arms its own PDEATHSIG and goes on
//! 6. stdio in place, transport at fd 3, close_range() on everything else
//! 7. rlimits: CORE 0, NOFILE, FSIZE, CPU (never AS: CUDA maps huge virtual ranges)
//! 8. chdir(work dir)
//! 9. PR_SET_NO_NEW_PRIVS (already inherited from Phase A), the tree's own Landlock rules,
//!    landlock_restrict_self
//! 10. seccomp filters, last; the listener fd goes to the parent over the report socket
//! 11. execve(program, argv, envp) with exactly the policy's environment
//! ```
//!
//! Descriptors are arranged (6) before the rlimits (7) so that a low `RLIMIT_NOFILE` cannot
//! make the rearrangement fail.
//!
//! A failing step reports its number and errno on a `SOCK_SEQPACKET` pair and exits 127; the
//! parent turns that into [`SpawnError::Child`]. End of file on that socket means `execve`
//! succeeded (the child's end is close-on-exec). The parent sleeps until that hang-up and only
//! then reads what was queued (the seccomp listener), so it wakes once per spawn.
//!
//! The sandbox's init (5b) is a fork inside the child, not an exec of a drover subcommand: it
//! costs one copy-on-write fork (tens of microseconds, see BENCHMARKS.md) where an exec would
//! cost a dynamic link and start-up of the drover binary, and it runs an allocation-free loop
//! (`sys::run_init`): every signal blocked and taken with `sigwaitinfo`, SIGCHLD reaps every
//! child, any other signal is forwarded to the driver, and when the driver dies its wait status
//! goes to the parent on a pipe and init exits, which kills and reaps everything left in the
//! namespace. So the death cause is the driver's own (exit code, signal, SIGSYS, OOM), a driver
//! gets default signal semantics (SIGTERM kills it, where a namespace's pid 1 would ignore it),
//! and init's PDEATHSIG, which no code of the driver can reach (seccomp refuses
//! `PR_SET_PDEATHSIG`, and init is outside the driver's Landlock domain, so it cannot be
//! traced), takes the whole namespace down when the supervisor dies, SIGKILL included. Init
//! wipes its copy of the supervisor's command line and environment, so `/proc/1/cmdline`
//! shows nothing. Stopping a driver is: close the transport, then SIGTERM (forwarded by init),
//! then SIGKILL (to init: the namespace dies). Without a pid namespace the driver leads its
//! own process group and session, and the supervisor, a child subreaper since Phase A, kills
//! the group and reaps strays with [`reap_strays`].
//!
//! PDEATHSIG fires when the parent *thread* exits: spawn from a long-lived thread.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::cgroup::{CgroupError, CgroupLimits, Controller, Leaf, MemoryParent};
use crate::death::{Cause, Death};
use crate::features::{Features, NAMESPACE_FLAGS};
use crate::fs_rules::{self, Grant, LandlockError};
use crate::policy::{Feature, Policy};
use crate::privilege::{Dropped, last_cap};
use crate::seccomp::{self, Enforcement, SeccompError};
pub use drover_sys::child::ChildStep;
use drover_sys::child::{CStringArray, ChildPlan, IdMaps};
use drover_sys::process as sys;
use drover_sys::report::{REPORT_FAILED, REPORT_LISTENER, recv_report, wait_hangup};
use drover_sys::seccomp::{Listener, SeccompFilter, notif_continue, notif_recv};

/// The `PATH` used to find the program when the policy's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// One driver to start: what to run, where, and with which descriptors.
#[derive(Debug)]
pub struct Command {
    /// The program: a path, or a name looked up in the policy's `PATH`.
    pub program: OsString,
    /// Its arguments (without `argv[0]`, which is `program` as given).
    pub args: Vec<OsString>,
    /// The writable work directory, also the working directory.
    pub work_dir: PathBuf,
    /// The transport, placed at fd 3 with `DROVER_TRANSPORT_FD=3` in the environment.
    pub transport: Option<OwnedFd>,
    /// Sources for stdin, stdout and stderr; `None` shares the supervisor's.
    pub stdio: [Option<OwnedFd>; 3],
    /// Where the driver's memory cgroup goes (needed for `limits.memory_bytes`).
    pub memory_cgroup: Option<MemoryParent>,
}

impl Command {
    /// `program args...` in `work_dir`, sharing the supervisor's stdio, without a transport.
    pub fn new(program: impl Into<OsString>, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            work_dir: work_dir.into(),
            transport: None,
            stdio: [None, None, None],
            memory_cgroup: None,
        }
    }

    /// Appends arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

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

/// Why a spawn failed. Nothing was started, or what was started has been reaped.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// The policy requires a feature this kernel or process lacks.
    #[error("the profile requires {feature}, which is unavailable: {reason}")]
    MissingFeature {
        /// The feature.
        feature: Feature,
        /// Why it is unavailable.
        reason: String,
    },
    /// The program was not found or is not executable.
    #[error("cannot find an executable {program:?} (searched {searched})")]
    ProgramNotFound {
        /// The program as given.
        program: OsString,
        /// Where it was looked for.
        searched: String,
    },
    /// A string for argv or envp contains a NUL byte.
    #[error("{what} contains a NUL byte")]
    Nul {
        /// Which string.
        what: &'static str,
    },
    /// The work directory is unusable.
    #[error("work directory {path} is not a directory")]
    WorkDir {
        /// The path.
        path: PathBuf,
    },
    /// The seccomp policy did not compile.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The Landlock ruleset could not be built.
    #[error(transparent)]
    Landlock(#[from] LandlockError),
    /// The driver's memory cgroup could not be created.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A system call in the parent failed.
    #[error("{what} failed")]
    Os {
        /// The operation.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A step in the child failed.
    #[error("sandbox set-up step {step:?} failed in the child")]
    Child {
        /// The step.
        step: ChildStep,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Everything a spawn needs, allocated. Spawning allocates nothing in the child.
///
/// `Send`: it may be prepared on one thread and spawned from another (the long-lived one the
/// child's PDEATHSIG is tied to).
#[derive(Debug)]
pub struct Prepared {
    program: CString,
    argv: CStringArray,
    envp: CStringArray,
    work_dir: CString,
    id_maps: IdMaps,
    last_cap: u32,
    rlimits: Vec<(libc::c_int, libc::rlimit)>,
    landlock: Option<OwnedFd>,
    filters: Vec<SeccompFilter>,
    tree: crate::tree::Plan,
    enforcement: Enforcement,
    namespaces: bool,
    network: bool,
    require_namespaces: bool,
    require_private_tree: bool,
    wall_clock: Option<Duration>,
    transport: Option<OwnedFd>,
    stdio: [Option<OwnedFd>; 3],
    leaf: Option<Leaf>,
    memory_bytes: Option<u64>,
    degradations: Vec<Degradation>,
}

/// Set once a namespaced clone failed, so later spawns go straight to the fallback.
static NAMESPACES_REFUSED: AtomicBool = AtomicBool::new(false);

/// Set once the child could not build its private tree for lack of permission although the
/// namespaces themselves were granted: container runtimes (Docker, Podman) mask parts of
/// their /proc, and the kernel then refuses a fresh procfs in a nested user namespace
/// ("mount too revealing"). Later spawns go straight to the fallback: the host's tree under
/// Landlock's rules, reported as [`Degradation::NoPrivateTree`]; a profile that `require`s
/// `private_tree` fails instead.
static PRIVATE_TREE_REFUSED: AtomicBool = AtomicBool::new(false);

/// Prepares `command` under `policy`. `_dropped` proves Phase A ran: a process that still holds
/// privilege cannot spawn drivers.
pub fn prepare(
    policy: &Policy,
    command: Command,
    _dropped: &Dropped,
) -> Result<Prepared, SpawnError> {
    let features = Features::get();
    for feature in &policy.require {
        match feature {
            // Known only by trying; `spawn` fails closed if the clone is refused.
            Feature::Namespaces | Feature::PrivateTree => continue,
            Feature::MemoryCgroup if command.memory_cgroup.is_none() => {
                return Err(SpawnError::MissingFeature {
                    feature: *feature,
                    reason: "no memory cgroup was prepared for this supervisor (it needs root at start-up or a delegated cgroup)".into(),
                });
            }
            _ => {}
        }
        features
            .check(*feature)
            .map_err(|reason| SpawnError::MissingFeature { feature: *feature, reason })?;
    }
    let mut degradations = Vec::new();

    let env_path = policy
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let program_path = resolve_program(&command.program, &env_path)?;
    let program = cstring(program_path.as_os_str(), "the program path")?;
    let mut argv = vec![cstring(&command.program, "argv[0]")?];
    for arg in &command.args {
        argv.push(cstring(arg, "an argument")?);
    }
    let mut env: Vec<(OsString, OsString)> =
        policy.env.iter().filter(|(k, _)| k != "DROVER_TRANSPORT_FD").cloned().collect();
    if command.transport.is_some() {
        env.push(("DROVER_TRANSPORT_FD".into(), "3".into()));
    }
    let mut envp = Vec::with_capacity(env.len());
    for (key, value) in &env {
        let mut pair = key.clone();
        pair.push("=");
        pair.push(value);
        envp.push(cstring(&pair, "an environment variable")?);
    }
    if !command.work_dir.is_dir() {
        return Err(SpawnError::WorkDir { path: command.work_dir.clone() });
    }
    let work_dir = cstring(command.work_dir.as_os_str(), "the work directory")?;

    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let id_maps = IdMaps {
        uid_map: format!("{uid} {uid} 1\n").into_bytes(),
        gid_map: format!("{gid} {gid} 1\n").into_bytes(),
    };
    let rlimits = rlimits(policy);

    degradations.extend(feature_degradations(policy, features));
    let landlock = match &features.landlock {
        Ok(abi) => {
            Some(fs_rules::build(*abi, &landlock_rules(policy, &command.work_dir), policy.network)?)
        }
        Err(_) => None,
    };
    let compiled = seccomp::compile(&policy.seccomp, policy.network, features.seccomp_notify)?;
    let mut filters = Vec::with_capacity(compiled.programs.len());
    for (program, flags) in compiled.programs {
        let len = program.len();
        let instructions = program
            .iter()
            .map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k })
            .collect();
        let filter = SeccompFilter::new(instructions, flags)
            .ok_or(SpawnError::Seccomp(SeccompError::TooLong { len }))?;
        filters.push(filter);
    }

    let limits = CgroupLimits {
        memory_bytes: policy.limits.memory_bytes,
        pids: policy.limits.pids,
        cpu_millicores: policy.limits.cpu_millicores,
    };
    let available = command.memory_cgroup.as_ref().map(MemoryParent::controllers);
    let missing: Vec<Controller> = limits
        .controllers()
        .into_iter()
        .filter(|c| !available.as_ref().is_some_and(|a| a.contains(c)))
        .collect();
    if missing.contains(&Controller::Memory) {
        degradations.push(Degradation::NoMemoryCgroup);
    }
    let others: Vec<Controller> =
        missing.into_iter().filter(|c| *c != Controller::Memory).collect();
    if !others.is_empty() {
        degradations.push(Degradation::NoCgroup { controllers: others });
    }
    let leaf = match &command.memory_cgroup {
        Some(parent) if !limits.controllers().is_empty() => Some(parent.leaf(&limits)?),
        _ => None,
    };
    let namespaces = policy.namespaces && !NAMESPACES_REFUSED.load(Ordering::Relaxed);
    if policy.namespaces && !namespaces {
        if policy.require.contains(&Feature::PrivateTree) {
            return Err(SpawnError::MissingFeature {
                feature: Feature::PrivateTree,
                reason: "namespaces were refused earlier in this process".into(),
            });
        }
        degradations
            .push(Degradation::NoNamespaces { reason: "refused earlier in this process".into() });
        degradations.push(Degradation::NoPrivateTree);
    }
    let tree_refused = namespaces && PRIVATE_TREE_REFUSED.load(Ordering::Relaxed);
    if tree_refused {
        if policy.require.contains(&Feature::PrivateTree) {
            return Err(SpawnError::MissingFeature {
                feature: Feature::PrivateTree,
                reason: "building the private tree was refused earlier in this process".into(),
            });
        }
        degradations.push(Degradation::NoPrivateTree);
    }
    let tree = if namespaces && !tree_refused {
        crate::tree::plan(policy, &command.work_dir, features.landlock_abi())?
    } else {
        crate::tree::Plan { steps: Vec::new(), landlock: Vec::new() }
    };
    Ok(Prepared {
        program,
        argv: CStringArray::new(argv),
        envp: CStringArray::new(envp),
        work_dir,
        id_maps,
        last_cap: last_cap(),
        rlimits,
        landlock,
        filters,
        tree,
        enforcement: compiled.enforcement,
        namespaces,
        network: policy.network,
        require_namespaces: policy.require.contains(&Feature::Namespaces)
            || policy.require.contains(&Feature::PrivateTree),
        require_private_tree: policy.require.contains(&Feature::PrivateTree),
        wall_clock: policy.limits.wall_clock,
        transport: command.transport,
        stdio: command.stdio,
        leaf,
        memory_bytes: policy.limits.memory_bytes,
        degradations,
    })
}

/// The degradations `policy` suffers on this kernel, as far as known without spawning
/// (namespaces are known by trying; see [`expected_degradations`]).
fn feature_degradations(policy: &Policy, features: &Features) -> Vec<Degradation> {
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

fn cstring(s: &OsStr, what: &'static str) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul { what })
}

fn resolve_program(program: &OsStr, path: &OsStr) -> Result<PathBuf, SpawnError> {
    let executable =
        |p: &Path| p.is_file() && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok();
    let given = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        let absolute = std::path::absolute(given).unwrap_or_else(|_| given.to_path_buf());
        return if executable(&absolute) {
            Ok(absolute)
        } else {
            Err(SpawnError::ProgramNotFound {
                program: program.to_owned(),
                searched: absolute.display().to_string(),
            })
        };
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(given))
        .find(|candidate| candidate.is_absolute() && executable(candidate))
        .ok_or_else(|| SpawnError::ProgramNotFound {
            program: program.to_owned(),
            searched: format!("PATH={}", path.to_string_lossy()),
        })
}

fn rlimits(policy: &Policy) -> Vec<(libc::c_int, libc::rlimit)> {
    use nix::sys::resource::{Resource, getrlimit};
    let limits = &policy.limits;
    let entries = [
        (Resource::RLIMIT_CORE, 0),
        (Resource::RLIMIT_NOFILE, limits.open_files),
        (Resource::RLIMIT_FSIZE, limits.file_size_bytes),
        (Resource::RLIMIT_CPU, limits.cpu_seconds),
    ];
    entries
        .into_iter()
        .map(|(resource, wanted)| {
            // An unprivileged process cannot raise its hard limit: never ask for more.
            let hard = getrlimit(resource).map(|(_, hard)| hard).unwrap_or(libc::RLIM_INFINITY);
            let value = wanted.min(hard);
            (resource as libc::c_int, libc::rlimit { rlim_cur: value, rlim_max: value })
        })
        .collect()
}

fn landlock_rules(policy: &Policy, work_dir: &Path) -> Vec<(PathBuf, Grant)> {
    // A path that does not exist grants nothing, so it is skipped (a device list can name
    // nodes only some machines have).
    let existing = |paths: &[PathBuf], grant| {
        paths.iter().filter(|p| p.exists()).map(move |p| (p.clone(), grant)).collect::<Vec<_>>()
    };
    let mut rules = existing(&policy.read, Grant::Read);
    rules.push((work_dir.to_path_buf(), Grant::Write));
    // Writes under /proc are for the driver's own procfs (see `tree`), never the host's.
    let write: Vec<PathBuf> =
        policy.write.iter().filter(|p| !p.starts_with("/proc")).cloned().collect();
    rules.extend(existing(&write, Grant::Write));
    for pattern in &policy.devices {
        rules.extend(expand_device(pattern).into_iter().map(|d| (d, Grant::Device)));
    }
    rules
}

/// `/dev/nvidia*` -> every existing `/dev/nvidia...`; a plain path -> itself if it exists.
pub fn expand_device(pattern: &Path) -> Vec<PathBuf> {
    let text = pattern.as_os_str().as_bytes();
    let Some(prefix) = text.strip_suffix(b"*") else {
        return if pattern.exists() { vec![pattern.to_path_buf()] } else { Vec::new() };
    };
    let prefix = Path::new(OsStr::from_bytes(prefix));
    let (Some(dir), Some(stem)) = (prefix.parent(), prefix.file_name()) else { return Vec::new() };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().as_bytes().starts_with(stem.as_bytes()))
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found
}

impl Prepared {
    /// Degradations known before the spawn.
    pub fn degradations(&self) -> &[Degradation] {
        &self.degradations
    }

    /// Clones and starts the driver. The returned handle must be waited for; dropping it
    /// kills and reaps the driver.
    ///
    /// When the child was refused its private tree (EPERM or EACCES while mounting it) and the
    /// policy does not require one, the driver is started again without it, once, and so is
    /// every later spawn of this process.
    pub fn spawn(mut self) -> Result<Sandboxed, SpawnError> {
        loop {
            match self.attempt() {
                Err(SpawnError::Child { step: ChildStep::MountTree, source })
                    if !self.tree.steps.is_empty()
                        && !self.require_private_tree
                        && matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
                {
                    PRIVATE_TREE_REFUSED.store(true, Ordering::Relaxed);
                    self.tree = crate::tree::Plan { steps: Vec::new(), landlock: Vec::new() };
                    self.degradations.push(Degradation::NoPrivateTree);
                }
                outcome => {
                    drop(self.transport.take());
                    drop(std::mem::take(&mut self.stdio));
                    return outcome;
                }
            }
        }
    }

    /// One clone and start. The transport and stdio stay ours until the caller is done, so a
    /// refused private tree can be retried with the same descriptors; on a failure in the
    /// child, the degradations and the cgroup leaf come back to `self` for that retry.
    fn attempt(&mut self) -> Result<Sandboxed, SpawnError> {
        let os = |what| move |source| SpawnError::Os { what, source };
        let (parent_end, child_end) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| SpawnError::Os { what: "socketpair", source: e.into() })?;

        let mut namespaces = if self.namespaces {
            NAMESPACE_FLAGS & !(if self.network { libc::CLONE_NEWNET as u64 } else { 0 })
        } else {
            0
        };
        // The init's report of the driver's wait status (with a pid namespace).
        let (status_read, status_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| SpawnError::Os { what: "pipe2", source: e.into() })?;
        let (pid, pidfd) = loop {
            let init = namespaces & libc::CLONE_NEWPID as u64 != 0;
            let plan = ChildPlan {
                program: &self.program,
                argv: &self.argv,
                envp: &self.envp,
                work_dir: &self.work_dir,
                id_maps: (namespaces != 0).then_some(&self.id_maps),
                cgroup_procs: self.leaf.as_ref().map(Leaf::procs).unwrap_or_default(),
                last_cap: self.last_cap,
                namespaces,
                report: child_end.as_fd(),
                transport: self.transport.as_ref().map(AsFd::as_fd),
                stdio: [0, 1, 2].map(|i| self.stdio[i].as_ref().map(AsFd::as_fd)),
                rlimits: &self.rlimits,
                landlock: self.landlock.as_ref().map(AsFd::as_fd),
                filters: &self.filters,
                mounts: if namespaces != 0 { &self.tree.steps } else { &[] },
                landlock_adds: if namespaces != 0 { &self.tree.landlock } else { &[] },
                init_status: init.then(|| status_write.as_fd()),
            };
            match drover_sys::clone::spawn(&plan) {
                Ok(spawned) => break spawned,
                Err(e)
                    if namespaces != 0
                        && matches!(
                            e.raw_os_error(),
                            Some(
                                libc::EPERM
                                    | libc::EINVAL
                                    | libc::ENOSPC
                                    | libc::EUSERS
                                    | libc::EACCES
                            )
                        ) =>
                {
                    if self.require_namespaces {
                        return Err(SpawnError::MissingFeature {
                            feature: Feature::Namespaces,
                            reason: format!("cloning into new namespaces failed: {e}"),
                        });
                    }
                    NAMESPACES_REFUSED.store(true, Ordering::Relaxed);
                    self.degradations.push(Degradation::NoNamespaces {
                        reason: format!("cloning into new namespaces failed: {e}"),
                    });
                    self.degradations.push(Degradation::NoPrivateTree);
                    namespaces = 0;
                }
                Err(e) => return Err(os("clone3")(e)),
            }
        };
        drop(child_end);
        drop(status_write);
        let pid_namespace = namespaces & libc::CLONE_NEWPID as u64 != 0;
        let mut sandboxed = Sandboxed {
            pid,
            pidfd,
            init_status: pid_namespace.then(|| std::fs::File::from(status_read)),
            listener: None,
            enforcement: self.enforcement,
            pid_namespace,
            started: Instant::now(),
            deadline: self.wall_clock,
            degradations: self.degradations.clone(),
            logged: BTreeMap::new(),
            verdict: None,
            reaped: false,
            leaf: self.leaf.take(),
            memory_bytes: self.memory_bytes,
        };
        // The child's copies are in place; ours are no longer needed.
        // One wake-up: the child's end closes when it executes (close-on-exec) or exits.
        wait_hangup(parent_end.as_fd()).map_err(os("poll"))?;
        loop {
            let mut buf = [0u8; 12];
            let (n, fd) = recv_report(parent_end.as_fd(), &mut buf).map_err(os("recvmsg"))?;
            let word = |i: usize| {
                let bytes: [u8; 4] = buf[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]);
                u32::from_ne_bytes(bytes)
            };
            match n {
                0 => return Ok(sandboxed),
                4 if word(0) == REPORT_LISTENER
                    && let Some(fd) = fd =>
                {
                    let listener =
                        Listener::new(fd).map_err(os("checking the seccomp listener"))?;
                    sandboxed.listener = Some(listener);
                }
                12 if word(0) == REPORT_FAILED => {
                    sandboxed.reap_now();
                    self.leaf = sandboxed.leaf.take();
                    let step = ChildStep::from_u32(word(1)).unwrap_or(ChildStep::Exec);
                    let source = std::io::Error::from_raw_os_error(word(2) as i32);
                    return Err(SpawnError::Child { step, source });
                }
                _ => {
                    sandboxed.reap_now();
                    return Err(SpawnError::Os {
                        what: "reading the child's report",
                        source: std::io::Error::other(format!("unexpected {n}-byte record")),
                    });
                }
            }
        }
    }
}

/// A running sandboxed driver. Wait for it with [`Sandboxed::wait`]; dropping it unwaited
/// kills and reaps it.
#[derive(Debug)]
pub struct Sandboxed {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    /// The sandbox init's report of the driver's wait status (with a pid namespace).
    init_status: Option<std::fs::File>,
    listener: Option<Listener>,
    enforcement: Enforcement,
    pid_namespace: bool,
    started: Instant,
    deadline: Option<Duration>,
    degradations: Vec<Degradation>,
    logged: BTreeMap<i64, u64>,
    verdict: Option<Cause>,
    reaped: bool,
    leaf: Option<Leaf>,
    memory_bytes: Option<u64>,
}

/// Why waiting failed.
#[derive(Debug, Error)]
#[error("waiting for the sandboxed process failed in {what}")]
pub struct WaitError {
    what: &'static str,
    #[source]
    source: std::io::Error,
}

impl Sandboxed {
    /// The driver's pid in the supervisor's pid namespace.
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Whether the driver runs in its own pid namespace, under the sandbox's init.
    pub fn in_pid_namespace(&self) -> bool {
        self.pid_namespace
    }

    /// Every degradation of this spawn.
    pub fn degradations(&self) -> &[Degradation] {
        &self.degradations
    }

    /// How refused system calls are handled.
    pub fn enforcement(&self) -> Enforcement {
        self.enforcement
    }

    /// A handle that can send SIGTERM to the driver from another thread while this one
    /// waits: the second-to-last rung of the stop ladder (close the transport, SIGTERM,
    /// SIGKILL). It holds its own pidfd, so it can never signal a recycled pid.
    pub fn terminator(&self) -> Result<Terminator, SpawnError> {
        let pidfd = self
            .pidfd
            .try_clone()
            .map_err(|source| SpawnError::Os { what: "duplicating the pidfd", source })?;
        Ok(Terminator { pidfd, pid: self.pid, pid_namespace: self.pid_namespace })
    }

    /// Kills the driver (and with it its pid namespace or process group); the death is
    /// reported as [`Cause::KilledBySupervisor`] with `reason`.
    pub fn kill(&mut self, reason: &str) {
        self.kill_with(Cause::KilledBySupervisor { reason: reason.to_owned() });
    }

    fn kill_with(&mut self, cause: Cause) {
        if self.verdict.is_none() {
            self.verdict = Some(cause);
        }
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        if !self.pid_namespace {
            let _ = sys::kill(-self.pid, libc::SIGKILL);
        }
    }

    /// Waits until the driver dies, serving the seccomp listener meanwhile (naming and killing
    /// on a violation, or logging and continuing in log mode) and enforcing the wall-clock
    /// deadline. When `stop` becomes readable the driver is killed as
    /// [`Cause::KilledBySupervisor`] (the caller drains `stop`).
    pub fn wait(&mut self, stop: Option<BorrowedFd<'_>>) -> Result<Death, WaitError> {
        let err = |what| move |source| WaitError { what, source };
        let mut stop = stop;
        loop {
            let mut fds = vec![self.pidfd.as_fd()];
            let listener_slot = self.listener.as_ref().map(|l| {
                fds.push(l.as_fd());
                fds.len() - 1
            });
            let stop_slot = stop.map(|s| {
                fds.push(s);
                fds.len() - 1
            });
            let timeout = match self.deadline {
                Some(deadline) if self.verdict.is_none() => {
                    let left = deadline.saturating_sub(self.started.elapsed());
                    i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(0)
                        + i32::from(left.subsec_nanos() % 1_000_000 != 0)
                }
                _ => -1,
            };
            let ready = sys::poll_readable(&fds, timeout).map_err(err("poll"))?;
            drop(fds);
            if ready[0] != 0 {
                let status =
                    sys::waitid_pidfd(self.pidfd.as_fd(), libc::WNOHANG).map_err(err("waitid"))?;
                if let Some(status) = status {
                    self.reaped = true;
                    // With the sandbox's init, the driver's own status says how it died.
                    let status = self.driver_status().unwrap_or(status);
                    if !self.pid_namespace {
                        let _ = sys::kill(-self.pid, libc::SIGKILL);
                    }
                    let cause = self.cause_of(status);
                    if let Some(leaf) = self.leaf.as_mut() {
                        leaf.remove();
                    }
                    return Ok(Death { cause, logged: crate::death::logged(&self.logged) });
                }
            }
            if let Some(slot) = listener_slot {
                if ready[slot] & libc::POLLIN != 0 {
                    self.serve_notification();
                } else if ready[slot] != 0 {
                    // Hang-up: no process is left under the filter.
                    self.listener = None;
                }
            }
            if let Some(slot) = stop_slot
                && ready[slot] != 0
            {
                self.kill("stop requested");
                stop = None;
            }
            if let Some(deadline) = self.deadline
                && self.verdict.is_none()
                && self.started.elapsed() >= deadline
            {
                self.kill_with(Cause::Deadline { after: deadline });
            }
        }
    }

    fn serve_notification(&mut self) {
        let Some(listener) = self.listener.as_ref() else { return };
        let notification = match notif_recv(listener) {
            Ok(n) => n,
            // ENOENT: the caller died before we read it; anything else ends listening.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return,
            Err(_) => {
                self.listener = None;
                return;
            }
        };
        let nr = i64::from(notification.nr);
        match self.enforcement {
            Enforcement::NotifyLog => {
                *self.logged.entry(nr).or_default() += 1;
                let _ = notif_continue(listener, notification.id);
            }
            _ => {
                let _ = notification.arch;
                self.kill_with(Cause::SeccompViolation {
                    nr,
                    name: seccomp::syscall_name(nr),
                    pid: notification.pid,
                });
            }
        }
    }

    /// The driver's wait status as its init reported it, if it did (an init killed by the
    /// supervisor, the OOM killer or the supervisor's own death reports nothing).
    fn driver_status(&mut self) -> Option<sys::ChildStatus> {
        use std::io::Read as _;
        let mut raw = [0u8; 4];
        self.init_status.as_mut()?.read_exact(&mut raw).ok()?;
        let raw = libc::c_int::from_ne_bytes(raw);
        Some(if libc::WIFEXITED(raw) {
            sys::ChildStatus { code: libc::CLD_EXITED, status: libc::WEXITSTATUS(raw) }
        } else {
            let code = if libc::WCOREDUMP(raw) { libc::CLD_DUMPED } else { libc::CLD_KILLED };
            sys::ChildStatus { code, status: libc::WTERMSIG(raw) }
        })
    }

    fn cause_of(&mut self, status: sys::ChildStatus) -> Cause {
        if let Some(verdict) = self.verdict.take() {
            return verdict;
        }
        if status.code != libc::CLD_EXITED
            && status.status == libc::SIGKILL
            && let (Some(leaf), Some(limit_bytes)) = (&self.leaf, self.memory_bytes)
            && leaf.oom_kills() > 0
        {
            return Cause::Oom { limit_bytes };
        }
        match status.code {
            libc::CLD_EXITED => Cause::Exited { code: status.status },
            _ if status.status == libc::SIGSYS => Cause::SeccompKill,
            code => {
                Cause::Signaled { signal: status.status, core_dumped: code == libc::CLD_DUMPED }
            }
        }
    }

    fn reap_now(&mut self) {
        if !self.reaped {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
            let _ = sys::waitid_pidfd(self.pidfd.as_fd(), 0);
            self.reaped = true;
        }
    }
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        if !self.pid_namespace && !self.reaped {
            let _ = sys::kill(-self.pid, libc::SIGKILL);
        }
        self.reap_now();
        if let Some(leaf) = self.leaf.as_mut() {
            leaf.remove();
        }
    }
}

/// Sends SIGTERM to a sandboxed driver; made by [`Sandboxed::terminator`].
///
/// In a pid namespace the signal goes to the sandbox's init, which forwards it to the driver.
/// Without a pid namespace the driver's whole process group gets the signal.
#[derive(Debug)]
pub struct Terminator {
    pidfd: OwnedFd,
    pid: libc::pid_t,
    pid_namespace: bool,
}

impl Terminator {
    /// Sends SIGTERM. A driver that has already exited is not an error.
    pub fn terminate(&self) {
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGTERM);
        if !self.pid_namespace {
            // Only while the leader is unreaped: the pidfd stays pollable until then, and a
            // reaped leader's group id may have been reused.
            if sys::waitid_pidfd(self.pidfd.as_fd(), libc::WNOHANG | libc::WNOWAIT).is_ok() {
                let _ = sys::kill(-self.pid, libc::SIGTERM);
            }
        }
    }
}

/// Kills and reaps every child of this process except `keep`: orphans re-parented to the
/// supervisor (it is a child subreaper, or PID 1) that escaped their driver's process group.
/// Returns how many were reaped.
pub fn reap_strays(keep: &[u32]) -> usize {
    let mut reaped = 0;
    for _ in 0..64 {
        let strays: Vec<libc::pid_t> = sys::list_children()
            .into_iter()
            .filter(|pid| !keep.contains(&pid.unsigned_abs()))
            .collect();
        if strays.is_empty() {
            break;
        }
        for pid in strays {
            let _ = sys::kill(pid, libc::SIGKILL);
            if sys::reap(pid, true).is_some() {
                reaped += 1;
            }
        }
    }
    reaped
}
