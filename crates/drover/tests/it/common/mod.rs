//! Shared by the tests that run `drover serve` as a real process.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover::client::ApiClient;
use drover_proto::JobPhase;
use drover_proto::api::JobEventKind;
use serde_json::json;

pub struct Serve {
    pub child: Child,
    pub url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        // A failed test must not leave the server running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(config: &std::path::Path) -> Serve {
    start_with(config, None)
}

/// Starts `drover serve` with `VASTAI_API_KEY` set to `key`, or unset.
pub fn start_with(config: &std::path::Path, key: Option<&str>) -> Serve {
    let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config);
    match key {
        Some(key) => command.env("VASTAI_API_KEY", key),
        None => command.env_remove("VASTAI_API_KEY"),
    };
    start_command(command)
}

/// Starts `command` (a `drover serve` with `--listen 127.0.0.1:0`) and reads where it listens.
pub fn start_command(mut command: Command) -> Serve {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("drover serve: listening on ").expect(&line).to_owned();
    Serve { child, url }
}

/// The pid of the `drover driver container` process among `parent`'s descendants.
pub fn driver_pid(parent: u32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{parent}/task")).ok()?;
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("driver\0container") {
                return pid.parse().ok();
            }
            // With a pid namespace the driver is a child of the sandbox's init.
            if let Some(found) = pid.parse().ok().and_then(driver_pid) {
                return Some(found);
            }
        }
    }
    None
}

pub async fn wait_ready(client: &ApiClient) {
    wait_ready_with(client, "SIMULATOR").await;
}

/// Waits for `/readyz`; its provider check must start with `provider`.
pub async fn wait_ready_with(client: &ApiClient, provider_notice: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client.readiness().await.unwrap();
        if answer.body.ready {
            let provider = &answer.body.checks["provider"];
            assert!(
                provider.message.as_deref().unwrap().starts_with(provider_notice),
                "{provider:?}"
            );
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {}", answer.raw);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn job(budget: f64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "driver": "container", "action": "run",
        "params": {"image": "ubuntu:24.04", "command": ["nvidia-smi"]},
        "gpu": {"count": 1}, "max_runtime_s": 600, "budget_usd": budget,
    }))
    .unwrap()
}

/// Follows a job's SSE stream to its end; returns its terminal state and the event kinds.
pub async fn follow(client: &ApiClient, id: &drover_proto::JobId) -> (JobPhase, Vec<&'static str>) {
    let mut stream = client.events(id, 0).await.unwrap();
    let mut kinds = Vec::new();
    let mut last = 0;
    let mut end = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("the stream stalled")
        .unwrap()
    {
        assert_eq!(event.seq, last + 1, "events arrive in order, without gaps");
        last = event.seq;
        kinds.push(event.event.name());
        if let JobEventKind::JobState(state) = &event.event
            && state.state.is_terminal()
        {
            end = Some(state.state);
        }
    }
    (end.expect("the stream ended with a terminal state"), kinds)
}

/// A fresh directory the dropped uid can enter, and a config file in it with one token.
pub fn config_dir(
    token: &drover_api::token::ApiToken,
    extra: &str,
) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let data = dir.path().join("data");
    let config = dir.path().join("drover.toml");
    std::fs::write(
        &config,
        format!(
            "[supervisor]\ndata_dir = {data:?}\n\n[api.rate_limit]\nper_second = 1000\nburst = 1000\n\n\
             [[api.tokens]]\nname = \"e2e\"\nsha256 = \"{}\"\nscopes = [\"jobs:read\", \"jobs:write\", \"drivers:read\", \"metrics:read\"]\nformat = \"drover-v1\"\n{extra}",
            token.sha256_hex()
        ),
    )
    .unwrap();
    (dir, data, config)
}

/// Sends SIGTERM and waits for a successful exit.
pub fn terminate(serve: &mut Serve) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(serve.child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

/// Waits until `id` is running.
pub async fn wait_running(client: &ApiClient, id: &drover_proto::JobId) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.job(id).await.unwrap().body.state != JobPhase::Running {
        assert!(Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sample of Prometheus text.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}
