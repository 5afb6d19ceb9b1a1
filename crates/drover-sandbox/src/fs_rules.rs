//! Builds the Landlock ruleset of a spawn, in the parent, with the `landlock` crate. The child
//! only calls `landlock_restrict_self` on the resulting fd.
//!
//! Rules, for the kernel's ABI:
//! - every access right the ABI knows is handled (denied unless a rule allows it);
//! - `read` paths: read files, list directories, execute;
//! - the work directory and `write` paths: every filesystem right;
//! - `devices`: read, write and (ABI >= 5) `ioctl` on the device files;
//! - with the network off and ABI >= 4: TCP bind and connect are handled with no rule (denied);
//! - ABI >= 6: signals and abstract unix sockets are scoped to the sandbox, so a driver cannot
//!   signal or connect to the supervisor even as the same uid (ptrace is always scoped).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};
use thiserror::Error;

/// Why the Landlock ruleset could not be built.
#[derive(Debug, Error)]
pub enum LandlockError {
    /// The ruleset could not be created or a rule added.
    #[error("building the Landlock ruleset failed")]
    Ruleset(#[source] landlock::RulesetError),
    /// A path could not be opened for a rule.
    #[error("cannot open {path} for a Landlock rule")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel returned no ruleset fd.
    #[error("the kernel did not return a Landlock ruleset")]
    NoFd,
}

/// One path and what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grant {
    Read,
    Write,
    Device,
}

/// Builds the ruleset for `rules` under `abi`; `network` false also denies TCP.
pub(crate) fn build(
    abi: u32,
    rules: &[(PathBuf, Grant)],
    network: bool,
) -> Result<OwnedFd, LandlockError> {
    let abi = ABI::from(i32::try_from(abi).unwrap_or(i32::MAX));
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(LandlockError::Ruleset)?;
    if !network {
        ruleset =
            ruleset.handle_access(AccessNet::from_all(abi)).map_err(LandlockError::Ruleset)?;
    }
    ruleset = ruleset.scope(Scope::from_all(abi)).map_err(LandlockError::Ruleset)?;
    let mut created = ruleset.create().map_err(LandlockError::Ruleset)?;
    for (path, grant) in rules {
        let fd = PathFd::new(path).map_err(|e| LandlockError::Open {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut access = match grant {
            Grant::Read => AccessFs::from_read(abi),
            Grant::Write => AccessFs::from_all(abi),
            Grant::Device => {
                let mut a: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::WriteFile;
                if abi >= ABI::V5 {
                    a |= AccessFs::IoctlDev;
                }
                a
            }
        };
        if !is_dir(path) {
            access &= AccessFs::ReadFile
                | AccessFs::WriteFile
                | AccessFs::Execute
                | AccessFs::Truncate
                | AccessFs::IoctlDev;
        }
        created = created.add_rule(PathBeneath::new(fd, access)).map_err(LandlockError::Ruleset)?;
    }
    Option::<OwnedFd>::from(created).ok_or(LandlockError::NoFd)
}

/// The raw Landlock access bits of `grant` under `abi`, for a rule the child adds itself (on a
/// filesystem that exists only in its private tree).
pub(crate) fn access_bits(abi: u32, grant: Grant, dir: bool) -> u64 {
    let abi = ABI::from(i32::try_from(abi).unwrap_or(i32::MAX));
    let mut access = match grant {
        Grant::Read => AccessFs::from_read(abi),
        Grant::Write => AccessFs::from_all(abi),
        Grant::Device => AccessFs::ReadFile | AccessFs::WriteFile,
    };
    if !dir {
        access &= AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Execute | AccessFs::Truncate;
    }
    access.bits()
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false)
}
