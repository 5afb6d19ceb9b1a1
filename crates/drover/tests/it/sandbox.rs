//! The sandbox for real: `drover exec` (Phase A, then Phase B) runs `drover sandbox probe` as
//! the driver, which reports its own confinement and tries to escape. Each protection has a
//! test that must fail to escape; the facts are asserted exactly, as youki's runtimetest does.
//!
//! These tests need what the supervisor needs: to start as root (CI runs them as root), or as
//! a user whose capability bounding set is empty. They say why when they cannot run; on CI
//! they always run. The non-root cases run through `setpriv` (util-linux), as a container with
//! `USER 65534` and `--cap-drop ALL` would start drover.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::sandbox_harness;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sandbox_harness::*;
use serde_json::Value;

#[test]
fn the_probe_sees_exactly_the_confinement_it_should_as_root_and_as_non_root() {
    require_privilege!();
    let profile = profile("");
    for who in both() {
        let (output, lines) = probe(who, &profile, &[]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let facts = &lines[0]["facts"];
        let status = &facts["status"];
        for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status[key], "0000000000000000", "{key}");
        }
        assert_eq!(status["NoNewPrivs"], "1");
        assert_eq!(status["Seccomp"], "2");
        // The jail's EPERM rules; clone3 and non-unix socket families -> ENOSYS; the allowlist.
        assert_eq!(status["Seccomp_filters"], "3");
        assert_eq!(status["Uid"], "65534 65534 65534 65534");
        assert_eq!(status["Gid"], "65534 65534 65534 65534");
        assert_eq!(status["Groups"], "");
        assert_eq!(facts["fds"], serde_json::json!([0, 1, 2]));
        let env: BTreeMap<String, String> = serde_json::from_value(facts["env"].clone()).unwrap();
        assert_eq!(
            env,
            BTreeMap::from([
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
                ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ])
        );
        // The first child of the sandbox's init (pid 1) in its own pid namespace.
        assert_eq!(facts["pid"], 2);
    }
}

#[test]
fn five_zero_capability_masks_through_a_shell() {
    require_privilege!();
    let profile = profile("");
    for who in both() {
        let output = run(who, &profile, &["/bin/sh", "-c", "grep Cap /proc/self/status"]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let text = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines.iter().all(|l| l.ends_with("\t0000000000000000")), "{text}");
    }
}

#[test]
fn no_inherited_fd_reaches_the_driver() {
    require_privilege!();
    // A pipe without close-on-exec: drover exec inherits it, the driver must not.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let profile = profile("");
    let (output, lines) = probe(As::Root, &profile, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(lines[0]["facts"]["fds"], serde_json::json!([0, 1, 2]));
    drop((read_end, write_end));
}

#[test]
fn regaining_root_fails_at_every_layer() {
    require_privilege!();
    for who in both() {
        // seccomp: setuid is not in the allowlist.
        let (output, _) = probe(who, &profile(""), &["setuid0"]);
        killed_for(&output, "setuid");
        // The kernel: with setuid allowed, uid 0 is not even mapped in the user namespace.
        let allowed = profile("[seccomp]\nallow = [\"setuid\"]\n");
        let (output, lines) = probe(who, &allowed, &["setuid0"]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_denied(&lines, "setuid0", &["EINVAL", "EPERM"]);
        // Without namespaces the same call meets a plain uid 65534: EPERM.
        let flat = profile("namespaces = false\n[seccomp]\nallow = [\"setuid\"]\n");
        let (output, lines) = probe(who, &flat, &["setuid0"]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_denied(&lines, "setuid0", &["EPERM"]);
    }
}

#[test]
fn the_supervisors_environ_stays_unreadable() {
    require_privilege!();
    for extra in ["", "namespaces = false\n"] {
        let (output, lines) = probe(As::Root, &profile(extra), &["environ:$SUPERVISOR"]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        // In the private tree the supervisor's pid is not even in /proc (ENOENT).
        assert_denied(&lines, "environ", &["EACCES", "EPERM", "ENOENT"]);
        let env = lines[0]["facts"]["env"].to_string();
        assert!(!env.contains("FAKE_SUPERVISOR_SECRET"), "{env}");
    }
}

#[test]
fn the_supervisor_cannot_be_signalled_or_traced() {
    require_privilege!();
    for who in both() {
        // With a pid namespace the supervisor's pid names nothing; without one, Landlock's
        // signal scoping (ABI 6) refuses the signal.
        for extra in ["", "namespaces = false\n"] {
            let (output, lines) = probe(who, &profile(extra), &["signal:$SUPERVISOR"]);
            assert_eq!(output.status.code(), Some(0), "{extra}: {}", stderr(&output));
            assert_denied(&lines, "signal", &["ESRCH", "EPERM"]);
        }
        // ptrace is not in the allowlist: killed, and named.
        let (output, _) = probe(who, &profile(""), &["ptrace:$SUPERVISOR"]);
        killed_for(&output, "ptrace");
        // Allowed by seccomp, the kernel still refuses (pid namespace, Landlock, non-dumpable).
        for extra in ["", "namespaces = false\n"] {
            let allowed = profile(&format!("{extra}[seccomp]\nallow = [\"ptrace\"]\n"));
            let (output, lines) = probe(who, &allowed, &["ptrace:$SUPERVISOR"]);
            assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
            assert_denied(&lines, "ptrace", &["ESRCH", "EPERM"]);
        }
    }
}

#[test]
fn no_network_socket_can_be_opened_unless_the_network_is_on() {
    require_privilege!();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("connect:{}", listener.local_addr().unwrap());
    for extra in ["", "namespaces = false\n"] {
        let (output, lines) = probe(As::Root, &profile(extra), &["socket-inet", &target]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_denied(&lines, "socket-inet", &["ENOSYS"]);
        assert_denied(&lines, "connect", &["ENOSYS"]);
    }
    // The control: with the network on, the same connect reaches the listener.
    let (output, lines) = probe(As::Root, &profile("network = true\n"), &[&target]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(outcome(&lines, "connect")["succeeded"], true, "{lines:?}");
}

#[test]
fn writes_outside_the_work_dir_fail_and_inside_succeed() {
    require_privilege!();
    let outside = std::env::temp_dir().join(format!("drover-escape-{}", std::process::id()));
    let outside_text = format!("write:{}", outside.display());
    for who in both() {
        let (output, lines) = probe(who, &profile(""), &[&outside_text, "write:inside.txt"]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        // /tmp is world-writable on the host: in the private tree it is not there (its root is
        // a read-only tmpfs: EROFS); without it, Landlock stands in the way (EACCES).
        assert_denied(&lines, "write:/", &["EACCES", "EROFS", "ENOENT"]);
        assert!(!outside.exists());
        assert_eq!(outcome(&lines, "write:inside")["succeeded"], true);
    }
}

#[test]
fn a_denied_system_call_kills_the_sandbox_and_is_named() {
    require_privilege!();
    let (output, lines) = probe(As::Root, &profile(""), &["syscall:keyctl"]);
    killed_for(&output, "keyctl");
    assert_eq!(lines.len(), 1, "nothing after the refused call runs");

    // Kernel kill mode: SIGSYS, and the cause says the call is not known.
    let (output, _) = probe(
        As::Root,
        &profile("[seccomp]\ndefault_action = \"kill_process\"\n"),
        &["syscall:keyctl"],
    );
    assert_eq!(output.status.code(), Some(159));
    assert!(stderr(&output).contains("killed by seccomp (SIGSYS)"), "{}", stderr(&output));

    // Log mode lets it run and names it afterwards.
    let (output, lines) =
        probe(As::Root, &profile("[seccomp]\ndefault_action = \"log\"\n"), &["syscall:keyctl"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(lines.len(), 2);
    assert!(stderr(&output).contains("log mode: keyctl (number "), "{}", stderr(&output));
}

#[test]
fn nothing_outlives_the_supervisor() {
    require_privilege!();
    // SIGKILL to the supervisor: PDEATHSIG kills the driver, the init of its pid namespace,
    // and the kernel kills everything else in the namespace.
    let (mut child, pids) = start_sleepers(&profile(""));
    child.kill().unwrap();
    child.wait().unwrap();
    wait_dead(&pids, "pid namespace, SIGKILL");

    // Without namespaces a SIGKILLed supervisor can only take the driver itself (PDEATHSIG);
    // a process the driver forked survives it (the documented degradation), so it is killed here.
    let flat = profile("namespaces = false\n");
    let (mut child, pids) = start_sleepers(&flat);
    child.kill().unwrap();
    child.wait().unwrap();
    wait_dead(&pids[..1], "no namespaces, SIGKILL");
    signal(pids[1], nix::sys::signal::SIGKILL);

    // Stopped any other way, the supervisor kills the driver's whole process group.
    let (child, pids) = start_sleepers(&flat);
    signal(child.id(), nix::sys::signal::SIGTERM);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(137));
    wait_dead(&pids, "no namespaces, SIGTERM");
}

#[test]
fn exit_codes_signals_deadlines_and_stop_requests() {
    require_privilege!();
    let plain = profile("");
    assert_eq!(run(As::Root, &plain, &["/bin/sh", "-c", "exit 7"]).status.code(), Some(7));
    // The shell is PID 1 of its namespace, which ignores signals it has no handler for; the
    // inner shell is an ordinary process.
    let output = run(As::Root, &plain, &["/bin/sh", "-c", "/bin/sh -c 'kill -TERM $$'; exit $?"]);
    assert_eq!(output.status.code(), Some(143));

    let deadline = profile("[limits]\nwall_clock_seconds = 1\n");
    let started = Instant::now();
    let output = run(As::Root, &deadline, &["/bin/sleep", "30"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(137));
    assert!(stderr(&output).contains("wall-clock deadline of 1 s passed"), "{}", stderr(&output));

    let child = exec_command(As::Root, &plain, &["/bin/sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    signal(child.id(), nix::sys::signal::SIGTERM);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(137));
    assert!(
        stderr(&output).contains("killed by the supervisor: stop requested"),
        "{}",
        stderr(&output)
    );
}

/// Runs `args` chrooted into a bind mount of `/` in a private mount namespace: there the kernel
/// refuses to create user namespaces (EPERM), a real kernel without them.
fn without_user_namespaces(args: &[&str]) -> Output {
    let root = tempfile::tempdir().unwrap();
    let mut script = format!(
        "mount --rbind / {} && exec chroot {}",
        root.path().display(),
        root.path().display()
    );
    for arg in args {
        script.push(' ');
        script.push_str(&shell_quote(arg));
    }
    Command::new("unshare")
        .args(["--mount", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn status_tells_the_truth_and_a_required_missing_feature_fails_closed() {
    require_privilege!();
    if !is_root() {
        drover_testkit::skip_or_fail!(
            "building a kernel environment without user namespaces needs root"
        );
    }
    let drover = probe_bin();
    let output = Command::new(&drover).args(["sandbox", "status", "--json"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["privilege_drop"]["ok"], true);
    assert_eq!(status["privilege_drop"]["uid"], 65534);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(status["kernel"], release.trim());
    let actions = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap();
    assert_eq!(status["seccomp"]["user_notification"], actions.contains("user_notif"));
    // Cross-check namespaces with util-linux, as uid 65534 without capabilities.
    let unshare_works = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--bounding-set=-all", "--"])
        .args(["unshare", "--user", "--pid", "--net", "--mount", "--fork", "/bin/true"])
        .status()
        .unwrap()
        .success();
    assert_eq!(status["namespaces"]["available"], unshare_works);
    assert_eq!(status["private_tree"]["available"], unshare_works);
    assert_eq!(status["pid1"], false);
    assert_eq!(status["subreaper"], true, "Phase A makes the supervisor a subreaper");

    // Now a kernel environment without user namespaces.
    let output = without_user_namespaces(&[&drover, "sandbox", "status", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["namespaces"]["available"], false);
    assert!(status["degradations"][0].as_str().unwrap().starts_with("no namespaces"));
    // What is lost without them, said: the private tree.
    assert_eq!(status["private_tree"]["available"], false);
    assert!(status["degradations"][1].as_str().unwrap().starts_with("no private mount tree"));

    let required = profile("require = [\"namespaces\"]\n");
    let output = without_user_namespaces(&[
        &drover,
        "exec",
        "--profile",
        &required.path.display().to_string(),
        "--",
        "/bin/true",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("the profile requires namespaces, which is unavailable"),
        "{}",
        stderr(&output)
    );
    // Not required: it runs, degraded, and says so.
    let optional = profile("");
    let output = without_user_namespaces(&[
        &drover,
        "exec",
        "--profile",
        &optional.path.display().to_string(),
        "--",
        "/bin/true",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("drover: sandbox: degraded: no namespaces"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_non_root_start_with_a_bounding_set_fails_closed() {
    if !is_root() {
        drover_testkit::skip_or_fail!(
            "starting drover as another uid with a full bounding set needs root"
        );
    }
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"])
        .args([&probe_bin(), "exec", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains("privilege drop failed") && err.contains("CapBnd"), "{err}");
    assert!(err.contains("--cap-drop ALL"), "{err}");
}

#[test]
fn a_profile_error_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[limits]\nopen_files = 2\n[seccomp]\ndefault_action = \"maybe\"\n")
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["exec", "--profile", &path.display().to_string(), "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("at /limits/open_files") && err.contains("at /seccomp/default_action"),
        "{err}"
    );
}

#[test]
fn an_oom_kill_in_the_memory_cgroup_is_named() {
    require_privilege!();
    if !is_root() {
        drover_testkit::skip_or_fail!("preparing a memory cgroup needs root at start-up");
    }
    if drover_sandbox::cgroup::memory_hierarchy().is_none() {
        drover_testkit::skip_or_fail!("this kernel has no memory cgroup controller (v1 or v2)");
    }
    let limited = profile("[limits]\nmemory_bytes = 33554432\n");
    let (output, lines) = probe(As::Root, &limited, &["alloc:8", "alloc:256"]);
    assert_eq!(outcome(&lines, "alloc:8")["succeeded"], true, "within the limit");
    assert_eq!(output.status.code(), Some(137), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("killed by the kernel's OOM killer")
            && stderr(&output).contains("33554432 bytes"),
        "{}",
        stderr(&output)
    );
    // A plain SIGKILL is not mistaken for an OOM kill.
    let (output, _) = probe(As::Root, &limited, &["alloc:8"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

/// Pids of processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<u32> {
    let wanted = argv.iter().map(|a| format!("{a}\0")).collect::<String>();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes())
                && !is_dead(*pid)
        })
        .collect()
}

#[test]
fn orphans_that_leave_the_process_group_are_reaped_as_subreaper_and_as_pid_1() {
    require_privilege!();
    if !is_root() {
        drover_testkit::skip_or_fail!("running drover as PID 1 of a new pid namespace needs root");
    }
    // Without namespaces, a daemonised grandchild escapes the driver's process group; the
    // supervisor (a subreaper, or PID 1 of a container) inherits it and must not leave it.
    let flat = profile("namespaces = false\n");
    let seconds = format!("{}", 30_000 + std::process::id() % 10_000);
    let script = format!("/usr/bin/setsid --fork /bin/sleep {seconds}; /bin/sleep 0.3");
    for as_pid1 in [false, true] {
        let mut command = exec_command(As::Root, &flat, &["/bin/sh", "-c", &script]);
        if as_pid1 {
            let inner = command;
            command = Command::new("unshare");
            command.args(["--pid", "--fork", "--kill-child"]).arg(inner.get_program());
            command.args(inner.get_args()).current_dir("/");
        }
        // Not pipes: a leaked daemon would hold them open and hang the test instead of failing it.
        let status = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(0), "pid 1: {as_pid1}");
        let left = processes_running(&["/bin/sleep", &seconds]);
        for pid in &left {
            signal(*pid, nix::sys::signal::SIGKILL);
        }
        assert!(left.is_empty(), "pid 1: {as_pid1}: {left:?} outlived drover exec");
    }
}

/// Runs `args` under the seccomp policy container runtimes apply by default to a process
/// without `CAP_SYS_ADMIN` (Docker's and containerd's `RuntimeDefault`, as far as process
/// creation goes): `clone3` answers `ENOSYS` so that libc falls back to `clone`, `unshare` is
/// refused, and `clone` with `CLONE_NEWUSER` is refused. The filter is installed by a small
/// Python program (ctypes: `prctl` no-new-privs, then `PR_SET_SECCOMP`), which then execs.
fn under_container_default_seccomp(args: &[String]) -> Output {
    const WRAPPER: &str = r#"
import ctypes, os, platform, struct, sys
clone_nr, unshare_nr = {"x86_64": (56, 272), "aarch64": (220, 97)}[platform.machine()]
ALLOW, ERRNO = 0x7FFF0000, 0x00050000
LD_ABS, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
program = [
    (LD_ABS, 0, 0, 0),                      # the system call number
    (JEQ, 0, 1, 435), (RET, 0, 0, ERRNO | 38),  # clone3: ENOSYS
    (JEQ, 0, 1, unshare_nr), (RET, 0, 0, ERRNO | 1),  # unshare: EPERM
    (JEQ, 0, 3, clone_nr),
    (LD_ABS, 0, 0, 16),                     # clone's flags (low word)
    (JSET, 0, 1, 0x10000000), (RET, 0, 0, ERRNO | 1),  # clone(CLONE_NEWUSER): EPERM
    (RET, 0, 0, ALLOW),
]
code = b"".join(struct.pack("HBBI", *op) for op in program)
buffer = ctypes.create_string_buffer(code)
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(program), ctypes.addressof(buffer))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS"
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, os.strerror(ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"#;
    Command::new("python3")
        .arg("-c")
        .arg(WRAPPER)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn under_a_container_runtimes_default_seccomp_the_sandbox_degrades_loudly_and_still_confines() {
    require_privilege!();
    let profile = profile("");
    let drover = probe_bin();
    let status =
        under_container_default_seccomp(&[drover.clone(), "sandbox".into(), "status".into()]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("namespaces       unavailable"), "{text}");
    assert!(text.contains("degradation      no namespaces"), "{text}");

    // clone3 is ENOSYS here: the spawn must fall back to clone, not fail.
    let output = under_container_default_seccomp(&[
        drover.clone(),
        "exec".into(),
        "--profile".into(),
        profile.path.display().to_string(),
        "--".into(),
        drover,
        "sandbox".into(),
        "probe".into(),
        "--try=socket-inet".into(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("degraded: no namespaces"), "{}", stderr(&output));
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let status = &lines[0]["facts"]["status"];
    for mask in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status[mask], "0000000000000000", "{mask}: {status}");
    }
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(status["Seccomp"], "2");
    // Without a pid namespace the driver is not pid 1 of its own namespace.
    assert_eq!(lines[0]["facts"]["pid"], lines[0]["facts"]["proc_pid"]);
    assert_ne!(status["Uid"].as_str().unwrap().split_whitespace().next(), Some("0"));
    // Still no network: socket families are denied by seccomp.
    assert_eq!(outcome(&lines, "socket-inet")["succeeded"], false);
}
