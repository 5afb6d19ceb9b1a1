//! Seccomp filters as the child installs them, and the user-notification listener the parent
//! serves.
//!
//! A [`SeccompFilter`] owns its program, so the `struct sock_fprog` the child passes to the
//! kernel is built on the child's stack from a slice that lives as long as the plan. A
//! [`Listener`] is a descriptor checked to be a seccomp notification listener, so the
//! `ioctl`s on it read and write exactly the structs their request numbers encode.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use libc::{c_int, c_uint, c_ulong};

use crate::{check_int, invalid};

/// Filter flag: log every action except `RET_ALLOW`.
pub const SECCOMP_FILTER_FLAG_LOG: c_uint = 2;
/// Filter flag: return a user-notification listener fd.
pub const SECCOMP_FILTER_FLAG_NEW_LISTENER: c_uint = 8;
/// The filter return value that defers the decision to the listener.
pub const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// `SECCOMP_IOCTL_NOTIF_RECV`: `_IOWR('!', 0, struct seccomp_notif)` (80 bytes).
const SECCOMP_IOCTL_NOTIF_RECV: c_ulong = 0xc050_2100;
/// `SECCOMP_IOCTL_NOTIF_SEND`: `_IOWR('!', 1, struct seccomp_notif_resp)` (24 bytes).
const SECCOMP_IOCTL_NOTIF_SEND: c_ulong = 0xc018_2101;
/// Response flag: let the notified system call run.
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;

/// One seccomp filter to install: its classic-BPF program and `SECCOMP_FILTER_FLAG_*` flags.
pub struct SeccompFilter {
    program: Vec<libc::sock_filter>,
    flags: c_uint,
}

impl SeccompFilter {
    /// A filter of `program` with `flags`; `None` when the program is empty or longer than a
    /// `struct sock_fprog` can say (65535 instructions).
    pub fn new(program: Vec<libc::sock_filter>, flags: c_uint) -> Option<Self> {
        if program.is_empty() || u16::try_from(program.len()).is_err() {
            return None;
        }
        Some(Self { program, flags })
    }

    /// The `struct sock_fprog` for the kernel, pointing into `self`.
    pub(crate) fn fprog(&self) -> libc::sock_fprog {
        libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr().cast_mut(),
        }
    }

    /// The flags.
    pub(crate) fn flags(&self) -> c_uint {
        self.flags
    }
}

impl fmt::Debug for SeccompFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeccompFilter")
            .field("instructions", &self.program.len())
            .field("flags", &self.flags)
            .finish()
    }
}

/// A seccomp user-notification listener: a descriptor whose `/proc/self/fd` link reads
/// `anon_inode:seccomp notify`.
#[derive(Debug)]
pub struct Listener(OwnedFd);

impl Listener {
    /// Takes `fd` as a listener; `EINVAL` when it is not one.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if link.as_os_str() != "anon_inode:seccomp notify" {
            return Err(invalid());
        }
        Ok(Self(fd))
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A pending seccomp user notification: which thread asked for which system call.
#[derive(Clone, Copy, Debug)]
pub struct Notification {
    /// Cookie for the response.
    pub id: u64,
    /// The thread, in the listener's pid namespace.
    pub pid: u32,
    /// The system call number.
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the call.
    pub arch: u32,
}

#[repr(C)]
#[derive(Default)]
struct SeccompData {
    nr: c_int,
    arch: u32,
    instruction_pointer: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct SeccompNotif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
struct SeccompNotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// Receives one notification from `listener`.
pub fn notif_recv(listener: &Listener) -> io::Result<Notification> {
    // The kernel requires the buffer to be zeroed.
    let mut notif = SeccompNotif::default();
    // SAFETY: `listener` is a seccomp listener (checked when it was made), for which the ioctl
    // writes one `struct seccomp_notif` (80 bytes, the size encoded in the request number)
    // through the pointer, which points to a live local of exactly that layout.
    let ret = unsafe {
        libc::ioctl(
            listener.0.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_RECV,
            &mut notif as *mut SeccompNotif,
        )
    };
    check_int(ret)?;
    Ok(Notification { id: notif.id, pid: notif.pid, nr: notif.data.nr, arch: notif.data.arch })
}

/// Lets the notified system call `id` run (log mode).
pub fn notif_continue(listener: &Listener, id: u64) -> io::Result<()> {
    let resp = SeccompNotifResp { id, val: 0, error: 0, flags: SECCOMP_USER_NOTIF_FLAG_CONTINUE };
    // SAFETY: `listener` is a seccomp listener (checked when it was made), for which the ioctl
    // reads one `struct seccomp_notif_resp` (24 bytes, the size encoded in the request number)
    // from a live local of exactly that layout.
    let ret = unsafe {
        libc::ioctl(
            listener.0.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_SEND,
            &resp as *const SeccompNotifResp,
        )
    };
    check_int(ret).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_fits_a_sock_fprog() {
        let insn = libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0x7fff_0000 };
        assert!(SeccompFilter::new(Vec::new(), 0).is_none());
        assert!(SeccompFilter::new(vec![insn; 65_536], 0).is_none());
        let filter = SeccompFilter::new(vec![insn; 65_535], SECCOMP_FILTER_FLAG_LOG).unwrap();
        assert_eq!(filter.fprog().len, 65_535);
        assert_eq!(filter.flags(), SECCOMP_FILTER_FLAG_LOG);
    }

    #[test]
    fn only_a_seccomp_listener_is_a_listener() {
        let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = Listener::new(socket.into()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        let file = tempfile::tempfile().unwrap();
        assert_eq!(Listener::new(file.into()).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }
}
