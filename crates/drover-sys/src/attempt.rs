//! The escape attempts of drover-sandbox's probe (`drover sandbox probe --try ...`): calls a
//! sandboxed driver must be refused, each reporting only its errno.
//!
//! Each is sound for any argument: none writes memory of ours except live locals, none closes
//! or takes over a descriptor it does not own, a clone passes namespace flags only
//! ([`crate::clone::probe_clone`]), a fork happens only in a single-threaded process, and a
//! raw system call with all-zero arguments is made only for calls on [`ZERO_ARGS_ALLOWED`].

use std::io;
use std::os::fd::RawFd;

use libc::{c_long, c_ulong, c_void};

use crate::{check, check_int, invalid};

/// The system calls [`syscall_zero_args`] makes: privileged or escape-prone calls a sandbox
/// must refuse, whose all-zero form writes no memory and closes no descriptor of the caller
/// (unlike, say, `close`, `munmap`, `clone` or `rt_sigreturn`, which could).
pub const ZERO_ARGS_ALLOWED: &[c_long] = &[
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_ptrace,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_syslog,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_quotactl,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_io_uring_setup,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_getfd,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_vhangup,
];

/// `ptrace(PTRACE_ATTACH, pid)`; detaches again if it worked.
pub fn ptrace_attach(pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: PTRACE_ATTACH takes a pid and null addr/data; it touches no memory of ours.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            pid,
            std::ptr::null_mut::<c_void>(),
            std::ptr::null_mut::<c_void>(),
        )
    };
    check(ret)?;
    // SAFETY: as above, for PTRACE_DETACH.
    unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            pid,
            std::ptr::null_mut::<c_void>(),
            std::ptr::null_mut::<c_void>(),
        )
    };
    Ok(())
}

/// The raw system call `nr` with all-zero arguments; `EINVAL` without calling anything when
/// `nr` is not on [`ZERO_ARGS_ALLOWED`].
pub fn syscall_zero_args(nr: c_long) -> io::Result<c_long> {
    if !ZERO_ARGS_ALLOWED.contains(&nr) {
        return Err(invalid());
    }
    // SAFETY: `nr` is on ZERO_ARGS_ALLOWED, calls whose all-zero form passes no memory (null
    // pointers are refused with EFAULT or mean "none") and closes no descriptor.
    check(unsafe { libc::syscall(nr, 0usize, 0usize, 0usize, 0usize, 0usize, 0usize) })
}

/// `unshare(flags)`.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes one integer and touches no memory of ours.
    check_int(unsafe { libc::unshare(flags) }).map(drop)
}

/// `prctl(PR_SET_PDEATHSIG, 0)`.
pub fn clear_parent_death_signal() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes one integer and touches no memory of ours.
    check_int(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0 as c_ulong, 0, 0, 0) }).map(drop)
}

/// Turns `ECHO` off on the terminal at `fd` (`tcgetattr`, then `TCSETS` through
/// `tcsetattr`). `fd` is only used, never owned: a number that is no terminal is an error.
pub fn echo_off(fd: RawFd) -> io::Result<()> {
    // SAFETY: termios is plain data for which all-zero is a valid value.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes one termios through the pointer, a live local; `fd` is only
    // used, not owned or closed.
    check_int(unsafe { libc::tcgetattr(fd, &mut termios) })?;
    termios.c_lflag &= !libc::ECHO;
    // SAFETY: tcsetattr reads one termios from a live local.
    check_int(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) }).map(drop)
}

/// `ioctl(fd, TIOCSWINSZ, rows x cols)`. `fd` is only used, never owned.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from a live local; `fd` is only used.
    check_int(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size as *const libc::winsize) }).map(drop)
}

/// `fork()`; the child runs `child(arg)` (which must not return) instead of returning, and the
/// parent drops its copy of `arg`. `EINVAL` without forking when this process has more than
/// one thread ([`crate::process::is_single_threaded`]).
pub fn fork_then<T>(child: fn(T) -> !, arg: T) -> io::Result<libc::pid_t> {
    if !crate::process::is_single_threaded() {
        return Err(invalid());
    }
    // SAFETY: the process has one thread (checked above; only that thread could start
    // another), so no lock is held in the child and it may run ordinary code; the child never
    // returns into the caller.
    let pid = check_int(unsafe { libc::fork() })?;
    if pid == 0 {
        child(arg);
    }
    drop(arg);
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_calls_are_made_with_zero_args() {
        for refused in [libc::SYS_close, libc::SYS_munmap, libc::SYS_clone, libc::SYS_rt_sigreturn]
        {
            let err = syscall_zero_args(refused).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{refused}");
        }
        // unshare(0) unshares nothing and succeeds.
        assert_eq!(syscall_zero_args(libc::SYS_unshare).unwrap(), 0);
    }

    #[test]
    fn no_fork_with_a_second_thread() {
        fn never(_: ()) -> ! {
            // SAFETY: exits the child at once.
            unsafe { libc::_exit(0) }
        }
        let (stop, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || wait.recv());
        let err = fork_then(never, ()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        stop.send(()).unwrap();
        thread.join().unwrap().unwrap();
    }
}
