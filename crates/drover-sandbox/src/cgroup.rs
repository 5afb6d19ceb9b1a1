//! Memory cgroups: a memory limit per driver (never `RLIMIT_AS`, which breaks CUDA) and OOM
//! kills told apart from other SIGKILLs.
//!
//! Root-only preparation (Phase A's "root work", before the privilege drop):
//! [`MemoryParent::prepare_as_root`] creates one parent cgroup per supervisor uid,
//! `drover-<uid>`, at the top of the memory hierarchy, and gives it to that uid: cgroup v2 when
//! its root offers the `memory` controller (then `+memory` is enabled for the children), else
//! the cgroup v1 `memory` hierarchy. It is reused by later runs and left in place (it is empty
//! between runs).
//!
//! Per driver, the unprivileged supervisor creates a leaf `<pid>-<n>` under it, writes the
//! limit (`memory.max`, v1 `memory.limit_in_bytes`), and the child joins it before anything
//! else through a descriptor the parent opened. After the driver died, `oom_kill` in
//! `memory.events` (v1 `memory.oom_control`) says whether the kernel's OOM killer struck, and
//! the leaf is removed.
//!
//! Without a memory cgroup (non-root start without delegation, or no memory controller) a
//! policy's memory limit cannot be enforced: a logged degradation, or a spawn error when the
//! policy requires [`crate::Feature::MemoryCgroup`].

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

/// A parent cgroup in the memory hierarchy that belongs to the supervisor's uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryParent {
    dir: PathBuf,
    version: Version,
}

impl MemoryParent {
    /// As root: finds the memory hierarchy and creates (or reuses) `drover-<uid>` there,
    /// owned by `uid`:`gid`. `Ok(None)` when this kernel has no memory controller.
    pub fn prepare_as_root(uid: u32, gid: u32) -> Result<Option<MemoryParent>, CgroupError> {
        let Some((mount, version)) = memory_hierarchy() else { return Ok(None) };
        let dir = mount.join(format!("drover-{uid}"));
        if version == Version::V2 {
            write(&mount.join("cgroup.subtree_control"), "+memory")?;
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
            write(&dir.join("cgroup.subtree_control"), "+memory")?;
        }
        Ok(Some(MemoryParent { dir, version }))
    }

    /// The parent's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its interface.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Creates a leaf limited to `limit_bytes` and opens its `cgroup.procs` for the child.
    pub(crate) fn leaf(&self, limit_bytes: u64) -> Result<Leaf, CgroupError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
        let leaf = Leaf { dir, version: self.version, procs: None };
        let limit = match self.version {
            Version::V2 => leaf.dir.join("memory.max"),
            Version::V1 => leaf.dir.join("memory.limit_in_bytes"),
        };
        write(&limit, &limit_bytes.to_string())?;
        // No swap beyond the limit, so the limit is what the driver gets (best effort: the
        // files exist only with swap accounting).
        let _ = match self.version {
            Version::V2 => write(&leaf.dir.join("memory.swap.max"), "0"),
            Version::V1 => {
                write(&leaf.dir.join("memory.memsw.limit_in_bytes"), &limit_bytes.to_string())
            }
        };
        let procs_path = leaf.dir.join("cgroup.procs");
        let procs = File::options()
            .write(true)
            .open(&procs_path)
            .map_err(io_err("opening", &procs_path))?;
        Ok(Leaf { procs: Some(OwnedFd::from(procs)), ..leaf })
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err("writing", path))
}

/// The mount point of the hierarchy with the memory controller: v2 if its root offers
/// `memory`, else v1; `None` without a memory controller.
pub fn memory_hierarchy() -> Option<(PathBuf, Version)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut v1 = None;
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
                let controllers =
                    std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == "memory") {
                    return Some((mount, Version::V2));
                }
            }
            "cgroup" if options.split(',').any(|o| o == "memory") => v1 = Some(mount),
            _ => {}
        }
    }
    v1.map(|mount| (mount, Version::V1))
}

/// One driver's cgroup.
#[derive(Debug)]
pub(crate) struct Leaf {
    dir: PathBuf,
    version: Version,
    procs: Option<OwnedFd>,
}

impl Leaf {
    /// The open `cgroup.procs`, for the child to write `0` (itself) into.
    pub(crate) fn procs(&self) -> Option<&OwnedFd> {
        self.procs.as_ref()
    }

    /// How many processes the OOM killer killed in this cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Removes the (empty) cgroup, retrying briefly while the kernel finishes the exit.
    pub(crate) fn remove(&mut self) {
        self.procs = None;
        for _ in 0..50 {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                _ => return,
            }
        }
    }
}
