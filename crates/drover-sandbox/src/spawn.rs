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
//!    tree ([`tree`]); bounding set dropped
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
//! (`run_init` in `drover_sys::child`): every signal blocked and taken with `sigwaitinfo`,
//! SIGCHLD reaps every child, any other signal is forwarded to the driver, and when the driver dies its wait status
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

//!
//! The module is cut by phase: this file prepares (`prepare`, all allocation), [`tree`] plans
//! the private mount tree for it, `start` clones and starts ([`Prepared::spawn`]), `wait`
//! waits and stops ([`Sandboxed`], [`Terminator`], [`reap_strays`]), and `degradation` names
//! what a spawn gives up ([`Degradation`]).

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use drover_sys::child::{CStringArray, IdMaps};
use drover_sys::seccomp::SeccompFilter;
use thiserror::Error;

use crate::cgroup::{CgroupError, CgroupLimits, Controller, Leaf, MemoryParent};
use crate::features::Features;
use crate::fs_rules::{self, Grant, LandlockError};
use crate::policy::{Feature, Policy};
use crate::privilege::{Dropped, last_cap};
use crate::seccomp::{self, Enforcement, SeccompError};

mod degradation;
mod start;
pub mod tree;
mod wait;

use degradation::feature_degradations;
pub use degradation::{Degradation, expected_degradations};
pub use drover_sys::child::ChildStep;
pub use wait::{Sandboxed, Terminator, WaitError, reap_strays};

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
    tree: tree::Plan,
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
        tree::plan(policy, &command.work_dir, features.landlock_abi())?
    } else {
        tree::Plan { steps: Vec::new(), landlock: Vec::new() }
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
