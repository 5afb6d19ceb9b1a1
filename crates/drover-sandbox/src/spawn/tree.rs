//! The private mount tree of a driver (issue 13, item 1): planned here, in the parent, as a list
//! of `MountStep`s with every path already a C string; the child
//! (`drover_sys::mount`) only walks the list.
//!
//! In the child's new user and mount namespaces, after the id maps and before any capability is
//! dropped, the plan does what bubblewrap does:
//!
//! ```text
//!  1. / made recursively private (nothing propagates back to the host)
//!  2. a staging tmpfs on /tmp, with newroot/ (another tmpfs, the future /) and oldroot/
//!  3. pivot_root(/tmp, /tmp/oldroot): the host's tree is now /oldroot
//!  4. each `read` path: bind /oldroot/P -> /newroot/P, then read-only, nosuid, nodev
//!     (recursively, mount_setattr); a symbolic link (merged /usr: /bin -> usr/bin) is
//!     recreated as a link instead
//!  5. each `write` path outside /dev: bind, nosuid, nodev (writable)
//!  6. the work directory: a fresh tmpfs at the same path, mode 0700, nosuid, nodev, limited
//!     to `limits.work_dir_bytes` and `limits.work_dir_inodes`
//!  7. /dev: a small tmpfs (nosuid, noexec) holding only the device nodes the profile names
//!     (bound from the host; nodev is not set on them, so they work), the links fd, stdin,
//!     stdout and stderr into /proc/self/fd, then made read-only
//!  8. /proc: a procfs of the driver's own pid namespace (nosuid, nodev, noexec), with
//!     /proc/sys read-only, the files in `MASKED_PROC_FILES` covered by /dev/null and the
//!     directories in `MASKED_PROC_DIRS` by an empty read-only tmpfs
//!  9. pivot_root into /newroot, the old root detached (MNT_DETACH), / made read-only
//! ```
//!
//! Nothing of the host is in the tree but what the profile names, so a host UNIX socket (in
//! /tmp, /run, ...) cannot be reached unless a profile grants its path. Paths under /proc in a
//! profile are served by the driver's own procfs, not bound from the host's; a `write` path
//! under /proc makes that procfs writable where its modes allow (the GPU profile's: CUDA names
//! its threads through `/proc/self/task/<tid>/comm`), while /proc/sys stays a read-only mount.
//! The host's /proc is never granted for writing, with or without the tree.
//!
//! Landlock stays as the second layer: its rules were opened on the host's inodes, which the
//! binds keep; the two new filesystems (the work tmpfs and the procfs) are added to the ruleset
//! by the child (`LandlockAdd`) before it restricts itself.
//!
//! Defaults: `work_dir_bytes` 256 MiB, `work_dir_inodes` 16384 (see [`crate::policy`]).

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::{SpawnError, expand_device};
use crate::fs_rules::{self, Grant};
use crate::policy::Policy;
pub(crate) use drover_sys::mount::{LandlockAdd, MountStep};

/// Files of a fresh procfs that still describe the host (kernel symbols, keys, the kernel
/// command line, ...), covered by /dev/null.
pub const MASKED_PROC_FILES: [&str; 14] = [
    "cmdline",
    "kallsyms",
    "keys",
    "key-users",
    "kcore",
    "sysrq-trigger",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "config.gz",
    "vmallocinfo",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
];

/// Directories of a fresh procfs covered by an empty read-only tmpfs (as the OCI runtime
/// spec's default masked paths).
pub const MASKED_PROC_DIRS: [&str; 6] = ["acpi", "asound", "bus", "fs", "irq", "scsi"];

const STAGE: &str = "/tmp";
const NEWROOT: &str = "/newroot";
const OLDROOT: &str = "/oldroot";

/// A planned tree: the steps, and the Landlock rules the child adds for its new filesystems.
#[derive(Debug)]
pub(crate) struct Plan {
    pub steps: Vec<MountStep>,
    pub landlock: Vec<LandlockAdd>,
}

/// Plans the tree for `policy` with the work directory `work_dir`; `landlock_abi` 0: none.
pub(crate) fn plan(
    policy: &Policy,
    work_dir: &Path,
    landlock_abi: u32,
) -> Result<Plan, SpawnError> {
    let mut b = Builder::default();
    b.mount(None::<&str>, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None, false)?;
    let stage = Path::new(STAGE);
    b.mount(
        Some("tmpfs"),
        stage,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755,size=1m,nr_inodes=64"),
        false,
    )?;
    b.mkdir(&stage.join("newroot"))?;
    b.mkdir(&stage.join("oldroot"))?;
    b.mount(
        Some("tmpfs"),
        &stage.join("newroot"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755,size=1m,nr_inodes=4096"),
        false,
    )?;
    b.steps.push(MountStep::PivotRoot {
        new_root: c(stage.as_os_str())?,
        put_old: c(stage.join("oldroot").as_os_str())?,
    });

    let mut read: Vec<&PathBuf> =
        policy.read.iter().filter(|p| !under(p, "/proc") && !under(p, "/dev")).collect();
    read.sort();
    let mut write: Vec<&PathBuf> =
        policy.write.iter().filter(|p| !under(p, "/proc") && !under(p, "/dev")).collect();
    write.sort();
    let mut bound: Vec<&Path> = Vec::new();
    for path in read.iter().chain(&write) {
        let Ok(meta) = std::fs::symlink_metadata(path) else { continue };
        let target = new(path);
        // Inside a tree already bound: a read grant is there already (Landlock still has its
        // rule); a write grant is bound over the existing node.
        let covered = bound.iter().any(|b| path.starts_with(b));
        let read_only = !write.contains(path);
        if covered && read_only {
            continue;
        }
        bound.push(path);
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(path).map_err(|source| SpawnError::Os {
                what: "reading a symbolic link for the private tree",
                source,
            })?;
            b.ancestors(&target)?;
            b.steps.push(MountStep::Symlink {
                target: c(link.as_os_str())?,
                path: c(target.as_os_str())?,
            });
            continue;
        }
        if !covered {
            b.node(&target, meta.is_dir())?;
        }
        b.mount(
            Some(old(path).as_os_str()),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
            false,
        )?;
        let attr =
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | if read_only { MOUNT_ATTR_RDONLY } else { 0 };
        b.steps.push(MountStep::Harden { path: c(target.as_os_str())?, attr, recursive: true });
    }

    // The work directory: a private tmpfs.
    let work = new(work_dir);
    b.node(&work, true)?;
    let options = format!(
        "mode=0700,size={},nr_inodes={}",
        policy.limits.work_dir_bytes, policy.limits.work_dir_inodes
    );
    b.mount(
        Some("tmpfs"),
        &work,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&options),
        false,
    )?;

    // /dev: only the granted nodes.
    let dev = new(Path::new("/dev"));
    b.node(&dev, true)?;
    b.mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=64k,nr_inodes=256"),
        false,
    )?;
    let mut nodes: Vec<(PathBuf, bool)> = Vec::new();
    for pattern in &policy.devices {
        nodes.extend(expand_device(pattern).into_iter().map(|p| (p, true)));
    }
    for path in policy.read.iter().filter(|p| under(p, "/dev")) {
        nodes.push((path.clone(), false));
    }
    for path in policy.write.iter().filter(|p| under(p, "/dev")) {
        nodes.push((path.clone(), true));
    }
    nodes.sort();
    nodes.dedup_by(|later, kept| {
        // The same node named twice: writable wins.
        let same = later.0 == kept.0;
        if same {
            kept.1 |= later.1;
        }
        same
    });
    for (path, writable) in &nodes {
        let Ok(meta) = std::fs::metadata(path) else { continue };
        let target = new(path);
        b.node(&target, meta.is_dir())?;
        b.mount(
            Some(old(path).as_os_str()),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
            false,
        )?;
        let attr =
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC | if *writable { 0 } else { MOUNT_ATTR_RDONLY };
        b.steps.push(MountStep::Harden { path: c(target.as_os_str())?, attr, recursive: true });
    }
    for (name, link) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        b.steps.push(MountStep::Symlink {
            target: c(OsStr::new(link))?,
            path: c(dev.join(name).as_os_str())?,
        });
    }
    b.steps.push(MountStep::Harden {
        path: c(dev.as_os_str())?,
        attr: MOUNT_ATTR_RDONLY,
        recursive: false,
    });

    // /proc: the driver's own, masked.
    let proc = new(Path::new("/proc"));
    b.node(&proc, true)?;
    b.mount(
        Some("proc"),
        &proc,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
        false,
    )?;
    let sys = proc.join("sys");
    b.mount(Some(sys.as_os_str()), &sys, None, libc::MS_BIND | libc::MS_REC, None, false)?;
    b.steps.push(MountStep::Harden {
        path: c(sys.as_os_str())?,
        attr: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        recursive: true,
    });
    let null = old(Path::new("/dev/null"));
    for file in MASKED_PROC_FILES {
        b.mount(Some(null.as_os_str()), &proc.join(file), None, libc::MS_BIND, None, true)?;
    }
    for dir in MASKED_PROC_DIRS {
        b.mount(
            Some("tmpfs"),
            &proc.join(dir),
            Some("tmpfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("size=0,nr_inodes=1"),
            true,
        )?;
    }

    b.steps.push(MountStep::EnterRoot { new_root: c(OsStr::new(NEWROOT))? });
    b.steps.push(MountStep::Harden {
        path: c(OsStr::new("/"))?,
        attr: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        recursive: false,
    });

    let mut landlock = Vec::new();
    if landlock_abi > 0 {
        landlock.push(LandlockAdd {
            path: c(work_dir.as_os_str())?,
            access: fs_rules::access_bits(landlock_abi, Grant::Write, true),
        });
        // A `write` path under /proc makes the driver's own procfs writable where its modes
        // allow (CUDA and glibc name threads through /proc/self/task/<tid>/comm); /proc/sys
        // stays a read-only mount, and the host's /proc is never granted for writing.
        let proc_write = policy.write.iter().any(|p| under(p, "/proc"));
        if proc_write || policy.read.iter().any(|p| under(p, "/proc")) {
            let grant = if proc_write { Grant::Write } else { Grant::Read };
            landlock.push(LandlockAdd {
                path: c(OsStr::new("/proc"))?,
                access: fs_rules::access_bits(landlock_abi, grant, true),
            });
        }
    }
    Ok(Plan { steps: b.steps, landlock })
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

#[derive(Default)]
struct Builder {
    steps: Vec<MountStep>,
    made: Vec<PathBuf>,
}

impl Builder {
    /// `mkdir` of every missing ancestor of `path` (below /newroot), once per plan.
    fn ancestors(&mut self, path: &Path) -> Result<(), SpawnError> {
        let mut so_far = PathBuf::new();
        let components: Vec<Component<'_>> = path.components().collect();
        for component in &components[..components.len().saturating_sub(1)] {
            so_far.push(component);
            if so_far.as_os_str().len() > NEWROOT.len() && !self.made.contains(&so_far) {
                self.made.push(so_far.clone());
                self.steps.push(MountStep::Mkdir { path: c(so_far.as_os_str())? });
            }
        }
        Ok(())
    }

    /// The mount point for a directory or a file at `path`.
    fn node(&mut self, path: &Path, dir: bool) -> Result<(), SpawnError> {
        self.ancestors(path)?;
        if self.made.iter().any(|p| p == path) {
            return Ok(());
        }
        self.made.push(path.to_path_buf());
        self.steps.push(if dir {
            MountStep::Mkdir { path: c(path.as_os_str())? }
        } else {
            MountStep::Touch { path: c(path.as_os_str())? }
        });
        Ok(())
    }

    fn mkdir(&mut self, path: &Path) -> Result<(), SpawnError> {
        self.steps.push(MountStep::Mkdir { path: c(path.as_os_str())? });
        Ok(())
    }

    fn mount(
        &mut self,
        source: Option<impl AsRef<OsStr>>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
        optional: bool,
    ) -> Result<(), SpawnError> {
        self.steps.push(MountStep::Mount {
            source: source.map(|s| c(s.as_ref())).transpose()?,
            target: c(target.as_os_str())?,
            fstype: fstype.map(|s| c(OsStr::new(s))).transpose()?,
            flags,
            data: data.map(|s| c(OsStr::new(s))).transpose()?,
            optional,
        });
        Ok(())
    }
}

/// `path` in the new root while it is being built.
fn new(path: &Path) -> PathBuf {
    Path::new(NEWROOT).join(path.strip_prefix("/").unwrap_or(path))
}

/// `path` in the host's tree while the new root is being built.
fn old(path: &Path) -> PathBuf {
    Path::new(OLDROOT).join(path.strip_prefix("/").unwrap_or(path))
}

fn under(path: &Path, top: &str) -> bool {
    path.starts_with(top)
}

fn c(s: &OsStr) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul { what: "a path of the private tree" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_binds_only_what_the_profile_names_and_pivots_twice() {
        let policy = Policy {
            read: vec!["/usr".into(), "/proc".into(), "/dev/urandom".into()],
            write: vec!["/dev/null".into()],
            ..Policy::default()
        };
        let plan = plan(&policy, Path::new("/tmp/work"), 6).unwrap();
        let binds: Vec<String> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                MountStep::Mount { source: Some(src), target, flags, .. }
                    if flags & libc::MS_BIND != 0 =>
                {
                    Some(format!("{} -> {}", src.to_string_lossy(), target.to_string_lossy()))
                }
                _ => None,
            })
            .collect();
        assert!(binds.contains(&"/oldroot/usr -> /newroot/usr".to_owned()), "{binds:?}");
        assert!(binds.contains(&"/oldroot/dev/null -> /newroot/dev/null".to_owned()));
        assert!(binds.contains(&"/oldroot/dev/urandom -> /newroot/dev/urandom".to_owned()));
        assert!(!binds.iter().any(|b| b.starts_with("/oldroot/proc")), "{binds:?}");
        assert!(binds.contains(&"/oldroot/dev/null -> /newroot/proc/kallsyms".to_owned()));
        let pivots = plan
            .steps
            .iter()
            .filter(|s| matches!(s, MountStep::PivotRoot { .. } | MountStep::EnterRoot { .. }));
        assert_eq!(pivots.count(), 2);
        // The work tmpfs carries the limits.
        assert!(plan.steps.iter().any(|s| matches!(s,
            MountStep::Mount { target, data: Some(d), .. }
                if target.as_bytes() == b"/newroot/tmp/work"
                    && d.as_bytes() == b"mode=0700,size=268435456,nr_inodes=16384")));
        assert_eq!(plan.landlock.len(), 2);
    }
}
