//! A driver's private work directory: created mode 0700 by the (dropped) uid that runs the
//! driver, so no other local user can read it or run what a driver planted there, and removed
//! completely when it is dropped, whatever the driver did to the modes inside.
//!
//! A driver owns everything in its work directory and may `chmod 000` any of it, which makes
//! an ordinary recursive removal fail half-way and leaves the tree behind. [`remove_tree`]
//! therefore gives each directory back its owner's `rwx` before it opens it, and it never
//! follows a symbolic link: directories are opened relative to their parent's descriptor with
//! `O_NOFOLLOW`, modes are changed with `AT_SYMLINK_NOFOLLOW`, and links themselves are
//! unlinked, so a link to the supervisor's store is removed, never what it points at. The walk
//! is iterative and holds at most three descriptors, so neither a deep tree nor a wide one can
//! exhaust the supervisor's stack or descriptors.
//!
//! Defaults: the directory is made under the caller's base directory (the supervisor's
//! `scratch_dir`, `drover exec`'s system temporary directory), named `<prefix><random>`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// A private work directory, removed (with everything in it) on drop.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates `<base>/<prefix><random>`, mode 0700, owned by this process's uid.
    pub fn create_in(base: &Path, prefix: &str) -> io::Result<WorkDir> {
        let path = tempfile::Builder::new().prefix(prefix).tempdir_in(base)?.keep();
        let dir = WorkDir { path };
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Nothing to report to: the only failure left is a directory someone else now owns.
        let _ = remove_tree(&self.path);
    }
}

/// Removes `path` and everything under it, restoring directory modes on the way and never
/// following a symbolic link (see the module documentation). A missing `path` is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::other("no directory name"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let top_parent = open_dir(AT_FDCWD, parent.as_os_str())?;
    let Some(mut current) = enter(&top_parent, name)? else { return Ok(()) };
    // Names from the top directory down to `current`.
    let mut below: Vec<OsString> = Vec::new();
    loop {
        match empty_but_one_directory(&current)? {
            Some(child) => {
                if let Some(next) = enter(&current, &child)? {
                    current = next;
                    below.push(child);
                }
            }
            None => match below.pop() {
                Some(child) => {
                    // `..` of a directory we opened without following links is its real
                    // parent (the driver is dead; nothing renames it meanwhile).
                    let parent = open_dir(&current, OsStr::new(".."))?;
                    remove_dir(&parent, &child)?;
                    current = parent;
                }
                None => return remove_dir(&top_parent, name),
            },
        }
    }
}

/// Unlinks every entry of `dir` that is not a directory; returns the first directory left.
fn empty_but_one_directory(dir: &OwnedFd) -> io::Result<Option<OsString>> {
    // A fresh open file description, so each pass reads from the start.
    let listing = Dir::from_fd(open_dir(dir, OsStr::new("."))?)?;
    for entry in listing {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            // Linux answers a directory with EISDIR.
            Err(Errno::EISDIR) => return Ok(Some(name.to_owned())),
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(None)
}

/// Gives the directory `name` in `parent` its owner's `rwx` and opens it, without following
/// a link; `None` when it is gone.
fn enter(parent: &OwnedFd, name: &OsStr) -> io::Result<Option<OwnedFd>> {
    match fchmodat(parent, name, Mode::S_IRWXU, FchmodatFlags::NoFollowSymlink) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(None),
        // A link (not a directory after all): unlinked, never followed.
        Err(Errno::EOPNOTSUPP) => {
            unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?;
            return Ok(None);
        }
        Err(errno) => return Err(errno.into()),
    }
    match open_dir(parent, name) {
        Ok(fd) => Ok(Some(fd)),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(error) => Err(error),
    }
}

fn open_dir(parent: impl std::os::fd::AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(openat(parent, name, flags, Mode::empty())?)
}

fn remove_dir(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_tree_with_closed_directories_is_removed_and_links_are_not_followed() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("store"), b"keep").unwrap();
        let work = WorkDir::create_in(base.path(), "w-").unwrap();
        let path = work.path().to_path_buf();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
        let mut deep = path.clone();
        for level in 0..300 {
            deep = deep.join(format!("d{level}"));
            std::fs::create_dir(&deep).unwrap();
            std::fs::write(deep.join("file"), b"x").unwrap();
        }
        symlink(&outside, path.join("d0/link")).unwrap();
        symlink(outside.join("store"), path.join("d0/d1/file-link")).unwrap();
        for (i, dir) in ["d0/d1/d2", "d0/d1", "d0"].iter().enumerate() {
            chmod(&path.join(dir), [0o000, 0o500, 0o100][i]);
        }
        drop(work);
        assert!(!path.exists(), "the work directory is left");
        assert_eq!(std::fs::read(outside.join("store")).unwrap(), b"keep");
        assert_eq!(std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn a_missing_tree_is_not_an_error() {
        let base = tempfile::tempdir().unwrap();
        remove_tree(&base.path().join("gone")).unwrap();
    }
}
