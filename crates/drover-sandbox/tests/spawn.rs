//! The library as the supervisor uses it: Phase A in this very process, then drivers with a
//! transport at fd 3 and their own stdio, and the typed cause of each death.
//!
//! Phase A changes the whole process irreversibly and must run while it has one thread, so
//! this test has no harness (`harness = false`): `main` runs the cases one after another and
//! prints `N passed, N failed`. It needs root (CI) or an empty capability bounding set, and
//! says why when it cannot run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use drover_sandbox::{
    Cause, Command, DropConfig, Dropped, LinuxSys, Policy, drop_privileges, prepare,
};

/// The allowlist of `sandbox/seccomp/base.toml` (this crate reads no TOML; the names are the
/// quoted words of its `allow` array).
fn base_allowlist() -> Vec<String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sandbox/seccomp/base.toml"),
    )
    .unwrap();
    let array = text.split("allow = [").nth(1).unwrap().split(']').next().unwrap();
    array
        .lines()
        .map(|l| l.split('#').next().unwrap())
        .flat_map(|l| l.split('"').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

fn policy() -> Policy {
    let mut seccomp = drover_sandbox::SeccompPolicy {
        allow: base_allowlist(),
        ..drover_sandbox::SeccompPolicy::default()
    };
    seccomp.errno.insert("clone3".into(), libc_enosys());
    Policy {
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        read: ["/usr", "/bin", "/lib", "/lib64", "/etc", "/proc", "/dev/null"]
            .map(PathBuf::from)
            .to_vec(),
        seccomp,
        ..Policy::default()
    }
}

fn libc_enosys() -> i32 {
    38
}

fn sh(script: &str, work_dir: &Path) -> Command {
    Command::new("/bin/sh", work_dir).args(["-c", script])
}

fn transport_reaches_fd_3_and_stdio_is_the_callers(dropped: &Dropped, work: &Path) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (mut out_read, out_write) = UnixStream::pair().unwrap();
    let mut command = sh(
        "echo \"fd=$DROVER_TRANSPORT_FD\" >&3; read line <&3; echo \"got $line\"; readlink /proc/self/fd/3",
        work,
    );
    command.transport = Some(OwnedFd::from(theirs));
    command.stdio[1] = Some(OwnedFd::from(out_write));
    let mut sandboxed = prepare(&policy(), command, dropped).unwrap().spawn().unwrap();
    let mut ours = ours;
    let mut greeting = [0u8; 5];
    ours.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"fd=3\n");
    ours.write_all(b"hello\n").unwrap();
    let death = sandboxed.wait(None).unwrap();
    assert_eq!(death.cause, Cause::Exited { code: 0 });
    drop(sandboxed);
    let mut printed = String::new();
    out_read.read_to_string(&mut printed).unwrap();
    let mut lines = printed.lines();
    assert_eq!(lines.next(), Some("got hello"));
    assert!(lines.next().unwrap().starts_with("socket:["), "{printed}");
}

fn exit_codes_and_signals_are_typed(dropped: &Dropped, work: &Path) {
    let mut s = prepare(&policy(), sh("exit 3", work), dropped).unwrap().spawn().unwrap();
    assert_eq!(s.wait(None).unwrap().cause, Cause::Exited { code: 3 });
    // A pid namespace's init ignores signals it has no handler for, so the driver kills itself
    // without one.
    let mut p = policy();
    p.namespaces = false;
    let mut s = prepare(&p, sh("kill -USR1 $$", work), dropped).unwrap().spawn().unwrap();
    assert!(!s.in_pid_namespace());
    let death = s.wait(None).unwrap();
    assert_eq!(death.cause, Cause::Signaled { signal: 10, core_dumped: false });
    assert_eq!(death.cause.exit_code(), 138);
}

fn the_deadline_and_the_supervisor_kill(dropped: &Dropped, work: &Path) {
    let mut p = policy();
    p.limits.wall_clock = Some(Duration::from_millis(300));
    let started = Instant::now();
    let mut s = prepare(&p, sh("sleep 10", work), dropped).unwrap().spawn().unwrap();
    let death = s.wait(None).unwrap();
    assert_eq!(death.cause, Cause::Deadline { after: Duration::from_millis(300) });
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut s = prepare(&policy(), sh("sleep 10", work), dropped).unwrap().spawn().unwrap();
    s.kill("protocol violation");
    let death = s.wait(None).unwrap();
    assert_eq!(death.cause, Cause::KilledBySupervisor { reason: "protocol violation".into() });
    assert_eq!(death.cause.exit_code(), 137);
}

fn a_refused_call_is_named(dropped: &Dropped, work: &Path) {
    let mut p = policy();
    // `sh` needs these; without `wait4` the shell dies on its first child.
    p.seccomp.allow.retain(|s| s != "wait4");
    let mut s =
        prepare(&p, sh("/bin/true; echo unreachable", work), dropped).unwrap().spawn().unwrap();
    match s.wait(None).unwrap().cause {
        Cause::SeccompViolation { name, .. } => assert_eq!(name, Some("wait4")),
        other => panic!("{other:?}"),
    }
}

fn a_failed_step_is_reported_not_run(dropped: &Dropped, work: &Path) {
    let err = prepare(&policy(), Command::new("/nonexistent/driver", work), dropped).unwrap_err();
    assert!(err.to_string().contains("cannot find an executable"), "{err}");
    // Executable by its permissions, but outside every grant: execve fails in the child (not in
    // the private tree: ENOENT; without it, Landlock: EACCES), which reports the step and errno
    // instead of running anything.
    let elsewhere = tempfile::tempdir().unwrap();
    let script = elsewhere.path().join("driver");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    match prepare(&policy(), Command::new(&script, work), dropped).unwrap().spawn() {
        Err(drover_sandbox::SpawnError::Child { step, source }) => {
            assert_eq!(step, drover_sandbox::spawn::ChildStep::Exec);
            assert!(matches!(source.raw_os_error(), Some(2 | 13)), "{source}");
        }
        other => panic!("{other:?}"),
    }
}

fn main() -> ExitCode {
    if let Some(reason) = drover_testkit::privileged::sandbox_unavailable() {
        // Phase A: without the privilege drop none of the cases below can run.
        drover_testkit::privileged::cannot_run(&reason, cfg!(feature = "privileged-tests"));
        return ExitCode::SUCCESS;
    }
    let dropped = drop_privileges(&DropConfig::default(), &LinuxSys).unwrap();
    assert_ne!(dropped.uid(), 0);
    // Created after the drop, so it belongs to the driver's uid.
    let work = tempfile::tempdir().unwrap();

    type Case = fn(&Dropped, &Path);
    let cases: [(&str, Case); 5] = [
        (
            "transport_reaches_fd_3_and_stdio_is_the_callers",
            transport_reaches_fd_3_and_stdio_is_the_callers,
        ),
        ("exit_codes_and_signals_are_typed", exit_codes_and_signals_are_typed),
        ("the_deadline_and_the_supervisor_kill", the_deadline_and_the_supervisor_kill),
        ("a_refused_call_is_named", a_refused_call_is_named),
        ("a_failed_step_is_reported_not_run", a_failed_step_is_reported_not_run),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        match std::panic::catch_unwind(|| case(&dropped, work.path())) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
