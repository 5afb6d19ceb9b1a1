//! Sandbox round 2 (issue 13): hostile drivers under `drover exec` try what the first round let
//! through, and each attempt must fail the way the jail is designed to make it fail. Like
//! `sandbox.rs`, these need root (CI) or an empty capability bounding set, and say why when
//! they cannot run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::sandbox_harness;

use std::process::{Command, Stdio};

use sandbox_harness::Profile;

use sandbox_harness::*;
use serde_json::Value;

#[test]
fn no_new_namespace_can_be_created_inside() {
    require_privilege!();
    for who in both() {
        // clone with CLONE_NEWUSER | CLONE_NEWNET, unshare(CLONE_NEWUSER), setns: refused with
        // EPERM (an errno verdict outranks the allowlist's user notification), and the sandbox
        // lives on.
        let (output, lines) = probe(who, &profile(""), &["clone-ns", "userns", "syscall:setns"]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_denied(&lines, "clone-ns", &["EPERM"]);
        assert_denied(&lines, "userns", &["EPERM"]);
        assert_denied(&lines, "syscall:setns", &["EPERM"]);
    }
    // A profile that allows unshare and setns still gets no namespace.
    let allowed = profile("[seccomp]\nallow = [\"unshare\", \"setns\"]\n");
    let (output, lines) = probe(As::Root, &allowed, &["userns", "syscall:setns"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_denied(&lines, "userns", &["EPERM"]);
    assert_denied(&lines, "syscall:setns", &["EPERM"]);
}

#[test]
fn the_parent_death_signal_cannot_be_cleared_and_nothing_survives_a_killed_exec() {
    require_privilege!();
    let (output, lines) = probe(As::Root, &profile(""), &["pdeathsig"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_denied(&lines, "pdeathsig", &["EPERM"]);
    // The attack: clear PDEATHSIG, fork, and outlive a SIGKILLed `drover exec`.
    for extra in ["", "namespaces = false\n"] {
        let (mut child, pids) = start_sleepers_after(&profile(extra), &["pdeathsig"]);
        child.kill().unwrap();
        child.wait().unwrap();
        // Without namespaces only the driver itself is bound to die with drover exec.
        let bound = if extra.is_empty() { &pids[..] } else { &pids[..1] };
        wait_dead(bound, extra);
        for pid in &pids {
            signal(*pid, nix::sys::signal::SIGKILL);
        }
    }
}

/// Runs `drover exec` on a pseudo-terminal (Python's `pty.openpty`): the slave is its stdin and
/// stderr. Prints the exec's stdout, then one JSON line saying whether the terminal's termios
/// and window size are what they were before.
const ON_A_PTY: &str = r#"
import fcntl, json, pty, subprocess, sys, termios
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, b"\x18\x00\x50\x00\x00\x00\x00\x00")
before = (termios.tcgetattr(slave), fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
run = subprocess.run(sys.argv[1:], stdin=slave, stderr=slave, stdout=subprocess.PIPE)
after = (termios.tcgetattr(slave), fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
sys.stdout.write(run.stdout.decode())
print(json.dumps({"code": run.returncode, "termios": before[0] == after[0], "winsize": before[1] == after[1]}))
"#;

#[test]
fn the_operators_terminal_cannot_be_reconfigured() {
    require_privilege!();
    let profile = profile("");
    let probe_path = probe_bin();
    let exec = exec_command(
        As::Root,
        &profile,
        &[
            &probe_path,
            "sandbox",
            "probe",
            "--try=tty-echo:0",
            "--try=tty-winsize:0",
            "--try=tty-echo:2",
            "--try=tty-winsize:2",
        ],
    );
    let output = Command::new("python3")
        .args(["-c", ON_A_PTY])
        .arg(exec.get_program())
        .args(exec.get_args())
        .env("FAKE_SUPERVISOR_SECRET", FAKE_SECRET)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let verdict = lines.last().unwrap();
    assert_eq!(verdict["code"], 0, "{}", stderr(&output));
    // stdin: the terminal is not handed over at all (drover exec gives /dev/null instead).
    assert_denied(&lines, "tty-echo:0", &["ENOTTY"]);
    assert_denied(&lines, "tty-winsize:0", &["ENOTTY", "EPERM"]);
    // stderr is still the terminal: it can be written to, never reconfigured.
    assert_denied(&lines, "tty-echo:2", &["EPERM"]);
    assert_denied(&lines, "tty-winsize:2", &["EPERM"]);
    assert_eq!(verdict["termios"], true, "echo or another termios flag changed");
    assert_eq!(verdict["winsize"], true, "the window size changed");
}

/// Runs `script` with `/bin/sh -c` in the sandbox; its stdout.
fn shell(profile: &Profile, script: &str) -> String {
    let output = run(As::Root, profile, &["/bin/sh", "-c", script]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    String::from_utf8(output.stdout).unwrap()
}

/// `key=value` lines of a script's output.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

#[test]
fn the_hosts_proc_is_invisible() {
    require_privilege!();
    let out = shell(
        &profile(""),
        "echo pids=$(ls /proc | grep -c '^[0-9]*$'); \
         echo maxpid=$(ls /proc | grep '^[0-9]*$' | sort -n | tail -1); \
         for f in cmdline keys kallsyms; do echo $f=$(wc -c < /proc/$f); done; \
         echo tcp=$(wc -l < /proc/net/tcp); \
         echo mounts=$(cut -d' ' -f5 /proc/self/mountinfo | tr '\\n' ' ')",
    );
    // Only the sandbox's processes: its init, the shell, and the commands it runs.
    let pids: usize = field(&out, "pids").parse().unwrap();
    assert!(pids <= 5, "{out}");
    let max: u32 = field(&out, "maxpid").parse().unwrap();
    assert!(max < 16, "pids are the sandbox's own: {out}");
    // The kernel command line, keys and kernel symbols read as empty.
    for masked in ["cmdline", "keys", "kallsyms"] {
        assert_eq!(field(&out, masked), "0", "{masked}: {out}");
    }
    // The network namespace's own table: its header only, no host listener.
    assert_eq!(field(&out, "tcp"), "1", "{out}");
    // Only the tree's own mount points, nothing else of the host's.
    let allowed =
        ["/usr", "/bin", "/sbin", "/lib", "/etc", "/opt", "/sys", "/dev", "/proc", "/tmp"];
    for mount in field(&out, "mounts").split_whitespace() {
        assert!(
            mount == "/" || allowed.iter().any(|a| mount.starts_with(a)),
            "{mount} is not part of the private tree: {out}"
        );
    }
}

#[test]
fn a_host_unix_socket_cannot_be_reached() {
    require_privilege!();
    let path = std::env::temp_dir().join(format!("drover-jail-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let target = format!("unix:{}", path.display());
    for who in both() {
        let (output, lines) = probe(who, &profile(""), &[&target]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        // Not in the tree at all.
        assert_denied(&lines, "unix:", &["ENOENT"]);
    }
    drop(listener);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn the_work_directory_leaves_nothing_and_plants_nothing_on_the_host() {
    require_privilege!();
    let profile = profile("");
    let mut child = exec_command(
        As::Root,
        &profile,
        &[
            "/bin/sh",
            "-c",
            "mkdir sub && echo x > sub/f && chmod 000 sub && cp /bin/true planted && \
             chmod 4755 planted && echo cwd=$(pwd) && \
             echo options=$(grep \" $(pwd) \" /proc/self/mountinfo) && sleep 30",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    for _ in 0..2 {
        std::io::BufRead::read_line(&mut reader, &mut out).unwrap();
    }
    let cwd = std::path::PathBuf::from(field(&out, "cwd"));
    // The driver's files live in its own tmpfs, nosuid and nodev: on the host, the work
    // directory is empty, so no other user can reach the planted setuid binary.
    let options = field(&out, "options");
    assert!(options.contains(" - tmpfs ") && options.contains("nosuid"), "{options}");
    assert!(options.contains("nodev"), "{options}");
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "{out}");
    assert!(!cwd.join("planted").exists());
    signal(child.id(), nix::sys::signal::SIGTERM);
    child.wait().unwrap();
    // The chmod 000 directory went with the namespace; the host-side directory is removed.
    assert!(!cwd.exists(), "{} left behind", cwd.display());
}

#[test]
fn the_work_directory_is_bounded_in_bytes_and_inodes() {
    require_privilege!();
    // The defaults, as the kernel reports them (statfs of the work directory).
    let out = shell(&profile(""), "echo fs=$(stat -f -c '%b*%S %c' .)");
    assert_eq!(field(&out, "fs"), format!("{}*4096 16384", (256 << 20) / 4096), "{out}");
    // A profile's smaller limits, filled: ENOSPC, not the host's disk.
    let small = profile("[limits]\nwork_dir_bytes = 1048576\nwork_dir_inodes = 64\n");
    let out = shell(
        &small,
        "head -c 3000000 /dev/zero > big 2>/dev/null; echo bytes=$(wc -c < big); rm big; \
         i=0; while true 2>/dev/null > f$i; do i=$((i+1)); done; echo files=$i",
    );
    assert_eq!(field(&out, "bytes"), "1048576", "{out}");
    let files: u32 = field(&out, "files").parse().unwrap();
    assert!((60..64).contains(&files), "{out}");
}

#[test]
fn the_sandboxs_init_is_pid_1_reaps_orphans_and_reports_the_drivers_own_death() {
    require_privilege!();
    let profile = profile("");
    // The driver is pid 2; init's command line (a copy of drover's) is wiped; an orphan is
    // reaped by init (no zombie left); and a SIGTERM the driver sends itself kills it, which
    // as a namespace's pid 1 it would have ignored.
    let output = run(
        As::Root,
        &profile,
        &[
            "/bin/sh",
            "-c",
            "echo pid=$$; echo init=$(tr -d '\\000' < /proc/1/cmdline | wc -c); \
             (/bin/sleep 0.1 &); /bin/sleep 0.5; \
             echo zombies=$(cat /proc/[0-9]*/stat | grep -c ') Z '); kill -TERM $$",
        ],
    );
    let out = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(output.status.code(), Some(143), "{out}{}", stderr(&output));
    assert_eq!(field(&out, "pid"), "2", "{out}");
    assert_eq!(field(&out, "init"), "0", "{out}");
    assert_eq!(field(&out, "zombies"), "0", "{out}");
}
