//! What a process can see of its own confinement, and escape attempts that must fail inside the
//! sandbox. `drover sandbox probe` prints these as JSON; the sandbox's tests run it as a driver
//! and assert exact values, as youki's runtimetest does.
//!
//! Attempts ([`Attempt`], parsed from the strings below) report only whether the call
//! succeeded and its errno, never data they read, so a secret that leaked would still not be
//! printed.
//!
//! | Attempt | Call |
//! |---|---|
//! | `setuid0` | `setuid(0)` |
//! | `environ:PID` | read `/proc/PID/environ` |
//! | `signal:PID` | `kill(PID, SIGTERM)` |
//! | `ptrace:PID` | `ptrace(PTRACE_ATTACH, PID)` |
//! | `socket-inet` | `socket(AF_INET, SOCK_STREAM)` |
//! | `connect:IP:PORT` | TCP connect, 1 s timeout |
//! | `write:PATH` | create and write `PATH` |
//! | `syscall:NAME` | the raw system call `NAME` with all-zero arguments (only the calls of `drover_sys::attempt::ZERO_ARGS_ALLOWED`, whose zero form writes no memory of the probe; any other is `EINVAL`) |
//! | `userns` | `unshare(CLONE_NEWUSER)` |
//! | `fork-sleep` | fork a child that sleeps; report both host pids (only from a single-threaded probe; otherwise `EINVAL`) |
//! | `alloc:MIB` | allocate and touch MIB mebibytes |
//! | `clone-ns` | `clone(CLONE_NEWUSER \| CLONE_NEWNET)` (a child that exits at once) |
//! | `pdeathsig` | `prctl(PR_SET_PDEATHSIG, 0)` |
//! | `tty-echo:FD` | turn `ECHO` off on the terminal at FD (`TCSETS`) |
//! | `tty-winsize:FD` | set the terminal at FD to 1x1 (`TIOCSWINSZ`) |
//! | `unix:PATH` | `connect()` to the UNIX socket at PATH |

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::privilege::status_field;
use crate::seccomp::syscall_number;
use drover_sys::attempt;

/// What the probe reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// `/proc/self/status` fields: Uid, Gid, Groups, CapInh, CapPrm, CapEff, CapBnd, CapAmb,
    /// NoNewPrivs, Seccomp, Seccomp_filters (missing ones are absent).
    pub status: Vec<(&'static str, String)>,
    /// Open file descriptors (without the one used to list them).
    pub fds: Vec<i32>,
    /// The environment.
    pub env: Vec<(String, String)>,
    /// The pid as this process sees it.
    pub pid: u32,
    /// The pid in the pid namespace of the mounted `/proc`, if readable.
    pub proc_pid: Option<u32>,
}

/// The `/proc/self/status` keys [`Facts::status`] carries.
pub const STATUS_KEYS: [&str; 11] = [
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
];

/// Collects [`Facts`].
pub fn facts() -> std::io::Result<Facts> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    let status = STATUS_KEYS
        .iter()
        .filter_map(|key| {
            status_field(&text, key)
                .map(|v| (*key, v.split_whitespace().collect::<Vec<_>>().join(" ")))
        })
        .collect();
    Ok(Facts {
        status,
        fds: open_fds()?,
        env: std::env::vars_os()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
            .collect(),
        pid: std::process::id(),
        proc_pid: proc_self_pid(),
    })
}

fn proc_self_pid() -> Option<u32> {
    std::fs::read_link("/proc/self").ok()?.to_str()?.parse().ok()
}

fn open_fds() -> std::io::Result<Vec<i32>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // The directory being listed is itself an open fd, pointing at /proc/<pid>/fd.
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target.starts_with("/proc") && target.ends_with("fd") {
            continue;
        }
        fds.push(fd);
    }
    fds.sort_unstable();
    Ok(fds)
}

/// An escape attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// `setuid(0)`.
    SetuidRoot,
    /// Read `/proc/PID/environ`.
    ReadEnviron(i32),
    /// `kill(PID, SIGTERM)`.
    Signal(i32),
    /// `ptrace(PTRACE_ATTACH, PID)`.
    Ptrace(i32),
    /// `socket(AF_INET, SOCK_STREAM)`.
    SocketInet,
    /// TCP connect.
    Connect(SocketAddr),
    /// Create and write a file.
    Write(PathBuf),
    /// A raw system call by name.
    Syscall(String),
    /// `unshare(CLONE_NEWUSER)`.
    UserNamespace,
    /// Fork a sleeping child.
    ForkSleep,
    /// Allocate and touch this many MiB.
    Alloc(usize),
    /// `clone(CLONE_NEWUSER | CLONE_NEWNET)`.
    CloneNamespaces,
    /// `prctl(PR_SET_PDEATHSIG, 0)`.
    ClearParentDeathSignal,
    /// Echo off on the terminal at this fd.
    TtyEcho(i32),
    /// Window size 1x1 on the terminal at this fd.
    TtyWinsize(i32),
    /// Connect to a UNIX socket.
    UnixConnect(PathBuf),
}

impl FromStr for Attempt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let pid = || arg.parse::<i32>().map_err(|_| format!("{kind} needs a pid, got {arg:?}"));
        let fd =
            |arg: &str| arg.parse::<i32>().map_err(|_| format!("{kind} needs an fd, got {arg:?}"));
        Ok(match kind {
            "setuid0" => Attempt::SetuidRoot,
            "environ" => Attempt::ReadEnviron(pid()?),
            "signal" => Attempt::Signal(pid()?),
            "ptrace" => Attempt::Ptrace(pid()?),
            "socket-inet" => Attempt::SocketInet,
            "connect" => Attempt::Connect(
                arg.parse().map_err(|_| format!("connect needs IP:PORT, got {arg:?}"))?,
            ),
            "write" if !arg.is_empty() => Attempt::Write(arg.into()),
            "syscall" if syscall_number(arg).is_some() => Attempt::Syscall(arg.to_owned()),
            "userns" => Attempt::UserNamespace,
            "fork-sleep" => Attempt::ForkSleep,
            "alloc" => {
                Attempt::Alloc(arg.parse().map_err(|_| format!("alloc needs MiB, got {arg:?}"))?)
            }
            "clone-ns" => Attempt::CloneNamespaces,
            "pdeathsig" => Attempt::ClearParentDeathSignal,
            "tty-echo" => Attempt::TtyEcho(fd(arg)?),
            "tty-winsize" => Attempt::TtyWinsize(fd(arg)?),
            "unix" if !arg.is_empty() => Attempt::UnixConnect(arg.into()),
            _ => return Err(format!("unknown attempt {s:?}")),
        })
    }
}

/// What an attempt did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the call succeeded (an escape, for every attempt but `fork-sleep`).
    pub succeeded: bool,
    /// The errno name when it failed (`EPERM`, ...).
    pub errno: Option<String>,
    /// Extra facts that are not data read from elsewhere (byte counts, pids).
    pub detail: Option<String>,
}

fn outcome<T>(result: std::io::Result<T>, detail: impl FnOnce(&T) -> Option<String>) -> Outcome {
    match result {
        Ok(value) => Outcome { succeeded: true, errno: None, detail: detail(&value) },
        Err(e) => Outcome {
            succeeded: false,
            errno: Some(match e.raw_os_error() {
                Some(code) => format!("{:?}", nix::errno::Errno::from_raw(code)),
                None => e.kind().to_string(),
            }),
            detail: None,
        },
    }
}

/// Makes the attempt.
pub fn attempt(what: &Attempt) -> Outcome {
    match what {
        Attempt::SetuidRoot => outcome(drover_sys::process::try_setuid_root(), |_| None),
        Attempt::ReadEnviron(pid) => outcome(
            std::fs::File::open(format!("/proc/{pid}/environ")).and_then(|mut f| {
                let mut sink = Vec::new();
                let n = f.read_to_end(&mut sink);
                sink.fill(0);
                n
            }),
            |n| Some(format!("{n} bytes readable")),
        ),
        Attempt::Signal(pid) => outcome(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::SIGTERM)
                .map_err(std::io::Error::from),
            |_| None,
        ),
        Attempt::Ptrace(pid) => outcome(attempt::ptrace_attach(*pid), |_| None),
        Attempt::SocketInet => outcome(
            nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(std::io::Error::from),
            |_| None,
        ),
        Attempt::Connect(addr) => {
            outcome(std::net::TcpStream::connect_timeout(addr, Duration::from_secs(1)), |_| None)
        }
        Attempt::Write(path) => {
            outcome(std::fs::File::create(path).and_then(|mut f| f.write_all(b"escaped\n")), |_| {
                None
            })
        }
        Attempt::Syscall(name) => {
            let nr = syscall_number(name).unwrap_or(-1);
            outcome(attempt::syscall_zero_args(nr as libc::c_long), |ret| {
                Some(format!("returned {ret}"))
            })
        }
        Attempt::UserNamespace => outcome(attempt::unshare(libc::CLONE_NEWUSER), |_| None),
        Attempt::ForkSleep => outcome(fork_sleeper(), |pids| Some(pids.clone())),
        Attempt::Alloc(mib) => {
            let mut memory = vec![0u8; mib << 20];
            // Touch every page so it is really allocated.
            for page in memory.chunks_mut(4096) {
                page[0] = 1;
            }
            let touched = memory.iter().step_by(4096).filter(|b| **b == 1).count();
            outcome(Ok(touched), |pages| Some(format!("{pages} pages touched")))
        }
        Attempt::CloneNamespaces => outcome(
            drover_sys::clone::probe_clone((libc::CLONE_NEWUSER | libc::CLONE_NEWNET) as u64),
            |_| None,
        ),
        Attempt::ClearParentDeathSignal => outcome(attempt::clear_parent_death_signal(), |_| None),
        Attempt::TtyEcho(fd) => outcome(attempt::echo_off(*fd), |_| None),
        Attempt::TtyWinsize(fd) => outcome(attempt::set_winsize(*fd, 1, 1), |_| None),
        Attempt::UnixConnect(path) => outcome(UnixStream::connect(path), |_| None),
    }
}

/// Forks a child that reports its `/proc` pid and sleeps; returns `"<self> <child>"`.
fn fork_sleeper() -> std::io::Result<String> {
    fn sleeper(report: UnixStream) -> ! {
        let pid = proc_self_pid().unwrap_or(0).to_string();
        let _ = (&report).write_all(pid.as_bytes());
        drop(report);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let (mut ours, theirs) = UnixStream::pair()?;
    attempt::fork_then(sleeper, theirs)?;
    ours.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = String::new();
    ours.read_to_string(&mut text)?;
    Ok(format!("{} {}", proc_self_pid().unwrap_or(0), text.trim()))
}
