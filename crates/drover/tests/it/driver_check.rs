//! `drover driver-check` for real: the bundled Rust example driver and the Python example pass
//! it, sandboxed with the default profile; each deliberately broken driver under
//! `tests/drivers/` fails it in the scenario that names its fault, with the right reason.
//!
//! As root (CI), the kit drops privilege and sandboxes each driver exactly as the supervisor
//! would, so the binary and scripts are copied into a world-readable directory first. Not
//! root, the same checks run with `--no-sandbox` (the sandbox itself is tested in
//! `sandbox.rs`), and the test says so on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]
#![allow(clippy::print_stderr)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// A world-readable directory holding a copy of the drover binary, the broken drivers and the
/// Python example with its SDK package.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("drover-driver-check-").tempdir().unwrap().keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![(PathBuf::from(env!("CARGO_BIN_EXE_drover")), "drover".to_owned())];
        for entry in std::fs::read_dir(manifest.join("tests/drivers")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.push((path, name));
        }
        let python = manifest.join("../../drivers/python");
        files.push((python.join("example_driver.py"), "example_driver.py".to_owned()));
        // The SDK package beside the example, where Python finds it first (drivers/python/
        // test.sh checks the example against the SDK installed into a venv instead).
        std::fs::create_dir(dir.join("drover_driver")).unwrap();
        std::fs::set_permissions(dir.join("drover_driver"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        for entry in std::fs::read_dir(python.join("src/drover_driver")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "py") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                files.push((path, format!("drover_driver/{name}")));
            }
        }
        for (from, name) in files {
            std::fs::copy(&from, dir.join(&name)).unwrap();
            std::fs::set_permissions(dir.join(&name), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        dir
    })
}

/// Whether driver-check runs sandboxed here: as root. Otherwise it runs with `--no-sandbox`,
/// which the `privileged-tests` feature (on in CI) does not accept.
fn sandboxed() -> bool {
    let root = drover_testkit::privileged::is_root();
    if !root {
        drover_testkit::privileged::cannot_run(
            "not root: driver-check runs with --no-sandbox here (CI runs it sandboxed)",
            cfg!(feature = "privileged-tests"),
        );
    }
    root
}

/// Runs `drover driver-check --json [flags] -- cmd...` and returns (exit code, report).
fn check(flags: &[&str], cmd: &[&str]) -> (i32, Value) {
    let drover = dir().join("drover");
    let mut command = Command::new(&drover);
    command.arg("driver-check").arg("--json").args(flags);
    if !sandboxed() {
        command.arg("--no-sandbox");
    }
    let output = command.arg("--").args(cmd).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "driver-check did not print a JSON report ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

fn python(script: &str) -> Vec<String> {
    vec!["python3".to_owned(), dir().join(script).display().to_string()]
}

fn row<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no scenario {name} in {report:#}"))
}

/// Every required scenario passed, and the report says so.
fn assert_passes(code: i32, report: &Value) {
    let failed: Vec<_> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["required"] == true && r["result"] != "pass")
        .collect();
    assert!(failed.is_empty(), "failed: {failed:#?}");
    assert_eq!((code, &report["passed"]), (0, &Value::Bool(true)));
}

/// The scenario failed with a reason containing `why`, the run exits 1, and the scenarios
/// listed in `pass` passed.
fn assert_fails(code: i32, report: &Value, scenario: &str, why: &str, pass: &[&str]) {
    let r = row(report, scenario);
    assert_eq!(r["result"], "fail", "{scenario} should fail: {report:#}");
    let reason = r["why"].as_str().unwrap();
    assert!(reason.contains(why), "{scenario}: expected {why:?} in {reason:?}");
    assert_eq!((code, &report["passed"]), (1, &Value::Bool(false)));
    for name in pass {
        assert_eq!(row(report, name)["result"], "pass", "{name} should pass: {report:#}");
    }
}

fn broken(script: &str) -> (i32, Value) {
    let cmd = python(script);
    check(&[], &cmd.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn the_rust_example_driver_passes() {
    let drover = dir().join("drover").display().to_string();
    let (code, report) = check(&[], &[&drover, "driver", "example"]);
    assert_passes(code, &report);
    assert_eq!(row(&report, "quiet_stdout")["result"], "pass");
    // The defaults pick the first and the last action: echo runs, sleep is cancelled.
    assert!(
        row(&report, "job_run")["why"].as_str().unwrap().starts_with("echo: running -> succeeded")
    );
    assert!(row(&report, "cancel")["why"].as_str().unwrap().contains("running -> cancelled"));
    assert_eq!(report["scenarios"].as_array().unwrap().len(), 13);
}

#[test]
fn the_rust_example_driver_passes_without_the_sandbox_too() {
    // As root the other tests sandbox; this one covers the development path on CI as well.
    let drover = dir().join("drover").display().to_string();
    let flags: &[&str] = if sandboxed() { &["--no-sandbox"] } else { &[] };
    let (code, report) = check(flags, &[&drover, "driver", "example"]);
    assert_passes(code, &report);
}

#[test]
fn the_python_example_driver_passes() {
    let cmd = python("example_driver.py");
    let cmd: Vec<_> = cmd.iter().map(String::as_str).collect();
    let (code, report) = check(&["--cancel-job", r#"sleep={"seconds": 30}"#], &cmd);
    assert_passes(code, &report);
    assert!(row(&report, "cancel")["why"].as_str().unwrap().contains("running -> cancelled"));
}

#[test]
fn a_script_named_relative_to_the_callers_directory_is_found() {
    // The driver starts in its own work directory; `python3 example_driver.py` still means the
    // file in the directory driver-check was started from.
    let mut command = Command::new(dir().join("drover"));
    command.current_dir(dir()).args(["driver-check", "--json"]);
    if !sandboxed() {
        command.arg("--no-sandbox");
    }
    let output = command.args(["--", "python3", "example_driver.py"]).output().unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_passes(output.status.code().unwrap_or(-1), &report);
}

#[test]
fn a_well_behaved_driver_that_prints_passes_with_a_warning() {
    let (code, report) = broken("chatty.py");
    assert_passes(code, &report);
    let r = row(&report, "quiet_stdout");
    assert_eq!((&r["result"], &r["required"]), (&Value::from("warn"), &Value::Bool(false)));
    assert!(r["why"].as_str().unwrap().contains("hello from the driver's stdout"));
}

#[test]
fn never_says_hello() {
    let (code, report) = broken("no_hello.py");
    assert_fails(code, &report, "handshake", "no hello within 5 s", &[]);
    assert!(row(&report, "heartbeat")["why"].as_str().unwrap().contains("handshake failed"));
}

#[test]
fn wrong_protocol_version() {
    let (code, report) = broken("wrong_version.py");
    assert_fails(
        code,
        &report,
        "handshake",
        "no shared protocol version: the driver offers [2]",
        &[],
    );
}

#[test]
fn invalid_frames_are_reported_with_their_pointer() {
    let (code, report) = broken("invalid_frames.py");
    assert_fails(code, &report, "valid_frames", "schema_violation at /msg/current", &["job_run"]);
}

#[test]
fn ignores_cancel() {
    let (code, report) = broken("ignore_cancel.py");
    assert_fails(
        code,
        &report,
        "cancel",
        "no terminal state within 5 s of cancel_job",
        &["job_run", "shutdown"],
    );
}

#[test]
fn ignores_shutdown() {
    let (code, report) = broken("ignore_shutdown.py");
    assert_fails(code, &report, "shutdown", "still running", &["cancel", "transport_eof"]);
}

#[test]
fn crashes_mid_job() {
    let (code, report) = broken("crash_mid_job.py");
    assert_fails(code, &report, "job_run", "exited with status 3", &["heartbeat", "shutdown"]);
}

#[test]
fn garbage_on_the_transport() {
    let (code, report) = broken("garbage.py");
    assert_fails(code, &report, "handshake", "the peer is not sending frames", &[]);
    assert!(row(&report, "handshake")["why"].as_str().unwrap().contains("Loading model weights"));
    assert_eq!(row(&report, "valid_frames")["result"], "fail");
}

#[test]
fn hangs_after_the_handshake() {
    let (code, report) = broken("hang.py");
    assert_fails(code, &report, "heartbeat", "no answer to ping within 2000 ms", &["handshake"]);
    assert_eq!(row(&report, "transport_eof")["result"], "fail");
}
