//! The parent's side of the child's report socket (a `SOCK_SEQPACKET` pair): the child sends
//! one record per event, and its end closes on `execve` (close-on-exec), so end of file means
//! the program runs.
//!
//! Records: `[REPORT_LISTENER]` with the seccomp listener passed as `SCM_RIGHTS`, and
//! `[REPORT_FAILED, step, errno]` (three native-endian `u32`s) before the child exits 127.

use std::io;
use std::mem::size_of_val;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libc::{c_int, c_long};

use crate::{check, check_int};

/// The record that carries the seccomp listener.
pub const REPORT_LISTENER: u32 = 1;
/// A failed step: `[REPORT_FAILED, step, errno]`.
pub const REPORT_FAILED: u32 = 2;

/// Blocks until the peer of `sock` has closed its end (hang-up), without waking for data: the
/// child's records queue up and are read afterwards, so the parent wakes once per spawn.
pub fn wait_hangup(sock: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
        // SAFETY: one initialised pollfd on the stack; the fd is borrowed and stays open.
        let ret = unsafe { libc::poll(&mut pfd, 1, -1) };
        match check_int(ret) {
            Ok(_) if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 => {
                return Ok(());
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives one record from the child's report socket: its bytes and an fd passed with it.
pub fn recv_report(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut cmsg = [0u64; 4];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cmsg) as _;
    let n = loop {
        // SAFETY: msg points at a live iovec over `buf` and a live, aligned control buffer of
        // the stated length; MSG_CMSG_CLOEXEC makes any received fd close-on-exec.
        let ret = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match check(ret as c_long) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let mut received = None;
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control buffer the kernel just filled, within
    // msg_controllen; each SCM_RIGHTS header carries at least one int, read unaligned. A
    // received descriptor is new in this process (the kernel installed it), so nothing else
    // owns it.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<c_int>());
                if fd >= 0 && received.is_none() {
                    received = Some(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    Ok((n, received))
}
