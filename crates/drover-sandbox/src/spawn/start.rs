//! Phase B's second half: [`Prepared::spawn`] clones the child (`drover_sys::clone::spawn`,
//! which runs the steps listed in [the parent module](super) and allocates nothing), then
//! sleeps until the child's report socket hangs up and reads what it queued: the seccomp
//! listener, or the step that failed. A refused private tree is retried once without it.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use drover_sys::child::{ChildPlan, ChildStep};
use drover_sys::report::{REPORT_FAILED, REPORT_LISTENER, recv_report, wait_hangup};
use drover_sys::seccomp::Listener;

use super::{
    Degradation, NAMESPACES_REFUSED, PRIVATE_TREE_REFUSED, Prepared, Sandboxed, SpawnError,
};
use crate::cgroup::Leaf;
use crate::features::NAMESPACE_FLAGS;
use crate::policy::Feature;

impl Prepared {
    /// Degradations known before the spawn.
    pub fn degradations(&self) -> &[Degradation] {
        &self.degradations
    }

    /// Clones and starts the driver. The returned handle must be waited for; dropping it
    /// kills and reaps the driver.
    ///
    /// When the child was refused its private tree (EPERM or EACCES while mounting it) and the
    /// policy does not require one, the driver is started again without it, once, and so is
    /// every later spawn of this process.
    pub fn spawn(mut self) -> Result<Sandboxed, SpawnError> {
        loop {
            match self.attempt() {
                Err(SpawnError::Child { step: ChildStep::MountTree, source })
                    if !self.tree.steps.is_empty()
                        && !self.require_private_tree
                        && matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
                {
                    PRIVATE_TREE_REFUSED.store(true, Ordering::Relaxed);
                    self.tree = super::tree::Plan { steps: Vec::new(), landlock: Vec::new() };
                    self.degradations.push(Degradation::NoPrivateTree);
                }
                outcome => {
                    drop(self.transport.take());
                    drop(std::mem::take(&mut self.stdio));
                    return outcome;
                }
            }
        }
    }

    /// One clone and start. The transport and stdio stay ours until the caller is done, so a
    /// refused private tree can be retried with the same descriptors; on a failure in the
    /// child, the degradations and the cgroup leaf come back to `self` for that retry.
    fn attempt(&mut self) -> Result<Sandboxed, SpawnError> {
        let os = |what| move |source| SpawnError::Os { what, source };
        let (parent_end, child_end) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| SpawnError::Os { what: "socketpair", source: e.into() })?;

        let mut namespaces = if self.namespaces {
            NAMESPACE_FLAGS & !(if self.network { libc::CLONE_NEWNET as u64 } else { 0 })
        } else {
            0
        };
        // The init's report of the driver's wait status (with a pid namespace).
        let (status_read, status_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| SpawnError::Os { what: "pipe2", source: e.into() })?;
        let (pid, pidfd) = loop {
            let init = namespaces & libc::CLONE_NEWPID as u64 != 0;
            let plan = ChildPlan {
                program: &self.program,
                argv: &self.argv,
                envp: &self.envp,
                work_dir: &self.work_dir,
                id_maps: (namespaces != 0).then_some(&self.id_maps),
                cgroup_procs: self.leaf.as_ref().map(Leaf::procs).unwrap_or_default(),
                last_cap: self.last_cap,
                namespaces,
                report: child_end.as_fd(),
                transport: self.transport.as_ref().map(AsFd::as_fd),
                stdio: [0, 1, 2].map(|i| self.stdio[i].as_ref().map(AsFd::as_fd)),
                rlimits: &self.rlimits,
                landlock: self.landlock.as_ref().map(AsFd::as_fd),
                filters: &self.filters,
                mounts: if namespaces != 0 { &self.tree.steps } else { &[] },
                landlock_adds: if namespaces != 0 { &self.tree.landlock } else { &[] },
                init_status: init.then(|| status_write.as_fd()),
            };
            match drover_sys::clone::spawn(&plan) {
                Ok(spawned) => break spawned,
                Err(e)
                    if namespaces != 0
                        && matches!(
                            e.raw_os_error(),
                            Some(
                                libc::EPERM
                                    | libc::EINVAL
                                    | libc::ENOSPC
                                    | libc::EUSERS
                                    | libc::EACCES
                            )
                        ) =>
                {
                    if self.require_namespaces {
                        return Err(SpawnError::MissingFeature {
                            feature: Feature::Namespaces,
                            reason: format!("cloning into new namespaces failed: {e}"),
                        });
                    }
                    NAMESPACES_REFUSED.store(true, Ordering::Relaxed);
                    self.degradations.push(Degradation::NoNamespaces {
                        reason: format!("cloning into new namespaces failed: {e}"),
                    });
                    self.degradations.push(Degradation::NoPrivateTree);
                    namespaces = 0;
                }
                Err(e) => return Err(os("clone3")(e)),
            }
        };
        drop(child_end);
        drop(status_write);
        let pid_namespace = namespaces & libc::CLONE_NEWPID as u64 != 0;
        let mut sandboxed = Sandboxed {
            pid,
            pidfd,
            init_status: pid_namespace.then(|| std::fs::File::from(status_read)),
            listener: None,
            enforcement: self.enforcement,
            pid_namespace,
            started: Instant::now(),
            deadline: self.wall_clock,
            degradations: self.degradations.clone(),
            logged: BTreeMap::new(),
            verdict: None,
            reaped: false,
            leaf: self.leaf.take(),
            memory_bytes: self.memory_bytes,
        };
        // The child's copies are in place; ours are no longer needed.
        // One wake-up: the child's end closes when it executes (close-on-exec) or exits.
        wait_hangup(parent_end.as_fd()).map_err(os("poll"))?;
        loop {
            let mut buf = [0u8; 12];
            let (n, fd) = recv_report(parent_end.as_fd(), &mut buf).map_err(os("recvmsg"))?;
            let word = |i: usize| {
                let bytes: [u8; 4] = buf[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]);
                u32::from_ne_bytes(bytes)
            };
            match n {
                0 => return Ok(sandboxed),
                4 if word(0) == REPORT_LISTENER
                    && let Some(fd) = fd =>
                {
                    let listener =
                        Listener::new(fd).map_err(os("checking the seccomp listener"))?;
                    sandboxed.listener = Some(listener);
                }
                12 if word(0) == REPORT_FAILED => {
                    sandboxed.reap_now();
                    self.leaf = sandboxed.leaf.take();
                    let step = ChildStep::from_u32(word(1)).unwrap_or(ChildStep::Exec);
                    let source = std::io::Error::from_raw_os_error(word(2) as i32);
                    return Err(SpawnError::Child { step, source });
                }
                _ => {
                    sandboxed.reap_now();
                    return Err(SpawnError::Os {
                        what: "reading the child's report",
                        source: std::io::Error::other(format!("unexpected {n}-byte record")),
                    });
                }
            }
        }
    }
}
