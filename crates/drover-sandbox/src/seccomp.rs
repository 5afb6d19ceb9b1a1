//! Compiles a [`SeccompPolicy`] into the BPF programs a child installs, with seccompiler (no
//! hand-written BPF).
//!
//! A policy becomes two kinds of filter, installed in this order:
//!
//! 1. one filter per errno value in `errno` (matching calls get that errno, others pass). With
//!    the network off, `socket()` for any family but `AF_UNIX` joins the `ENOSYS` filter, so
//!    network code fails politely instead of being killed (and the default profile, whose
//!    only errno entry is `clone3 = "ENOSYS"`, pays for one filter, not two: each filter costs
//!    a BPF compilation at every spawn);
//! 2. the allowlist, last: listed calls pass, everything else gets the default action.
//!
//! Whatever the policy says, the errno filters also carry the jail's own rules (`jail_rules`),
//! which no profile can turn off (bubblewrap's `--disable-userns`, Chrome's and Firefox's
//! sandboxes do the same):
//!
//! | Call | Answer |
//! |---|---|
//! | `clone` with any `CLONE_NEW*` flag, `unshare` with any, `setns` | `EPERM`: no new namespace, so none of the kernel surface a user namespace's capabilities open |
//! | `clone3` | `ENOSYS`: its flags live in memory a filter cannot read; glibc falls back to `clone` |
//! | `prctl(PR_SET_PDEATHSIG, ...)` | `EPERM`: the parent-death signal the sandbox armed stays armed |
//! | `ioctl` setting terminal state (`TCSETS*`, `TCSETA*`, `TIOCSWINSZ`, `TIOCSTI`, `TIOCSCTTY`, `TIOCSPGRP`, `TIOCSETD`, `TIOCCONS`, `TIOCLINUX`, `TCFLSH`, `TCXONC`, `TIOCSBRK`, `TIOCCBRK`) | `EPERM`: an inherited terminal can be read from, never reconfigured |
//!
//! A call the allowlist does not list is still killed: the kernel keeps the strictest verdict.
//!
//! The kernel runs every filter and keeps the strictest verdict (kill > trap > errno >
//! user-notif > trace > log > allow), so an errno filter wins over the allowlist's default.
//!
//! The allowlist always contains what the sandbox itself needs after installing it: `execve`,
//! `exit`, `exit_group`, `close`, `write` (to report a failed exec) and, when the supervisor
//! listens for violations, `sendmsg` (to hand it the listener).
//!
//! [`SeccompDefault::Kill`] and [`SeccompDefault::Log`] use a user-notification listener, so the
//! supervisor learns the number of every refused call. seccompiler has no user-notification
//! action, so the default action is compiled as `SECCOMP_RET_TRACE` with a marker value and
//! those return instructions are rewritten to `SECCOMP_RET_USER_NOTIF` (no other instruction can
//! carry the marker: the policy offers no trace action).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use syscalls::Sysno;
use thiserror::Error;

use crate::policy::{SeccompDefault, SeccompPolicy};
use drover_sys::seccomp as sys;

/// Calls the sandbox itself makes after the filter is installed.
const ALWAYS_ALLOWED: &[&str] = &["execve", "exit", "exit_group", "close", "write"];

/// The namespace flags `clone` and `unshare` may not carry. `CLONE_NEWTIME` (0x80) shares its
/// bit with `clone`'s exit-signal byte, so it is checked for `unshare` only.
const CLONE_NEW_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
const CLONE_NEWTIME: u64 = 0x80;

/// `ioctl` requests that change a terminal (`asm-generic/ioctls.h`): `TCSETS`, `TCSETSW`,
/// `TCSETSF`, `TCSETA`, `TCSETAW`, `TCSETAF`, `TCSBRK`, `TCXONC`, `TCFLSH`, `TIOCSCTTY`,
/// `TIOCSPGRP`, `TIOCSTI`, `TIOCSWINSZ`, `TIOCLINUX`, `TIOCCONS`, `TIOCSETD`, `TIOCSBRK`,
/// `TIOCCBRK`, `TCSETS2`, `TCSETSW2`, `TCSETSF2`.
const TTY_SET_REQUESTS: [u64; 21] = [
    0x5402,
    0x5403,
    0x5404,
    0x5406,
    0x5407,
    0x5408,
    0x5409,
    0x540A,
    0x540B,
    0x540E,
    0x5410,
    0x5412,
    0x5414,
    0x541C,
    0x541D,
    0x5423,
    0x5427,
    0x5428,
    0x402C_542B,
    0x402C_542C,
    0x402C_542D,
];

/// Marker in `SECCOMP_RET_TRACE` returns that become `SECCOMP_RET_USER_NOTIF`.
const NOTIFY_MARKER: u32 = 0xd0e1;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;

/// Why a seccomp policy could not be compiled.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// A system call name this architecture does not have.
    #[error("unknown system call {name:?} on {arch} (field seccomp.{field})")]
    UnknownSyscall {
        /// The name.
        name: String,
        /// `allow` or `errno`.
        field: &'static str,
        /// The architecture.
        arch: &'static str,
    },
    /// seccompiler refused the filter.
    #[error("building the seccomp filter failed")]
    Build(#[source] seccompiler::BackendError),
    /// The architecture is not one seccompiler supports.
    #[error("seccomp filters are not supported on {arch}")]
    Arch {
        /// The architecture.
        arch: &'static str,
    },
    /// A program is longer than the kernel accepts.
    #[error("the seccomp program has {len} instructions, more than 4096")]
    TooLong {
        /// Its length.
        len: usize,
    },
}

/// What the compiled filters do with refused calls, after any fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// User notification; the supervisor kills and names the call.
    NotifyKill,
    /// User notification; the supervisor logs the call and lets it run.
    NotifyLog,
    /// `SECCOMP_RET_KILL_PROCESS`.
    KernelKill,
    /// `SECCOMP_RET_LOG`.
    KernelLog,
}

/// Compiled filters, in installation order.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// `(program, SECCOMP_FILTER_FLAG_*)`.
    pub programs: Vec<(BpfProgram, u32)>,
    /// How refusals are handled.
    pub enforcement: Enforcement,
}

/// The running architecture's name.
pub(crate) fn arch() -> &'static str {
    std::env::consts::ARCH
}

/// Resolves a system call name.
pub fn syscall_number(name: &str) -> Option<i64> {
    Sysno::from_str(name).ok().map(|s| i64::from(s.id()))
}

/// Names a system call number of this architecture.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    usize::try_from(nr).ok().and_then(Sysno::new).map(|s| s.name())
}

/// Compiles `policy`. `network` false adds the socket-family filter; `notify` says whether the
/// kernel has user notification.
pub(crate) fn compile(
    policy: &SeccompPolicy,
    network: bool,
    notify: bool,
) -> Result<Compiled, SeccompError> {
    let target: TargetArch = arch().try_into().map_err(|_| SeccompError::Arch { arch: arch() })?;
    let enforcement = match (policy.default_action, notify) {
        (SeccompDefault::Kill, true) => Enforcement::NotifyKill,
        (SeccompDefault::Kill | SeccompDefault::KillProcess, _) => Enforcement::KernelKill,
        (SeccompDefault::Log, true) => Enforcement::NotifyLog,
        (SeccompDefault::Log, false) => Enforcement::KernelLog,
    };
    let resolve = |name: &str, field: &'static str| {
        syscall_number(name).ok_or_else(|| SeccompError::UnknownSyscall {
            name: name.to_owned(),
            field,
            arch: arch(),
        })
    };

    let mut programs = Vec::new();
    let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for (name, errno) in &policy.errno {
        by_errno.entry(*errno).or_default().insert(resolve(name, "errno")?, Vec::new());
    }
    for (errno, nr, rules) in jail_rules()? {
        let entry = by_errno.entry(errno).or_default();
        match entry.get_mut(&nr) {
            // The profile already answers every such call with this errno.
            Some(existing) if existing.is_empty() => {}
            Some(existing) if !rules.is_empty() => existing.extend(rules),
            _ => {
                entry.insert(nr, rules);
            }
        }
    }
    let mut allowed = BTreeSet::new();
    for name in policy.allow.iter().map(String::as_str).chain(ALWAYS_ALLOWED.iter().copied()) {
        allowed.insert(resolve(name, "allow")?);
    }
    let listener = matches!(enforcement, Enforcement::NotifyKill | Enforcement::NotifyLog);
    if listener {
        allowed.insert(resolve("sendmsg", "allow")?);
    }
    let socket = i64::from(Sysno::socket.id());
    let unix_only = |op| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, libc::AF_UNIX as u64)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(SeccompError::Build)
    };
    if !network && allowed.contains(&socket) {
        by_errno
            .entry(libc::ENOSYS)
            .or_default()
            .insert(socket, vec![unix_only(SeccompCmpOp::Ne)?]);
    }
    for (errno, rules) in by_errno {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            target,
        )
        .map_err(SeccompError::Build)?;
        programs.push((checked(filter.try_into().map_err(SeccompError::Build)?)?, 0));
    }

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed.into_iter().map(|nr| (nr, Vec::new())).collect();
    if !network && rules.contains_key(&socket) {
        rules.insert(socket, vec![unix_only(SeccompCmpOp::Eq)?]);
    }
    let (mismatch, flags) = match enforcement {
        Enforcement::NotifyKill | Enforcement::NotifyLog => {
            (SeccompAction::Trace(NOTIFY_MARKER), sys::SECCOMP_FILTER_FLAG_NEW_LISTENER)
        }
        Enforcement::KernelKill => (SeccompAction::KillProcess, 0),
        Enforcement::KernelLog => (SeccompAction::Log, sys::SECCOMP_FILTER_FLAG_LOG),
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, target)
        .map_err(SeccompError::Build)?;
    let mut main: BpfProgram = filter.try_into().map_err(SeccompError::Build)?;
    for insn in &mut main {
        if insn.code == BPF_RET_K && insn.k == SECCOMP_RET_TRACE | NOTIFY_MARKER {
            insn.k = sys::SECCOMP_RET_USER_NOTIF;
        }
    }
    programs.push((checked(main)?, flags));
    Ok(Compiled { programs, enforcement })
}

/// The jail's own errno rules, `(errno, call, rules)`; empty rules: every such call. See the
/// module documentation.
fn jail_rules() -> Result<Vec<(i32, i64, Vec<SeccompRule>)>, SeccompError> {
    let nr = |sysno: Sysno| i64::from(sysno.id());
    let rule = |arg: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(SeccompError::Build)
    };
    let any_flag = |flags: &[u64]| -> Result<Vec<SeccompRule>, SeccompError> {
        flags.iter().map(|flag| rule(0, SeccompCmpOp::MaskedEq(*flag), *flag)).collect()
    };
    let mut unshare_flags = CLONE_NEW_FLAGS.to_vec();
    unshare_flags.push(CLONE_NEWTIME);
    Ok(vec![
        (libc::EPERM, nr(Sysno::clone), any_flag(&CLONE_NEW_FLAGS)?),
        (libc::EPERM, nr(Sysno::unshare), any_flag(&unshare_flags)?),
        (libc::EPERM, nr(Sysno::setns), Vec::new()),
        (
            libc::EPERM,
            nr(Sysno::prctl),
            vec![rule(0, SeccompCmpOp::Eq, libc::PR_SET_PDEATHSIG as u64)?],
        ),
        (
            libc::EPERM,
            nr(Sysno::ioctl),
            TTY_SET_REQUESTS
                .iter()
                .map(|request| rule(1, SeccompCmpOp::Eq, *request))
                .collect::<Result<_, _>>()?,
        ),
        (libc::ENOSYS, nr(Sysno::clone3), Vec::new()),
    ])
}

fn checked(program: BpfProgram) -> Result<BpfProgram, SeccompError> {
    if program.len() > 4096 {
        return Err(SeccompError::TooLong { len: program.len() });
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> SeccompPolicy {
        SeccompPolicy {
            default_action: SeccompDefault::Kill,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            errno: BTreeMap::new(),
        }
    }

    fn returns(program: &BpfProgram) -> Vec<u32> {
        program.iter().filter(|i| i.code == BPF_RET_K).map(|i| i.k).collect()
    }

    #[test]
    fn names_resolve_both_ways() {
        let nr = syscall_number("getcwd").unwrap();
        assert_eq!(syscall_name(nr), Some("getcwd"));
        assert_eq!(syscall_number("no_such_call"), None);
        assert_eq!(syscall_name(-1), None);
    }

    #[test]
    fn kill_with_notify_rewrites_the_default_to_user_notif_with_a_listener() {
        let compiled = compile(&policy(&["read"]), true, true).unwrap();
        assert_eq!(compiled.enforcement, Enforcement::NotifyKill);
        let (main, flags) = compiled.programs.last().unwrap();
        assert_eq!(*flags, sys::SECCOMP_FILTER_FLAG_NEW_LISTENER);
        let rets = returns(main);
        assert!(rets.contains(&sys::SECCOMP_RET_USER_NOTIF));
        assert!(!rets.contains(&(SECCOMP_RET_TRACE | NOTIFY_MARKER)));
    }

    #[test]
    fn fallbacks_without_notify() {
        let compiled = compile(&policy(&["read"]), true, false).unwrap();
        assert_eq!(compiled.enforcement, Enforcement::KernelKill);
        assert!(
            returns(&compiled.programs.last().unwrap().0).contains(&libc::SECCOMP_RET_KILL_PROCESS)
        );
        let mut log = policy(&["read"]);
        log.default_action = SeccompDefault::Log;
        let compiled = compile(&log, true, false).unwrap();
        assert_eq!(compiled.enforcement, Enforcement::KernelLog);
        assert_eq!(compiled.programs.last().unwrap().1, sys::SECCOMP_FILTER_FLAG_LOG);
        log.default_action = SeccompDefault::Log;
        assert_eq!(compile(&log, true, true).unwrap().enforcement, Enforcement::NotifyLog);
    }

    #[test]
    fn errno_entries_and_the_network_switch_add_filters_before_the_allowlist() {
        // The jail's rules: one EPERM and one ENOSYS filter, then the allowlist.
        let mut p = policy(&["read", "socket"]);
        p.errno.insert("clone3".into(), libc::ENOSYS);
        assert_eq!(compile(&p, true, true).unwrap().programs.len(), 3);
        // The socket-family rule shares the ENOSYS filter.
        let compiled = compile(&p, false, true).unwrap();
        assert_eq!(compiled.programs.len(), 3);
        assert!(
            returns(&compiled.programs[1].0)
                .contains(&(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32))
        );
        // A profile's EPERM entry shares the jail's EPERM filter.
        p.errno.insert("uname".into(), libc::EPERM);
        assert_eq!(compile(&p, false, true).unwrap().programs.len(), 3);
        p.errno.insert("uname".into(), libc::EACCES);
        assert_eq!(compile(&p, false, true).unwrap().programs.len(), 4);
    }

    #[test]
    fn a_profile_cannot_relax_the_jail_rules_but_can_widen_them() {
        // An unconditional profile entry for a call the jail filters by argument stays
        // unconditional (ioctl refused entirely is stricter than the tty requests alone).
        let mut p = policy(&["read"]);
        p.errno.insert("ioctl".into(), libc::EPERM);
        let compiled = compile(&p, true, true).unwrap();
        let without = compile(&policy(&["read"]), true, true).unwrap();
        assert!(compiled.programs[0].0.len() < without.programs[0].0.len());
    }

    #[test]
    fn unknown_names_are_errors_naming_the_field() {
        let err = compile(&policy(&["read", "raed"]), true, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("unknown system call \"raed\" on {} (field seccomp.allow)", arch())
        );
        let mut p = policy(&[]);
        p.errno.insert("nope".into(), 1);
        assert!(matches!(
            compile(&p, true, true),
            Err(SeccompError::UnknownSyscall { field: "errno", .. })
        ));
    }
}
