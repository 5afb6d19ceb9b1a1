//! README.md tells the truth: its quick-start command prints what it says, and `.ci/run` runs
//! exactly the test command it prints.

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
    assert!(
        ci.lines().any(|line| line.trim() == test_command),
        ".ci/run must run `{test_command}` exactly, as README.md says"
    );
}

#[test]
fn quick_start_validation_prints_what_the_readme_shows() {
    let readme = repository_file("README.md");
    let command = quick_start_commands(&readme)
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
