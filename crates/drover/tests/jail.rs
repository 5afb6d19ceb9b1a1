//! Sandbox round 2 (issue 13): hostile drivers under `drover exec` try what the first round let
//! through, and each attempt must fail the way the jail is designed to make it fail. Like
//! `sandbox.rs`, these need root (CI) or an empty capability bounding set, and say why when
//! they cannot run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod sandbox_harness;

use std::process::{Command, Stdio};

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
