//! `drover serve` as an operator runs it (issue 17): it refuses to start on a configuration
//! `drover validate` refuses (naming the key, from the file or from a `DROVER_*` variable)
//! and on `provider.kind = "vastai"` without its key; it keeps the bundled `container` driver
//! next to configured ones unless told not to; and a driver that `drover driver-check` passes
//! (a script with a module beside it, outside every directory the profile grants) runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use drover::client::{ApiClient, Token};
use drover_api::token::ApiToken;

/// Runs `drover serve` expecting it to refuse; returns its stderr.
fn refused(config: &Path, env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config);
    command.env_remove("VASTAI_API_KEY");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "serve started: {stdout}\n{stderr}");
    assert!(!stdout.contains("listening"), "serve listened: {stdout}");
    stderr
}

/// What `drover validate --kind config FILE` says: the instance paths of its errors.
fn validate_paths(config: &Path) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["validate", "--kind", "config"])
        .arg(config)
        .output()
        .unwrap();
    let verdict: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(verdict["valid"], false, "{verdict}");
    verdict["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["instance_path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn serve_refuses_what_validate_refuses_naming_the_key() {
    let token = ApiToken::generate().unwrap();
    for (extra, key) in [
        ("\n[api]\nmax_body_bytes = 1\n", "/api/max_body_bytes"),
        ("\n[gate]\nmax_quote_age_s = 0\n", "/gate/max_quote_age_s"),
    ] {
        let (_dir, _data, config) = config_dir(&token, extra);
        assert_eq!(validate_paths(&config), [key]);
        let stderr = refused(&config, &[]);
        assert!(stderr.contains(&format!("at {key}:")), "{key}: {stderr}");
    }
    // The file's own rate limit is valid; a zero from the environment is not.
    let (_dir, _data, config) = config_dir(&token, "");
    let stderr = refused(&config, &[("DROVER_API__RATE_LIMIT__PER_SECOND", "0")]);
    assert!(stderr.contains("at /api/rate_limit/per_second:"), "{stderr}");
    assert!(stderr.contains("api.rate_limit.per_second"), "names the variable's key: {stderr}");
}

#[test]
fn vastai_without_its_key_refuses_to_start_instead_of_simulating() {
    let token = ApiToken::generate().unwrap();
    let (_dir, _data, config) = config_dir(&token, "\n[provider]\nkind = \"vastai\"\n");
    let stderr = refused(&config, &[]);
    assert!(stderr.contains("VASTAI_API_KEY is not set"), "{stderr}");
}

/// A world-readable directory outside every path the default profile grants, holding the
/// Python example driver and the SDK package it imports, beside it.
fn python_driver_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("drover-operator-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../drivers/python");
    std::fs::copy(python.join("example_driver.py"), dir.path().join("example_driver.py")).unwrap();
    // The SDK package beside the script, where Python finds it first.
    let package = dir.path().join("drover_driver");
    std::fs::create_dir(&package).unwrap();
    std::fs::set_permissions(&package, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(python.join("src/drover_driver")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&path, package.join(path.file_name().unwrap())).unwrap();
        }
    }
    for file in [dir.path().join("example_driver.py")]
        .into_iter()
        .chain(std::fs::read_dir(&package).unwrap().map(|e| e.unwrap().path()))
    {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir
}

async fn driver_names(client: &ApiClient) -> Vec<String> {
    let list = client.drivers().await.unwrap().body;
    let mut names: Vec<String> = list.drivers.iter().map(|d| d.name.to_string()).collect();
    names.sort();
    names
}

#[test]
fn a_driver_that_passes_driver_check_runs_under_serve_next_to_the_bundled_one() {
    let token = ApiToken::generate().unwrap();
    let scripts = python_driver_dir();
    let script = scripts.path().join("example_driver.py");
    let drivers = format!(
        "\n[[drivers]]\nname = \"example\"\ncommand = [\"/usr/bin/python3\", {script:?}]\n"
    );
    let (_dir, _data, config) = config_dir(&token, &drivers);
    let serve = start(&config);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
        // Ready means every driver has a session: the script could be read and said hello.
        wait_ready(&client).await;
        assert_eq!(driver_names(&client).await, ["container", "example"]);
    });
    drop(serve);

    // Explicitly disabled, the bundled driver is gone.
    let (_dir, _data, config) = config_dir(&token, &drivers);
    let mut serve = Command::new(env!("CARGO_BIN_EXE_drover"));
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("DROVER_SUPERVISOR__BUNDLED_CONTAINER", "false");
    let serve = start_command(serve);
    runtime.block_on(async {
        let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
        wait_ready(&client).await;
        assert_eq!(driver_names(&client).await, ["example"]);
    });
}

#[test]
fn jobs_and_estimate_help_name_the_token_variable() {
    for command in ["jobs", "estimate"] {
        let output =
            Command::new(env!("CARGO_BIN_EXE_drover")).args([command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("DROVER_TOKEN"), "{command} --help:\n{help}");
    }
}

/// `jobs show` prints times as RFC 3339, and a reader that goes away (`| head`) ends the
/// command quietly with exit 0 instead of a broken-pipe error and exit 2.
#[test]
fn jobs_show_prints_rfc3339_times_and_a_closed_pipe_is_not_an_error() {
    let token = ApiToken::generate().unwrap();
    let (_dir, _data, config) = config_dir(&token, "");
    let serve = start(&config);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let id = runtime.block_on(async {
        let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
        wait_ready(&client).await;
        client.submit(job(5.0), None).await.unwrap().body.id
    });
    let drover = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
        command.args(args).args(["--url", &serve.url]).env("DROVER_TOKEN", token.expose());
        command
    };
    let shown = drover(&["jobs", "show", id.as_str()]).output().unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    let created = text.lines().find(|l| l.starts_with("created")).expect(&text);
    let time = created.split_whitespace().nth(1).unwrap();
    assert_eq!(time.len(), "2026-12-04T17:01:26.123Z".len(), "{created}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{created}");
    assert!(!text.contains("unix ms"), "{text}");

    // The reading end is closed before the command writes anything.
    let mut child =
        drover(&["jobs", "list"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Starts `serve` with `env` and `extra` arguments, logs to a file; returns (server, log path).
fn start_logging(
    config: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    log: &Path,
) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config).args(extra);
    command.env_remove("VASTAI_API_KEY").env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

/// `RUST_LOG` filters the log and `--log-format json` writes one JSON object per line;
/// a `RUST_LOG` that does not parse refuses the start (issue 17: logs were fixed at INFO, text).
#[test]
fn rust_log_filters_and_log_format_json_writes_json_lines() {
    let token = ApiToken::generate().unwrap();
    let (dir, _data, config) = config_dir(&token, "");
    let log = dir.path().join("serve.log");
    let (mut child, line) =
        start_logging(&config, &["--log-format", "json"], &[("RUST_LOG", "info")], &log);
    assert!(line.starts_with("drover serve: listening on"), "{line}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line).expect(line);
        assert!(event["level"].is_string() && event["fields"].is_object(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"level\":\"INFO\"")), "{text}");

    // Only errors: the start-up's INFO and WARN lines are gone.
    let (mut child, _) = start_logging(&config, &[], &[("RUST_LOG", "error")], &log);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("INFO") && !text.contains("WARN"), "{text}");

    let stderr = refused(&config, &[("RUST_LOG", "drover=notalevel")]);
    assert!(stderr.contains("RUST_LOG"), "{stderr}");
}
