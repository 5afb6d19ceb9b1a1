//! The private mount tree as the child builds it: a list of [`MountStep`]s, every path already
//! a C string (prepared by drover-sandbox's `tree`), walked without allocating; and the
//! Landlock rules ([`LandlockAdd`]) the child adds for the tree's own filesystems.
//!
//! Both run only in the child of [`crate::clone::spawn`], which builds the tree only in a new
//! mount and user namespace (it refuses a plan with mounts otherwise).

use std::ffi::CString;
use std::io;
use std::mem::size_of;

use libc::{c_char, c_int, c_uint, c_ulong};

use crate::nr;

/// `mount_setattr` flag: the whole subtree.
const AT_RECURSIVE: c_uint = 0x8000;
/// `landlock_add_rule` rule type.
const LANDLOCK_RULE_PATH_BENEATH: c_int = 1;

/// One step of building the private mount tree.
#[derive(Debug)]
pub enum MountStep {
    /// `mkdir(path, 0755)`; an existing directory is fine.
    Mkdir {
        /// The directory.
        path: CString,
    },
    /// An empty file to bind a file onto.
    Touch {
        /// The file.
        path: CString,
    },
    /// `symlink(target, path)`.
    Symlink {
        /// What the link points to.
        target: CString,
        /// The link.
        path: CString,
    },
    /// `mount(2)`; `optional`: a missing target (`ENOENT`) is skipped.
    Mount {
        /// The source, if any.
        source: Option<CString>,
        /// The mount point.
        target: CString,
        /// The filesystem type, if any.
        fstype: Option<CString>,
        /// `MS_*` flags.
        flags: c_ulong,
        /// Filesystem options, if any.
        data: Option<CString>,
        /// Whether a missing target is skipped.
        optional: bool,
    },
    /// `mount_setattr(path, attr)` (`MOUNT_ATTR_*` set), recursively or not; kernels before
    /// 5.12 get a bind remount of the top mount instead.
    Harden {
        /// The mount.
        path: CString,
        /// `MOUNT_ATTR_*` bits to set.
        attr: u64,
        /// Whether the whole subtree.
        recursive: bool,
    },
    /// `pivot_root(new_root, put_old)`, then `chdir("/")`.
    PivotRoot {
        /// The new root.
        new_root: CString,
        /// Where the old root goes.
        put_old: CString,
    },
    /// `chdir(new_root)`, `pivot_root(".", ".")`, the old root detached, `chdir("/")`.
    EnterRoot {
        /// The new root.
        new_root: CString,
    },
}

/// A Landlock rule the child adds for a filesystem of its private tree.
#[derive(Debug)]
pub struct LandlockAdd {
    /// The directory, as the child sees it.
    pub path: CString,
    /// `LANDLOCK_ACCESS_FS_*` bits.
    pub access: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_opt(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// Builds the private mount tree; `Err(())` leaves errno set.
///
/// # Safety
/// Only from the child, in its own mount namespace with `CAP_SYS_ADMIN` there.
pub(crate) unsafe fn build_tree(steps: &[MountStep]) -> Result<(), ()> {
    let ok = |ret: c_int| if ret == 0 { Ok(()) } else { Err(()) };
    let errno = || io::Error::last_os_error().raw_os_error();
    // SAFETY: every pointer is a NUL-terminated string the plan owns, or null where the call
    // accepts null; the structs passed are live locals of the kernel's layout.
    unsafe {
        for step in steps {
            match step {
                MountStep::Mkdir { path } => {
                    if libc::mkdir(path.as_ptr(), 0o755) != 0 && errno() != Some(libc::EEXIST) {
                        return Err(());
                    }
                }
                MountStep::Touch { path } => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                        0o644 as c_uint,
                    );
                    if fd < 0 {
                        return Err(());
                    }
                    libc::close(fd);
                }
                MountStep::Symlink { target, path } => {
                    ok(libc::symlink(target.as_ptr(), path.as_ptr()))?;
                }
                MountStep::Mount { source, target, fstype, flags, data, optional } => {
                    let ret = libc::mount(
                        c_opt(source),
                        target.as_ptr(),
                        c_opt(fstype),
                        *flags,
                        c_opt(data).cast(),
                    );
                    if ret != 0 && !(*optional && errno() == Some(libc::ENOENT)) {
                        return Err(());
                    }
                }
                MountStep::Harden { path, attr, recursive } => {
                    let attr =
                        MountAttr { attr_set: *attr, attr_clr: 0, propagation: 0, userns_fd: 0 };
                    let ret = libc::syscall(
                        nr::MOUNT_SETATTR,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        if *recursive { AT_RECURSIVE } else { 0 },
                        &attr as *const MountAttr,
                        size_of::<MountAttr>(),
                    );
                    if ret != 0 {
                        if errno() != Some(libc::ENOSYS) {
                            return Err(());
                        }
                        let mut flags = libc::MS_BIND | libc::MS_REMOUNT;
                        for (bit, flag) in [
                            (1, libc::MS_RDONLY),
                            (2, libc::MS_NOSUID),
                            (4, libc::MS_NODEV),
                            (8, libc::MS_NOEXEC),
                        ] {
                            if attr.attr_set & bit != 0 {
                                flags |= flag;
                            }
                        }
                        ok(libc::mount(
                            std::ptr::null(),
                            path.as_ptr(),
                            std::ptr::null(),
                            flags,
                            std::ptr::null(),
                        ))?;
                    }
                }
                MountStep::PivotRoot { new_root, put_old } => {
                    ok(libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr())
                        as c_int)?;
                    ok(libc::chdir(c"/".as_ptr()))?;
                }
                MountStep::EnterRoot { new_root } => {
                    ok(libc::chdir(new_root.as_ptr()))?;
                    ok(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as c_int)?;
                    ok(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                    ok(libc::chdir(c"/".as_ptr()))?;
                }
            }
        }
    }
    Ok(())
}

/// Adds `rules` to the Landlock ruleset `ruleset`; `Err(())` leaves errno set.
///
/// # Safety
/// Only from the child, before `landlock_restrict_self`.
pub(crate) unsafe fn add_landlock_rules(ruleset: c_int, rules: &[LandlockAdd]) -> Result<(), ()> {
    // SAFETY: each path is NUL-terminated and owned by the plan; the attribute is a live local
    // of the kernel's packed layout; the fd opened here is closed here.
    unsafe {
        for rule in rules {
            let fd = libc::open(rule.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(());
            }
            let attr = PathBeneathAttr { allowed_access: rule.access, parent_fd: fd };
            let ret = libc::syscall(
                nr::LANDLOCK_ADD_RULE,
                ruleset,
                LANDLOCK_RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0 as c_uint,
            );
            libc::close(fd);
            if ret != 0 {
                return Err(());
            }
        }
    }
    Ok(())
}
