//! Phase C: waiting for a sandboxed driver's death ([`Sandboxed::wait`]) while serving its
//! seccomp listener and its wall-clock deadline, stopping it ([`Terminator`]), and reaping
//! strays ([`reap_strays`]). Every death gets a typed cause ([`crate::death::Cause`]).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use drover_sys::process::{self as sys, ChildStatus};
use drover_sys::seccomp::{Listener, notif_continue, notif_recv};
use thiserror::Error;

use super::{Degradation, SpawnError};
use crate::cgroup::Leaf;
use crate::death::{Cause, Death};
use crate::seccomp::{self, Enforcement};

/// A running sandboxed driver. Wait for it with [`Sandboxed::wait`]; dropping it unwaited
/// kills and reaps it.
#[derive(Debug)]
pub struct Sandboxed {
    pub(super) pid: libc::pid_t,
    pub(super) pidfd: OwnedFd,
    /// The sandbox init's report of the driver's wait status (with a pid namespace).
    pub(super) init_status: Option<std::fs::File>,
    pub(super) listener: Option<Listener>,
    pub(super) enforcement: Enforcement,
    pub(super) pid_namespace: bool,
    pub(super) started: Instant,
    pub(super) deadline: Option<Duration>,
    pub(super) degradations: Vec<Degradation>,
    pub(super) logged: BTreeMap<i64, u64>,
    pub(super) verdict: Option<Cause>,
    pub(super) reaped: bool,
    pub(super) leaf: Option<Leaf>,
    pub(super) memory_bytes: Option<u64>,
}

/// Why waiting failed.
#[derive(Debug, Error)]
#[error("waiting for the sandboxed process failed in {what}")]
pub struct WaitError {
    what: &'static str,
    #[source]
    source: std::io::Error,
}

impl Sandboxed {
    /// The driver's pid in the supervisor's pid namespace.
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Whether the driver runs in its own pid namespace, under the sandbox's init.
    pub fn in_pid_namespace(&self) -> bool {
        self.pid_namespace
    }

    /// Every degradation of this spawn.
    pub fn degradations(&self) -> &[Degradation] {
        &self.degradations
    }

    /// How refused system calls are handled.
    pub fn enforcement(&self) -> Enforcement {
        self.enforcement
    }

    /// A handle that can send SIGTERM to the driver from another thread while this one
    /// waits: the second-to-last rung of the stop ladder (close the transport, SIGTERM,
    /// SIGKILL). It holds its own pidfd, so it can never signal a recycled pid.
    pub fn terminator(&self) -> Result<Terminator, SpawnError> {
        let pidfd = self
            .pidfd
            .try_clone()
            .map_err(|source| SpawnError::Os { what: "duplicating the pidfd", source })?;
        Ok(Terminator { pidfd, pid: self.pid, pid_namespace: self.pid_namespace })
    }

    /// Kills the driver (and with it its pid namespace or process group); the death is
    /// reported as [`Cause::KilledBySupervisor`] with `reason`.
    pub fn kill(&mut self, reason: &str) {
        self.kill_with(Cause::KilledBySupervisor { reason: reason.to_owned() });
    }

    fn kill_with(&mut self, cause: Cause) {
        if self.verdict.is_none() {
            self.verdict = Some(cause);
        }
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        if !self.pid_namespace {
            let _ = sys::kill(-self.pid, libc::SIGKILL);
        }
    }

    /// Waits until the driver dies, serving the seccomp listener meanwhile (naming and killing
    /// on a violation, or logging and continuing in log mode) and enforcing the wall-clock
    /// deadline. When `stop` becomes readable the driver is killed as
    /// [`Cause::KilledBySupervisor`] (the caller drains `stop`).
    pub fn wait(&mut self, stop: Option<BorrowedFd<'_>>) -> Result<Death, WaitError> {
        let err = |what| move |source| WaitError { what, source };
        let mut stop = stop;
        loop {
            let mut fds = vec![self.pidfd.as_fd()];
            let listener_slot = self.listener.as_ref().map(|l| {
                fds.push(l.as_fd());
                fds.len() - 1
            });
            let stop_slot = stop.map(|s| {
                fds.push(s);
                fds.len() - 1
            });
            let timeout = match self.deadline {
                Some(deadline) if self.verdict.is_none() => {
                    let left = deadline.saturating_sub(self.started.elapsed());
                    i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(0)
                        + i32::from(left.subsec_nanos() % 1_000_000 != 0)
                }
                _ => -1,
            };
            let ready = sys::poll_readable(&fds, timeout).map_err(err("poll"))?;
            drop(fds);
            if ready[0] != 0 {
                let status =
                    sys::waitid_pidfd(self.pidfd.as_fd(), libc::WNOHANG).map_err(err("waitid"))?;
                if let Some(status) = status {
                    self.reaped = true;
                    // With the sandbox's init, the driver's own status says how it died.
                    let status = self.driver_status().unwrap_or(status);
                    if !self.pid_namespace {
                        let _ = sys::kill(-self.pid, libc::SIGKILL);
                    }
                    let cause = self.cause_of(status);
                    if let Some(leaf) = self.leaf.as_mut() {
                        leaf.remove();
                    }
                    return Ok(Death { cause, logged: crate::death::logged(&self.logged) });
                }
            }
            if let Some(slot) = listener_slot {
                if ready[slot] & libc::POLLIN != 0 {
                    self.serve_notification();
                } else if ready[slot] != 0 {
                    // Hang-up: no process is left under the filter.
                    self.listener = None;
                }
            }
            if let Some(slot) = stop_slot
                && ready[slot] != 0
            {
                self.kill("stop requested");
                stop = None;
            }
            if let Some(deadline) = self.deadline
                && self.verdict.is_none()
                && self.started.elapsed() >= deadline
            {
                self.kill_with(Cause::Deadline { after: deadline });
            }
        }
    }

    fn serve_notification(&mut self) {
        let Some(listener) = self.listener.as_ref() else { return };
        let notification = match notif_recv(listener) {
            Ok(n) => n,
            // ENOENT: the caller died before we read it; anything else ends listening.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return,
            Err(_) => {
                self.listener = None;
                return;
            }
        };
        let nr = i64::from(notification.nr);
        match self.enforcement {
            Enforcement::NotifyLog => {
                *self.logged.entry(nr).or_default() += 1;
                let _ = notif_continue(listener, notification.id);
            }
            _ => {
                let _ = notification.arch;
                self.kill_with(Cause::SeccompViolation {
                    nr,
                    name: seccomp::syscall_name(nr),
                    pid: notification.pid,
                });
            }
        }
    }

    /// The driver's wait status as its init reported it, if it did (an init killed by the
    /// supervisor, the OOM killer or the supervisor's own death reports nothing).
    fn driver_status(&mut self) -> Option<ChildStatus> {
        use std::io::Read as _;
        let mut raw = [0u8; 4];
        self.init_status.as_mut()?.read_exact(&mut raw).ok()?;
        let raw = libc::c_int::from_ne_bytes(raw);
        Some(if libc::WIFEXITED(raw) {
            ChildStatus { code: libc::CLD_EXITED, status: libc::WEXITSTATUS(raw) }
        } else {
            let code = if libc::WCOREDUMP(raw) { libc::CLD_DUMPED } else { libc::CLD_KILLED };
            ChildStatus { code, status: libc::WTERMSIG(raw) }
        })
    }

    fn cause_of(&mut self, status: ChildStatus) -> Cause {
        if let Some(verdict) = self.verdict.take() {
            return verdict;
        }
        if status.code != libc::CLD_EXITED
            && status.status == libc::SIGKILL
            && let (Some(leaf), Some(limit_bytes)) = (&self.leaf, self.memory_bytes)
            && leaf.oom_kills() > 0
        {
            return Cause::Oom { limit_bytes };
        }
        match status.code {
            libc::CLD_EXITED => Cause::Exited { code: status.status },
            _ if status.status == libc::SIGSYS => Cause::SeccompKill,
            code => {
                Cause::Signaled { signal: status.status, core_dumped: code == libc::CLD_DUMPED }
            }
        }
    }

    pub(super) fn reap_now(&mut self) {
        if !self.reaped {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
            let _ = sys::waitid_pidfd(self.pidfd.as_fd(), 0);
            self.reaped = true;
        }
    }
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        if !self.pid_namespace && !self.reaped {
            let _ = sys::kill(-self.pid, libc::SIGKILL);
        }
        self.reap_now();
        if let Some(leaf) = self.leaf.as_mut() {
            leaf.remove();
        }
    }
}

/// Sends SIGTERM to a sandboxed driver; made by [`Sandboxed::terminator`].
///
/// In a pid namespace the signal goes to the sandbox's init, which forwards it to the driver.
/// Without a pid namespace the driver's whole process group gets the signal.
#[derive(Debug)]
pub struct Terminator {
    pidfd: OwnedFd,
    pid: libc::pid_t,
    pid_namespace: bool,
}

impl Terminator {
    /// Sends SIGTERM. A driver that has already exited is not an error.
    pub fn terminate(&self) {
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGTERM);
        if !self.pid_namespace {
            // Only while the leader is unreaped: the pidfd stays pollable until then, and a
            // reaped leader's group id may have been reused.
            if sys::waitid_pidfd(self.pidfd.as_fd(), libc::WNOHANG | libc::WNOWAIT).is_ok() {
                let _ = sys::kill(-self.pid, libc::SIGTERM);
            }
        }
    }
}

/// Kills and reaps every child of this process except `keep`: orphans re-parented to the
/// supervisor (it is a child subreaper, or PID 1) that escaped their driver's process group.
/// Returns how many were reaped.
pub fn reap_strays(keep: &[u32]) -> usize {
    let mut reaped = 0;
    for _ in 0..64 {
        let strays: Vec<libc::pid_t> = sys::list_children()
            .into_iter()
            .filter(|pid| !keep.contains(&pid.unsigned_abs()))
            .collect();
        if strays.is_empty() {
            break;
        }
        for pid in strays {
            let _ = sys::kill(pid, libc::SIGKILL);
            if sys::reap(pid, true).is_some() {
                reaped += 1;
            }
        }
    }
    reaped
}
