//! The sandbox of drover: the supervisor's own privilege drop (Phase A), the sandboxed spawn of
//! driver processes (Phase B), and a typed cause for every driver death (Phase C).
//!
//! Architecture invariants: this crate knows nothing of tokio, JSON or HTTP, and has no
//! `unsafe` code (`#![forbid(unsafe_code)]`): every raw system call, and the code the child
//! runs between clone and `execve`, is a safe function of `drover-sys` (whose descriptor
//! adoption [`inherit`] re-exports), each behind the checks that make it sound.
//!
//! ```text
//!   supervisor start (root or not, one thread)
//!     └─ privilege::drop_privileges ──> Dropped  (all five capability sets 0, NoNewPrivs 1,
//!                                                 non-dumpable, setuid(0) fails)
//!   per driver
//!     policy::Policy + spawn::Command
//!       └─ spawn::prepare(&policy, command, &dropped)  all allocation, in the parent
//!            └─ Prepared::spawn()                         clone3 + child steps + execve
//!                 └─ Sandboxed::wait()                    -> death::Death { cause, .. }
//! ```
//!
//! Each module documents its defaults: [`privilege`] (uid/gid 65534), [`policy`] (every limit
//! and switch), [`seccomp`] (filter layout), [`spawn`] (the child's steps, in order),
//! [`death`] (causes and exit codes), [`features`] (what is detected, and when).
//!
//! ```no_run
//! use drover_sandbox::{Command, LinuxSys, DropConfig, Policy, drop_privileges, prepare};
//!
//! let dropped = drop_privileges(&DropConfig::default(), &LinuxSys)?;
//! let mut policy = Policy::default();
//! policy.read = vec!["/usr".into(), "/lib".into(), "/bin".into()];
//! policy.seccomp.allow = ["read", "write", "mmap", "brk"].map(String::from).to_vec();
//! let prepared = prepare(&policy, Command::new("/bin/true", "/tmp"), &dropped)?;
//! let death = prepared.spawn()?.wait(None)?;
//! println!("{}", death.cause);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod cgroup;
pub mod death;
pub mod features;
mod fs_rules;
pub mod inherit;
pub mod policy;
pub mod privilege;
pub mod probe;
pub mod seccomp;
pub mod spawn;
pub mod work_dir;

pub use death::{Cause, Death, Logged};
pub use features::Features;
pub use fs_rules::LandlockError;
pub use policy::{Feature, Limits, Policy, SeccompDefault, SeccompPolicy};
pub use privilege::{DropConfig, Dropped, LinuxSys, PrivilegeError, drop_privileges};
pub use seccomp::{Enforcement, SeccompError};
pub use spawn::{
    Command, Degradation, Prepared, Sandboxed, SpawnError, Terminator, WaitError, prepare,
    reap_strays,
};

#[cfg(test)]
mod tests {
    /// Every `unsafe` of the sandbox lives in `drover-sys` (issue 19). The forbid makes any
    /// `unsafe` here a compile error that no inner `allow` can lift; this keeps the forbid.
    #[test]
    fn the_sandbox_forbids_unsafe_code() {
        let forbid = concat!("#![forbid", "(unsafe_code)]");
        assert!(include_str!("lib.rs").lines().any(|line| line == forbid));
    }
}
