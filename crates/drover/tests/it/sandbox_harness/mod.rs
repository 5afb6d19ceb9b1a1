//! Shared by the tests that run `drover exec` with `drover sandbox probe` as the driver
//! (`sandbox.rs`, `jail.rs`): the probe binary, profiles, and how outcomes are read.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A fake secret put into the supervisor's environment; it must never reach the driver or any
/// output.
pub const FAKE_SECRET: &str = "drover-test-secret-3f9a1c";

/// Ends the calling test when the sandbox cannot fully run here (see
/// `drover_testkit::privileged`: a failure under the `privileged-tests` feature, which CI turns
/// on; a printed skip otherwise).
#[macro_export]
macro_rules! require_privilege {
    () => {
        if let Some(reason) = drover_testkit::privileged::sandbox_unavailable() {
            drover_testkit::skip_or_fail!("{reason}");
        }
    };
}

pub fn is_root() -> bool {
    drover_testkit::privileged::is_root()
}

/// A world-readable copy of the drover binary (the target directory may not be reachable by
/// uid 65534), and the directory holding it.
pub fn probe_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("drover-sandbox-test-").tempdir().unwrap().keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_drover"), dir.join("drover")).unwrap();
        std::fs::set_permissions(dir.join("drover"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        dir
    })
}

pub fn probe_bin() -> String {
    probe_dir().join("drover").display().to_string()
}

pub fn repository_sandbox() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sandbox")
}

/// A profile file including (a world-readable copy of) the default profile, allowing the
/// probe binary to be read and executed, plus `extra` TOML.
pub struct Profile {
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn profile(extra: &str) -> Profile {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("seccomp")).unwrap();
    for file in ["default.toml", "seccomp/base.toml"] {
        std::fs::copy(repository_sandbox().join(file), dir.path().join(file)).unwrap();
    }
    for sub in ["", "seccomp"] {
        std::fs::set_permissions(dir.path().join(sub), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let path = dir.path().join("test.toml");
    // Top-level keys must come before the first table.
    let (top, tables) =
        match extra.find("\n[").map(|i| i + 1).or(extra.starts_with('[').then_some(0)) {
            Some(i) => extra.split_at(i),
            None => (extra, ""),
        };
    let text = format!(
        "include = [\"default.toml\"]\n{top}\n[filesystem]\nread = [\"{}\"]\n{tables}\n",
        probe_dir().display()
    );
    std::fs::write(&path, text).unwrap();
    Profile { _dir: dir, path }
}

/// How `drover exec` is started.
#[derive(Clone, Copy, PartialEq)]
pub enum As {
    /// As this process (root on CI).
    Root,
    /// As uid/gid 65534 with no capabilities at all, like a `--cap-drop ALL` container.
    NonRoot,
}

pub fn exec_command(who: As, profile: &Profile, cmd: &[&str]) -> Command {
    let drover = probe_bin();
    let mut args: Vec<String> = Vec::new();
    let program = match who {
        As::Root => drover.clone(),
        As::NonRoot => {
            args.extend(
                [
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--inh-caps=-all",
                    "--bounding-set=-all",
                    "--",
                    &drover,
                ]
                .map(String::from),
            );
            "setpriv".to_owned()
        }
    };
    args.extend(["exec", "--profile", &profile.path.display().to_string(), "--"].map(String::from));
    args.extend(cmd.iter().map(|s| s.to_string()));
    let mut command = Command::new(program);
    command.args(args).env("FAKE_SUPERVISOR_SECRET", FAKE_SECRET).current_dir("/");
    command
}

pub fn run(who: As, profile: &Profile, cmd: &[&str]) -> Output {
    let output = exec_command(who, profile, cmd).stdin(Stdio::null()).output().unwrap();
    let all = [&output.stdout[..], &output.stderr[..]].concat();
    assert!(
        !String::from_utf8_lossy(&all).contains(FAKE_SECRET),
        "the supervisor's secret appeared in the output"
    );
    output
}

/// Runs the probe with `tries` under `drover exec`; `$SUPERVISOR` in a try is replaced by the
/// pid of `drover exec` (a shell `exec`s it, keeping its pid).
pub fn probe(who: As, profile: &Profile, tries: &[&str]) -> (Output, Vec<Value>) {
    let mut cmd = vec![probe_bin(), "sandbox".into(), "probe".into()];
    for t in tries {
        cmd.push(format!("--try={t}"));
    }
    let inner = exec_command(who, profile, &cmd.iter().map(String::as_str).collect::<Vec<_>>());
    let mut script = String::from("exec");
    script.push(' ');
    script.push_str(&shell_quote(inner.get_program().to_str().unwrap()));
    for arg in inner.get_args() {
        script.push(' ');
        script.push_str(
            &shell_quote(&arg.to_str().unwrap().replace("$SUPERVISOR", "\u{1}"))
                .replace('\u{1}', "'\"$$\"'"),
        );
    }
    let output = Command::new("/bin/sh")
        .args(["-c", &script])
        .env("FAKE_SUPERVISOR_SECRET", FAKE_SECRET)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = [&output.stdout[..], &output.stderr[..]].concat();
    assert!(
        !String::from_utf8_lossy(&all).contains(FAKE_SECRET),
        "the secret appeared in the output"
    );
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (output, lines)
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The outcome line of attempt `t`.
pub fn outcome<'a>(lines: &'a [Value], t: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["try"].as_str().is_some_and(|s| s.starts_with(t)))
        .unwrap_or_else(|| panic!("no outcome for {t} in {lines:?}"))
}

pub fn assert_denied(lines: &[Value], t: &str, errnos: &[&str]) {
    let line = outcome(lines, t);
    assert_eq!(line["succeeded"], false, "{t} escaped: {line}");
    let errno = line["errno"].as_str().unwrap();
    assert!(errnos.contains(&errno), "{t}: errno {errno}, expected one of {errnos:?}");
}

pub fn killed_for(output: &Output, syscall: &str) {
    assert_eq!(output.status.code(), Some(159), "{}", stderr(output));
    let err = stderr(output);
    let line = err
        .lines()
        .find(|l| l.contains("killed by the sandbox"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&format!("system call {syscall} (number ")), "{line}");
}

pub fn both() -> Vec<As> {
    if is_root() { vec![As::Root, As::NonRoot] } else { vec![As::NonRoot] }
}

pub fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().unwrap_or("").trim_start().starts_with(['Z', 'X']),
    }
}

/// Starts the probe with `fork-sleep` under `drover exec`; returns drover exec and the host
/// pids of every process below it (the sandbox's init when there is one, the probe, and the
/// sleeper it forked), parents first.
pub fn start_sleepers(profile: &Profile) -> (std::process::Child, Vec<u32>) {
    start_sleepers_after(profile, &[])
}

/// [`start_sleepers`] with `tries` attempted before the fork.
pub fn start_sleepers_after(profile: &Profile, tries: &[&str]) -> (std::process::Child, Vec<u32>) {
    let probe_path = probe_bin();
    let mut cmd = vec![probe_path.as_str(), "sandbox", "probe"];
    let tries: Vec<String> = tries.iter().map(|t| format!("--try={t}")).collect();
    cmd.extend(tries.iter().map(String::as_str));
    cmd.push("--try=fork-sleep");
    let mut child = exec_command(As::Root, profile, &cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        assert_ne!(reader.read_line(&mut line).unwrap(), 0, "the probe ended early");
        let value: Value = serde_json::from_str(&line).unwrap();
        if value["try"] == "fork-sleep" {
            assert_eq!(value["succeeded"], true, "{value}");
            break;
        }
    }
    // Keep the pipe open: a probe writing to a closed pipe would die of SIGPIPE.
    std::mem::forget(reader);
    let pids = descendants(child.id());
    assert!(pids.len() >= 2, "probe and sleeper: {pids:?}");
    assert!(pids.iter().all(|p| !is_dead(*p)), "all run before the supervisor dies");
    (child, pids)
}

/// Host pids of every descendant of `pid`, parents first (from `/proc/PID/task/*/children`).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            out.push(child);
            out.extend(descendants(child));
        }
    }
    out
}

/// Sends `sig` to `pid`; a process that is already gone is fine.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

pub fn wait_dead(pids: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|p| is_dead(*p)) {
        assert!(Instant::now() < deadline, "{what}: {pids:?} outlived the supervisor");
        std::thread::sleep(Duration::from_millis(20));
    }
}
