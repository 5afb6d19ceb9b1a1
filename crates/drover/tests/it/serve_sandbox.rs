//! `drover serve` as a real process with hostile drivers (as root in CI, so Phase A really
//! drops to 65534): what a driver writes cannot forge or corrupt the supervisor's log; the
//! supervisor's data and work directories are private, a data directory inside a tree some
//! profile grants is refused, and a work directory goes whatever its driver did to it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Serve, config_dir};
use drover_api::token::ApiToken;

/// A world-readable directory with the test drivers and a profile that includes (a copy of)
/// the default profile and lets the driver read that directory.
fn drivers_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("drover-serve-sandbox-").tempdir().unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir(dir.path().join("seccomp")).unwrap();
    for file in ["default.toml", "seccomp/base.toml"] {
        std::fs::copy(manifest.join("../../sandbox").join(file), dir.path().join(file)).unwrap();
    }
    for script in ["_wire.py", "forge_log.py", "plant_work_dir.py"] {
        std::fs::copy(manifest.join("tests/drivers").join(script), dir.path().join(script))
            .unwrap();
    }
    std::fs::write(
        dir.path().join("test.toml"),
        format!("include = [\"default.toml\"]\n[filesystem]\nread = [{:?}]\n", dir.path()),
    )
    .unwrap();
    chmod_tree(dir.path());
    dir
}

fn chmod_tree(path: &Path) {
    let mode = if path.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chmod_tree(&entry.unwrap().path());
        }
    }
}

/// A `[[drivers]]` entry running `script` from `dir` under its test profile.
fn python_driver(name: &str, dir: &Path, script: &str, args: &[&Path]) -> String {
    let args: String = args.iter().map(|a| format!(", {a:?}")).collect();
    format!(
        "\n[[drivers]]\nname = {name:?}\ncommand = [\"/usr/bin/python3\", {:?}{args}]\nprofile = {:?}\n",
        dir.join(script),
        dir.join("test.toml")
    )
}

fn is_root() -> bool {
    drover_testkit::privileged::is_root()
}

/// Gives `path` to the uid drover drops to (65534), when this test runs as root.
fn give_to_dropped_uid(path: &Path) {
    if is_root() {
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        nix::unistd::chown(path, nobody, Some(nix::unistd::Gid::from_raw(65534))).unwrap();
    }
}

/// A temporary directory for `serve`, where the dropped uid may make work directories.
fn scratch() -> tempfile::TempDir {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    give_to_dropped_uid(scratch.path());
    scratch
}

fn mode_and_owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.mode() & 0o7777, meta.uid())
}

/// Starts `drover serve` with its log (stderr) coming back line by line; `tmp` is its
/// temporary directory, where the drivers' work directories are made.
fn start_logged(config: &Path, tmp: &Path) -> (Serve, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env_remove("VASTAI_API_KEY")
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, log) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.split(b'\n') {
            let Ok(line) = line else { return };
            if lines.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                return;
            }
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("drover serve: listening on ").unwrap_or("").to_owned();
    (Serve { child, url }, log)
}

/// Collects log lines until `done` holds for what was collected, or panics after 30 s.
fn collect_until(log: &mpsc::Receiver<String>, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the expected log lines never came:\n{}", seen.join("\n")),
        }
    }
    seen
}

#[test]
fn a_driver_cannot_forge_or_corrupt_supervisor_log_lines() {
    let drivers = drivers_dir();
    let token = ApiToken::generate().unwrap();
    let (_dir, _data, config) =
        config_dir(&token, &python_driver("forger", drivers.path(), "forge_log.py", &[]));
    let scratch = scratch();
    let (_serve, log) = start_logged(&config, scratch.path());
    let forged = |l: &String| l.contains("forged");
    // One line from stdout, one from a `log` frame (more if they broke out of their lines).
    let seen = collect_until(&log, |seen| seen.iter().filter(|l| forged(l)).count() >= 2);
    let text = seen.join("\n");
    // Written raw, the line's leading newline would have started a line of the driver's own.
    assert!(!seen.iter().any(|l| l.starts_with("2026-01-01")), "a forged line:\n{text}");
    assert!(!text.contains('\x1b'), "a raw ESC reached the log:\n{text}");
    for line in seen.iter().filter(|l| forged(l)) {
        // One line, the driver's text quoted after the supervisor's own `driver=` field.
        let (before, driver_text) = line
            .split_once(" text=\"")
            .or_else(|| line.split_once(" line=\""))
            .unwrap_or_else(|| panic!("not quoted: {line}"));
        assert!(before.contains(" driver=forger "), "{line}");
        assert!(driver_text.contains("2026-01-01T00:00:00.000000Z"), "{line}");
        assert!(driver_text.contains("forged driver=victim\\x1b[2J\""), "{line}");
    }
    let from_log_frame = seen.iter().find(|l| forged(l) && l.contains("driver log")).unwrap();
    assert!(from_log_frame.contains("text=\"\\n2026-01-01"), "{from_log_frame}");
}

#[test]
fn supervisor_files_are_private_and_work_dirs_go_whatever_the_driver_did() {
    let drivers = drivers_dir();
    let token = ApiToken::generate().unwrap();
    let scratch = scratch();
    // A directory of the dropped uid's own that a remover following links would empty.
    let victim = scratch.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("store"), b"keep").unwrap();
    give_to_dropped_uid(&victim);
    give_to_dropped_uid(&victim.join("store"));
    let planter = python_driver("planter", drivers.path(), "plant_work_dir.py", &[&victim]);
    let (_dir, data, config) = config_dir(&token, &planter);
    let (_serve, log) = start_logged(&config, scratch.path());
    collect_until(&log, |seen| seen.iter().any(|l| l.contains("line=\"planted\"")));

    let uid = if is_root() { 65534 } else { nix::unistd::geteuid().as_raw() };
    assert_eq!(mode_and_owner(&data), (0o700, uid), "the data directory");
    let work_dirs: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("drover-planter-"))
        .collect();
    assert!(!work_dirs.is_empty(), "no work directory under {}", scratch.path().display());
    for work_dir in &work_dirs {
        assert_eq!(mode_and_owner(work_dir), (0o700, uid), "{}", work_dir.display());
    }
    // The driver exits after 3 s; its closed work directory must go with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while work_dirs.iter().any(|w| w.exists()) {
        assert!(Instant::now() < deadline, "a work directory was left behind: {work_dirs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read(victim.join("store")).unwrap(), b"keep", "a link was followed");
}

#[test]
fn serve_refuses_a_data_dir_inside_a_tree_a_profile_grants() {
    let drivers = drivers_dir();
    let dir = tempfile::tempdir().unwrap();
    // The default profile, which the test profile includes, grants /opt for reading.
    let data = PathBuf::from(format!("/opt/drover-refused-{}", std::process::id()));
    let config = dir.path().join("drover.toml");
    let driver = python_driver("tenant", drivers.path(), "forge_log.py", &[]);
    std::fs::write(&config, format!("[supervisor]\ndata_dir = {data:?}\n{driver}")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env_remove("VASTAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&data);
            panic!("serve started with its data directory under /opt");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    let profile = drivers.path().join("test.toml");
    for part in [&data.display().to_string(), "\"tenant\"", &profile.display().to_string()] {
        assert!(stderr.contains(part), "{part} is not named in: {stderr}");
    }
    assert!(!data.exists(), "the refused data directory was created");
}

/// The leaves `serve` (pid `serve_pid`) made under `controller`'s `drover-65534` parent.
fn serve_leaves(controller: &str, serve_pid: u32) -> Vec<PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup").join(controller).join("drover-65534");
    let parent = if v1.is_dir() { v1 } else { PathBuf::from("/sys/fs/cgroup/drover-65534") };
    let prefix = format!("{serve_pid}-");
    std::fs::read_dir(parent)
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_driver_of_serve_runs_in_its_own_limited_cgroups() {
    if !is_root() {
        // Started non-root, serve has no cgroups to give (see the refusal test below).
        drover_testkit::skip_or_fail!("serve gives drivers cgroups only when started as root");
    }
    let drivers = drivers_dir();
    std::fs::write(
        drivers.path().join("limited.toml"),
        "include = [\"test.toml\"]\n[limits]\npids = 100\ncpu_millicores = 300\n",
    )
    .unwrap();
    chmod_tree(drivers.path());
    let limited = |name: &str| {
        python_driver(name, drivers.path(), "forge_log.py", &[])
            .replace("test.toml", "limited.toml")
    };
    let token = ApiToken::generate().unwrap();
    let extra = format!("{}{}", limited("first"), limited("second"));
    let (_dir, _data, config) = config_dir(&token, &extra);
    let scratch = scratch();
    let (serve, log) = start_logged(&config, scratch.path());
    collect_until(&log, |seen| {
        seen.iter().filter(|l| l.contains("driver session ready")).count() >= 2
    });
    let pid = serve.child.id();
    let pids = serve_leaves("pids", pid);
    let limits: Vec<String> = pids
        .iter()
        .filter_map(|leaf| std::fs::read_to_string(leaf.join("pids.max")).ok())
        .map(|s| s.trim().to_owned())
        .collect();
    assert!(limits.iter().filter(|l| *l == "100").count() >= 2, "pids leaves: {limits:?}");
    let cpu = serve_leaves("cpu", pid);
    let quotas: Vec<String> = cpu
        .iter()
        .filter_map(|leaf| {
            std::fs::read_to_string(leaf.join("cpu.cfs_quota_us"))
                .or_else(|_| std::fs::read_to_string(leaf.join("cpu.max")))
                .ok()
        })
        .map(|s| s.trim().to_owned())
        .collect();
    let held = quotas.iter().filter(|q| *q == "30000" || q.starts_with("30000 ")).count();
    assert!(held >= 2, "cpu leaves: {quotas:?}");
}

#[test]
fn serve_without_cgroups_refuses_to_start_unless_the_risk_is_accepted() {
    if !is_root() {
        drover_testkit::skip_or_fail!("making serve find no cgroups needs root");
    }
    let drivers = drivers_dir();
    let scratch = scratch();
    let data = scratch.path().join("data");
    let config = scratch.path().join("drover.toml");
    let driver = python_driver("tenant", drivers.path(), "forge_log.py", &[]);
    std::fs::write(&config, format!("[supervisor]\ndata_dir = {data:?}\n{driver}")).unwrap();
    chmod_tree(&config);
    // A copy uid 65534 can run (the target directory may be closed to it).
    let drover = drivers.path().join("drover");
    std::fs::copy(env!("CARGO_BIN_EXE_drover"), &drover).unwrap();
    std::fs::set_permissions(&drover, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Started as uid 65534 without capabilities, serve cannot prepare cgroups.
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .args(["--bounding-set=-all", "--"])
        .arg(&drover)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env_remove("VASTAI_API_KEY")
        .env("TMPDIR", scratch.path())
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for part in ["driver \"tenant\"", "pids, cpu", "unenforced_limits"] {
        assert!(stderr.contains(part), "{part} is not named in: {stderr}");
    }
}
