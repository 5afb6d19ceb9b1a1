//! README.md tells the truth: its quick start's first command is `drover demo`, which runs a
//! whole job and exits 0 (so the demo runs in CI), its validation example prints what it says,
//! and `.ci/run` runs exactly the test command it prints (plus the features that make the
//! privileged tests required, which it names).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

fn repository_file(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(name)).unwrap()
}

/// The shell commands in README's "Quick start" block.
fn quick_start_commands(readme: &str) -> Vec<String> {
    let section = readme.split("## Quick start").nth(1).unwrap();
    let block = section.split("```sh").nth(1).unwrap().split("```").next().unwrap();
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn ci_runs_the_test_command_from_the_readme() {
    let readme = repository_file("README.md");
    let test_command = quick_start_commands(&readme)
        .into_iter()
        .find(|c| c.starts_with("cargo test"))
        .expect("README's quick start has a test command");
    let ci = repository_file(".ci/run");
    // CI adds only the features that make the privileged tests required (issue 19), for every
    // crate that has that feature.
    let features = privileged_features();
    assert!(features.len() >= 3, "{features:?}");
    let with_features = format!("{test_command} --features {}", features.join(","));
    assert!(
        ci.lines().any(|line| line.trim() == with_features),
        ".ci/run must run `{with_features}` exactly: README.md's command with the privileged tests required"
    );
    assert!(readme.contains(&with_features[test_command.len()..].trim_start().to_owned()));
}

/// `<crate>/privileged-tests` for every workspace crate that declares that feature, by name.
fn privileged_features() -> Vec<String> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut crates_with_feature: Vec<String> = std::fs::read_dir(crates)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|manifest| manifest.lines().any(|l| l == "privileged-tests = []"))
        })
        .map(|dir| dir.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    crates_with_feature.sort();
    crates_with_feature.iter().map(|krate| format!("{krate}/privileged-tests")).collect()
}

/// Every shell command in README's "Quick start" section, in all its `sh` blocks.
fn quick_start_all(readme: &str) -> Vec<String> {
    let section = readme.split("## Quick start").nth(1).unwrap().split("\n## ").next().unwrap();
    section
        .split("```sh")
        .skip(1)
        .flat_map(|block| block.split("```").next().unwrap().lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_first_command_is_the_demo_and_it_runs_a_whole_job() {
    let readme = repository_file("README.md");
    let first = quick_start_commands(&readme).into_iter().next().unwrap();
    assert_eq!(first, "cargo run --release -- demo");
    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("demo")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    for shown in [
        "provider: SIMULATOR",
        "decision    allowed",
        "worst case",
        "[state] running",
        "stdout | [sim] onstart finished",
        "[state] succeeded",
        "billed by the provider (simulator ledger)",
        "instances left running                     0",
        "demo: OK",
    ] {
        assert!(stdout.contains(shown), "{shown:?} missing from the demo's output:\n{stdout}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "the demo took too long");
}

#[test]
fn quick_start_validation_prints_what_the_readme_shows() {
    let readme = repository_file("README.md");
    let command = quick_start_all(&readme)
        .into_iter()
        .find(|c| c.contains("validate"))
        .expect("README's quick start validates a frame");
    // `echo '<frame>' | cargo run --release -- validate`
    let frame = command.split('\'').nth(1).unwrap();
    let expected_json = readme.split("```json").nth(1).unwrap().split("```").next().unwrap().trim();

    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("validate")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{frame}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let shown: serde_json::Value = serde_json::from_str(expected_json).unwrap();
    assert_eq!(printed, shown, "README.md shows different output than `drover validate` prints");
}

/// README's "HTTP API" section lists every route the router serves and where the OpenAPI
/// document is, and "Running it for real" says how to install the binary (issue 17).
#[test]
fn the_readme_lists_every_http_route_and_an_install_step() {
    let readme = repository_file("README.md");
    let section = readme.split("## HTTP API").nth(1).expect("an HTTP API section");
    let section = section.split("\n## ").next().unwrap();
    for (method, path) in drover_api::openapi::ROUTES {
        let row = format!("| `{} {path}` |", method.to_uppercase());
        assert!(section.contains(&row), "README's HTTP API section lacks {row}");
    }
    assert!(section.contains("schemas/api/openapi.json") && section.contains("DROVER_TOKEN"));
    let running = readme.split("## Running it for real").nth(1).unwrap();
    assert!(running.contains("cargo install --locked --path crates/drover"));
}
