//! `drover serve` as a real process with hostile drivers (as root in CI, so Phase A really
//! drops to 65534): what a driver writes cannot forge or corrupt the supervisor's log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
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
    for script in ["_wire.py", "forge_log.py"] {
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
fn python_driver(name: &str, dir: &Path, script: &str) -> String {
    format!(
        "\n[[drivers]]\nname = {name:?}\ncommand = [\"/usr/bin/python3\", {:?}]\nprofile = {:?}\n",
        dir.join(script),
        dir.join("test.toml")
    )
}

/// Starts `drover serve` with its log (stderr) coming back line by line.
fn start_logged(config: &Path) -> (Serve, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env_remove("VASTAI_API_KEY")
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
        config_dir(&token, &python_driver("forger", drivers.path(), "forge_log.py"));
    let (_serve, log) = start_logged(&config);
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
