//! Per-driver cgroups: a memory limit (never `RLIMIT_AS`, which breaks CUDA) with OOM kills
//! told apart from other SIGKILLs, a pids limit (processes and threads of one driver together,
//! where `RLIMIT_NPROC` counts every process of the shared uid), and a CPU quota, so one
//! driver cannot starve the others or the supervisor.
//!
//! Root-only preparation (Phase A's "root work", before the privilege drop):
//! [`MemoryParent::prepare_as_root`] creates one parent cgroup per supervisor uid,
//! `drover-<uid>`, in each hierarchy drover uses, and gives it to that uid: cgroup v2 when its
//! root offers the `memory` controller (then `+memory +pids +cpu`, whichever it offers, are
//! enabled for the children), else each cgroup v1 hierarchy holding `memory`, `pids`, `cpu`
//! or `cpuacct`. They are reused by later runs and left in place (empty between runs).
//!
//! Per driver, the unprivileged supervisor creates a leaf `<pid>-<n>` in each, writes the
//! limits (`memory.max`/`memory.limit_in_bytes`, `pids.max`, `cpu.max`/`cpu.cfs_quota_us`
//! over a [`CPU_PERIOD_US`] period), and the child joins every leaf before anything else
//! through descriptors the parent opened. After the driver died, `oom_kill` in
//! `memory.events` (v1 `memory.oom_control`) says whether the kernel's OOM killer struck, and
//! the leaves are removed.
//!
//! Without a hierarchy for a limit (non-root start, or a controller missing) the limit cannot
//! be enforced: a logged degradation ([`crate::Degradation::NoCgroup`]), or a spawn error when
//! the policy requires [`crate::Feature::MemoryCgroup`]; `drover serve` refuses to start then
//! unless `supervisor.accept_risks` lists `unenforced_limits`.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// Which cgroup interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The unified hierarchy.
    V2,
    /// The v1 `memory` hierarchy.
    V1,
}

/// Why a memory cgroup could not be set up.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// A cgroup file operation failed.
    #[error("cgroup: {what} {path} failed")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { what, path: path.to_path_buf(), source }
}

/// Most cgroup hierarchies a driver joins: memory, pids, cpu and cpuacct on cgroup v1 with
/// each controller mounted on its own (one on v2).
pub const MAX_HIERARCHIES: usize = 4;

/// A resource controller drover puts each driver under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    /// `limits.memory_bytes`, and OOM kills told apart.
    Memory,
    /// `limits.pids`: processes and threads of the driver together.
    Pids,
    /// `limits.cpu_millicores`: a CFS quota.
    Cpu,
    /// CPU usage accounting (v1 `cpuacct`; part of `cpu` on v2).
    CpuAcct,
}

impl Controller {
    /// Every controller.
    pub const ALL: [Controller; 4] =
        [Controller::Memory, Controller::Pids, Controller::Cpu, Controller::CpuAcct];

    /// The controller's name in `/proc/self/mountinfo` and `cgroup.controllers`.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::CpuAcct => "cpuacct",
        }
    }
}

/// The cgroup limits of one driver (see [`crate::policy::Limits`] for their defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `memory.max` / `memory.limit_in_bytes`.
    pub memory_bytes: Option<u64>,
    /// `pids.max`.
    pub pids: Option<u32>,
    /// CPU quota in thousandths of a core, over a 100 ms period.
    pub cpu_millicores: Option<u32>,
}

impl CgroupLimits {
    /// The controllers these limits need (accounting always comes along where it exists).
    pub fn controllers(&self) -> Vec<Controller> {
        let mut needed = Vec::new();
        if self.memory_bytes.is_some() {
            needed.push(Controller::Memory);
        }
        if self.pids.is_some() {
            needed.push(Controller::Pids);
        }
        if self.cpu_millicores.is_some() {
            needed.push(Controller::Cpu);
        }
        needed
    }
}

/// CFS period drover uses, in microseconds (100 ms, the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The parent cgroups, one per hierarchy, that belong to the supervisor's uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryParent {
    version: Version,
    /// Each hierarchy's `drover-<uid>` directory with the controllers mounted there.
    dirs: Vec<(PathBuf, Vec<Controller>)>,
}

impl MemoryParent {
    /// As root: finds the hierarchies of the memory, pids, cpu and cpuacct controllers and
    /// creates (or reuses) `drover-<uid>` in each, owned by `uid`:`gid`. `Ok(None)` when this
    /// kernel has none of them.
    pub fn prepare_as_root(uid: u32, gid: u32) -> Result<Option<MemoryParent>, CgroupError> {
        let hierarchies = hierarchies();
        let Some(version) = hierarchies.first().map(|h| h.1) else { return Ok(None) };
        let mut dirs = Vec::new();
        for (mount, version, controllers) in hierarchies {
            let dir = mount.join(format!("drover-{uid}"));
            let enable: String = controllers
                .iter()
                .filter(|c| **c != Controller::CpuAcct)
                .map(|c| format!("+{} ", c.name()))
                .collect();
            if version == Version::V2 {
                write(&mount.join("cgroup.subtree_control"), enable.trim_end())?;
            }
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("creating", &dir)(e)),
            }
            let owned: &[&str] = match version {
                Version::V2 => &["", "cgroup.procs", "cgroup.subtree_control"],
                Version::V1 => &["", "cgroup.procs", "tasks"],
            };
            for name in owned {
                let path = if name.is_empty() { dir.clone() } else { dir.join(name) };
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(io_err("chown", &path))?;
            }
            if version == Version::V2 {
                write(&dir.join("cgroup.subtree_control"), enable.trim_end())?;
            }
            dirs.push((dir, controllers));
        }
        Ok(Some(MemoryParent { version, dirs }))
    }

    /// The memory hierarchy's parent directory (the first hierarchy's without one).
    pub fn dir(&self) -> &Path {
        self.dirs
            .iter()
            .find(|(_, c)| c.contains(&Controller::Memory))
            .or(self.dirs.first())
            .map_or(Path::new("/"), |(dir, _)| dir.as_path())
    }

    /// The parent directory in the hierarchy of `controller`, if there is one.
    pub fn dir_of(&self, controller: Controller) -> Option<&Path> {
        self.dirs.iter().find(|(_, c)| c.contains(&controller)).map(|(dir, _)| dir.as_path())
    }

    /// Its interface.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The controllers available under it.
    pub fn controllers(&self) -> Vec<Controller> {
        let mut all: Vec<Controller> = self.dirs.iter().flat_map(|(_, c)| c.clone()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// Creates a leaf with `limits` in every hierarchy and opens each `cgroup.procs` for the
    /// child.
    pub(crate) fn leaf(&self, limits: &CgroupLimits) -> Result<Leaf, CgroupError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut leaf =
            Leaf { dirs: Vec::new(), memory: None, version: self.version, procs: Vec::new() };
        // A name free in every hierarchy: the pid alone is not unique (every `drover exec`
        // started as PID 1 of a container is pid 1), and a leaf whose processes outlived their
        // sandbox stays until they die.
        let mut attempts = 0;
        let name = loop {
            let name = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let mut made = Vec::new();
            let mut taken = false;
            for (parent, _) in &self.dirs {
                let dir = parent.join(&name);
                match std::fs::create_dir(&dir) {
                    Ok(()) => made.push(dir),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 64 => {
                        taken = true;
                        break;
                    }
                    Err(e) => {
                        made.iter().for_each(|d| drop(std::fs::remove_dir(d)));
                        return Err(io_err("creating", &dir)(e));
                    }
                }
            }
            if !taken {
                leaf.dirs = made;
                break name;
            }
            made.iter().for_each(|d| drop(std::fs::remove_dir(d)));
            attempts += 1;
        };
        for (parent, controllers) in &self.dirs {
            let dir = parent.join(&name);
            if controllers.contains(&Controller::Memory) {
                leaf.memory = Some(dir.clone());
            }
            let has = |c| controllers.contains(&c);
            if let (Some(bytes), true) = (limits.memory_bytes, has(Controller::Memory)) {
                self.limit_memory(&dir, bytes)?;
            }
            if let (Some(pids), true) = (limits.pids, has(Controller::Pids)) {
                write(&dir.join("pids.max"), &pids.to_string())?;
            }
            if let (Some(millicores), true) = (limits.cpu_millicores, has(Controller::Cpu)) {
                let quota = u64::from(millicores) * CPU_PERIOD_US / 1000;
                match self.version {
                    Version::V2 => {
                        write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?
                    }
                    Version::V1 => {
                        write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                }
            }
            let procs_path = dir.join("cgroup.procs");
            let procs = File::options()
                .write(true)
                .open(&procs_path)
                .map_err(io_err("opening", &procs_path))?;
            leaf.procs.push(OwnedFd::from(procs));
        }
        Ok(leaf)
    }

    fn limit_memory(&self, dir: &Path, limit_bytes: u64) -> Result<(), CgroupError> {
        let limit = match self.version {
            Version::V2 => dir.join("memory.max"),
            Version::V1 => dir.join("memory.limit_in_bytes"),
        };
        write(&limit, &limit_bytes.to_string())?;
        // No swap beyond the limit, so the limit is what the driver gets (best effort: the
        // files exist only with swap accounting).
        let _ = match self.version {
            Version::V2 => write(&dir.join("memory.swap.max"), "0"),
            Version::V1 => {
                write(&dir.join("memory.memsw.limit_in_bytes"), &limit_bytes.to_string())
            }
        };
        Ok(())
    }
}

/// The hierarchies drover uses: the v2 root when it offers `memory` (all controllers it
/// offers), else each v1 hierarchy holding one of [`Controller::ALL`], with what it holds.
pub fn hierarchies() -> Vec<(PathBuf, Version, Vec<Controller>)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v1: Vec<(PathBuf, Version, Vec<Controller>)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mut fields = right.split_whitespace();
        let (Some(fstype), _source, Some(options)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some(mount) = left.split_whitespace().nth(4).map(PathBuf::from) else { continue };
        match fstype {
            "cgroup2" => {
                let offered =
                    std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
                let offered: Vec<&str> = offered.split_whitespace().collect();
                if offered.contains(&"memory") {
                    let mut controllers: Vec<Controller> = Controller::ALL
                        .into_iter()
                        .filter(|c| offered.contains(&c.name()))
                        .collect();
                    if controllers.contains(&Controller::Cpu) {
                        controllers.push(Controller::CpuAcct);
                    }
                    return vec![(mount, Version::V2, controllers)];
                }
            }
            "cgroup" => {
                let held: Vec<Controller> = Controller::ALL
                    .into_iter()
                    .filter(|c| options.split(',').any(|o| o == c.name()))
                    .collect();
                if !held.is_empty() && !v1.iter().any(|(m, _, _)| *m == mount) {
                    v1.push((mount, Version::V1, held));
                }
            }
            _ => {}
        }
    }
    // The memory hierarchy first: [`MemoryParent::dir`] and older callers expect it.
    v1.sort_by_key(|(_, _, held)| !held.contains(&Controller::Memory));
    v1
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err("writing", path))
}

/// The mount point of the hierarchy with the memory controller: v2 if its root offers
/// `memory`, else v1; `None` without a memory controller.
pub fn memory_hierarchy() -> Option<(PathBuf, Version)> {
    hierarchies()
        .into_iter()
        .find(|(_, _, held)| held.contains(&Controller::Memory))
        .map(|(mount, version, _)| (mount, version))
}

/// One driver's cgroups, one per hierarchy.
#[derive(Debug)]
pub(crate) struct Leaf {
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    version: Version,
    procs: Vec<OwnedFd>,
}

impl Leaf {
    /// The open `cgroup.procs` files, for the child to write `0` (itself) into.
    pub(crate) fn procs(&self) -> &[OwnedFd] {
        &self.procs
    }

    /// How many processes the OOM killer killed in this cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Removes the (empty) cgroups, retrying briefly while the kernel finishes the exit.
    pub(crate) fn remove(&mut self) {
        self.procs.clear();
        for dir in &self.dirs {
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    _ => break,
                }
            }
        }
    }
}
