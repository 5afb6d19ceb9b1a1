//! Taking over a descriptor this process inherited: a driver's transport socket, which the
//! supervisor's spawn places at fd 3 (`DROVER_TRANSPORT_FD`). Turning a descriptor number into
//! an owned descriptor is `unsafe` in Rust; it lives here, behind checks.
//!
//! [`adopt_socket`] takes a descriptor only if it is above 2 (0, 1 and 2 belong to stdio), is
//! open, is a socket (its `/proc/self/fd` link reads `socket:[inode]`), and has not been
//! adopted by this process before (a process-wide set under a lock).

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};

use thiserror::Error;

/// Descriptors adopted so far by this process.
static ADOPTED: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Why a descriptor was not adopted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AdoptError {
    /// 0, 1 and 2 are stdio, owned by the standard library.
    #[error("descriptor {fd} is stdio, not an inherited socket")]
    Stdio {
        /// The descriptor.
        fd: RawFd,
    },
    /// The descriptor is closed or is not a socket.
    #[error("descriptor {fd} is {what}, not a socket")]
    NotASocket {
        /// The descriptor.
        fd: RawFd,
        /// What it is instead: `closed`, or its `/proc/self/fd` link.
        what: String,
    },
    /// This process adopted the descriptor before.
    #[error("descriptor {fd} was already adopted by this process")]
    AlreadyAdopted {
        /// The descriptor.
        fd: RawFd,
    },
}

/// Takes ownership of the inherited socket at `fd`; see the [module docs](self).
pub fn adopt_socket(fd: RawFd) -> Result<OwnedFd, AdoptError> {
    if fd <= 2 {
        return Err(AdoptError::Stdio { fd });
    }
    let what = match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        Ok(target) => target.to_string_lossy().into_owned(),
        Err(_) => "closed".to_owned(),
    };
    if !what.starts_with("socket:") {
        return Err(AdoptError::NotASocket { fd, what });
    }
    let mut adopted = ADOPTED.lock();
    if !adopted.insert(fd) {
        return Err(AdoptError::AlreadyAdopted { fd });
    }
    // SAFETY: `fd` is open and is a socket (checked just above through /proc/self/fd), and this
    // process has not adopted it before (the set above, held under its lock). The descriptor
    // was inherited from the parent and no `OwnedFd`, `File` or stream in this process was
    // made from it, so the returned `OwnedFd` is its only owner and closing it on drop is
    // correct.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd as _, IntoRawFd as _};

    use super::*;

    #[test]
    fn only_open_sockets_above_stdio_and_only_once() {
        assert_eq!(adopt_socket(1).unwrap_err(), AdoptError::Stdio { fd: 1 });
        let file = tempfile::tempfile().unwrap();
        let err = adopt_socket(file.as_raw_fd()).unwrap_err();
        assert!(matches!(err, AdoptError::NotASocket { .. }), "{err}");
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        // As if inherited: nothing in this process owns the number any more.
        let fd = theirs.into_raw_fd();
        let owned = adopt_socket(fd).unwrap();
        assert_eq!(adopt_socket(fd).unwrap_err(), AdoptError::AlreadyAdopted { fd });
        let mut stream = std::os::unix::net::UnixStream::from(owned);
        std::io::Write::write_all(&mut stream, b"x").unwrap();
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut &ours, &mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }
}
