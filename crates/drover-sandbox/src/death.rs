//! Phase C: why a driver died, as a type.
//!
//! | Cause | When | Exit code `drover exec` uses |
//! |---|---|---|
//! | [`Cause::Exited`] | the driver exited by itself | its code |
//! | [`Cause::Signaled`] | a signal the sandbox did not send killed it | 128 + signal |
//! | [`Cause::SeccompViolation`] | it made a refused system call; the supervisor was told which (user notification) and killed the sandbox | 128 + SIGSYS (159) |
//! | [`Cause::SeccompKill`] | the kernel killed it for a refused call (`SIGSYS`, kill-process mode): the call is not known | 128 + SIGSYS |
//! | [`Cause::Oom`] | the kernel's OOM killer killed it in its memory cgroup (`oom_kill` in the cgroup's events) | 128 + SIGKILL |
//! | [`Cause::Deadline`] | the policy's wall-clock deadline passed and the supervisor killed it | 128 + SIGKILL |
//! | [`Cause::KilledBySupervisor`] | the supervisor killed it for its own reason (a stop request, a protocol violation) | 128 + SIGKILL |
//!
//! The one-line [`std::fmt::Display`] of a cause is what `drover exec` prints on stderr when
//! the sandbox killed the driver.

use std::fmt;
use std::time::Duration;

use crate::seccomp::syscall_name;

/// Why a sandboxed process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Exited with this status.
    Exited {
        /// The exit status (0-255).
        code: i32,
    },
    /// Killed by a signal the sandbox did not send.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core (never, with the default `RLIMIT_CORE` 0).
        core_dumped: bool,
    },
    /// Made a refused system call; the supervisor killed the whole sandbox.
    SeccompViolation {
        /// The system call number.
        nr: i64,
        /// Its name on this architecture.
        name: Option<&'static str>,
        /// The offending thread, in the supervisor's pid namespace.
        pid: u32,
    },
    /// Killed by the kernel's seccomp kill-process action; the call is not known.
    SeccompKill,
    /// Killed by the kernel's OOM killer in the driver's memory cgroup.
    Oom {
        /// The cgroup's limit.
        limit_bytes: u64,
    },
    /// The wall-clock deadline passed.
    Deadline {
        /// The deadline.
        after: Duration,
    },
    /// The supervisor killed it.
    KilledBySupervisor {
        /// Why.
        reason: String,
    },
}

impl Cause {
    /// The exit code a shell would show for this death: the code, or 128 + signal.
    pub fn exit_code(&self) -> u8 {
        let code = match self {
            Cause::Exited { code } => *code,
            Cause::Signaled { signal, .. } => 128 + signal,
            Cause::SeccompViolation { .. } | Cause::SeccompKill => 128 + libc::SIGSYS,
            Cause::Oom { .. } | Cause::Deadline { .. } | Cause::KilledBySupervisor { .. } => {
                128 + libc::SIGKILL
            }
        };
        u8::try_from(code & 0xff).unwrap_or(u8::MAX)
    }

    /// Whether the sandbox (rather than the driver or an outside signal) ended the process.
    pub fn by_sandbox(&self) -> bool {
        !matches!(self, Cause::Exited { .. } | Cause::Signaled { .. })
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Exited { code } => write!(f, "exited with status {code}"),
            Cause::Signaled { signal, core_dumped } => {
                write!(f, "killed by signal {signal} ({})", signal_name(*signal))?;
                if *core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
            Cause::SeccompViolation { nr, name, pid } => write!(
                f,
                "killed by the sandbox: system call {} (number {nr}) is not allowed by the seccomp policy (pid {pid})",
                name.unwrap_or("unknown")
            ),
            Cause::SeccompKill => f.write_str(
                "killed by seccomp (SIGSYS): a system call outside the policy; run with default_action = \"log\" to name it",
            ),
            Cause::Oom { limit_bytes } => write!(
                f,
                "killed by the kernel's OOM killer: the sandbox exceeded its memory limit of {limit_bytes} bytes"
            ),
            Cause::Deadline { after } => {
                write!(f, "killed by the sandbox: wall-clock deadline of {} s passed", after.as_secs_f64())
            }
            Cause::KilledBySupervisor { reason } => write!(f, "killed by the supervisor: {reason}"),
        }
    }
}

/// A refused system call that log mode let through, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The system call number.
    pub nr: i64,
    /// Its name.
    pub name: Option<&'static str>,
    /// How many times it was made.
    pub count: u64,
}

/// How a sandboxed process ended, with what log mode saw on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Death {
    /// Why it ended.
    pub cause: Cause,
    /// In log mode, the calls the policy would have refused, by number.
    pub logged: Vec<Logged>,
}

pub(crate) fn logged(counts: &std::collections::BTreeMap<i64, u64>) -> Vec<Logged> {
    counts
        .iter()
        .map(|(nr, count)| Logged { nr: *nr, name: syscall_name(*nr), count: *count })
        .collect()
}

/// The conventional name of a signal number.
pub fn signal_name(signal: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(signal).map(|s| s.as_str()).unwrap_or("unknown signal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Cause::Exited { code: 3 }.exit_code(), 3);
        assert_eq!(Cause::Signaled { signal: 15, core_dumped: false }.exit_code(), 143);
        assert_eq!(Cause::SeccompKill.exit_code(), 159);
        assert_eq!(Cause::SeccompViolation { nr: 1, name: None, pid: 1 }.exit_code(), 159);
        assert_eq!(Cause::Deadline { after: Duration::from_secs(1) }.exit_code(), 137);
        assert_eq!(Cause::KilledBySupervisor { reason: "x".into() }.exit_code(), 137);
    }

    #[test]
    fn one_line_causes_name_what_happened() {
        let nr = crate::seccomp::syscall_number("keyctl").unwrap();
        let cause = Cause::SeccompViolation { nr, name: syscall_name(nr), pid: 7 };
        let text = cause.to_string();
        assert!(
            text.contains("keyctl") && text.contains(&nr.to_string()) && !text.contains('\n'),
            "{text}"
        );
        assert!(cause.by_sandbox());
        assert!(!Cause::Exited { code: 0 }.by_sandbox());
        assert_eq!(
            Cause::Signaled { signal: 9, core_dumped: false }.to_string(),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
