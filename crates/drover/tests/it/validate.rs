//! `drover validate` as a user runs it: the binary, stdin or a file, JSON on stdout, exit codes.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use drover_proto::examples;
use serde_json::{Value, json};

fn drover(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn verdict(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("stdout is not one JSON document ({e}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

/// Instance paths of the reported errors, sorted.
fn instance_paths(output: &Output) -> Vec<String> {
    let mut paths: Vec<String> = verdict(output)["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["instance_path"].as_str().unwrap().to_owned())
        .collect();
    paths.sort();
    paths
}

#[test]
fn accepts_every_example_frame() {
    for frame in examples::frames() {
        let payload = serde_json::to_vec(&frame).unwrap();
        let out = drover(&["validate", "--kind", "frame"], &payload);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(
            verdict(&out),
            json!({"valid": true, "kind": "frame", "type": frame.msg.message_type().as_str()})
        );
    }
}

#[test]
fn rejects_invalid_frames_with_json_pointers() {
    let cases: Vec<(Value, &str, Vec<&str>)> = vec![
        (
            json!({"msg": {"type": "job_progress", "job_id": "has space", "current": -1}}),
            "schema_violation",
            vec!["/msg/current", "/msg/job_id"],
        ),
        (
            json!({"id": 3, "msg": {"type": "acquire_gpu", "job_id": "j", "gpu": {"count": 0, "pricing": "cheap"},
                   "image": "img", "disk_gib": 4, "max_runtime_s": 60}}),
            "schema_violation",
            vec!["/msg/disk_gib", "/msg/gpu/count", "/msg/gpu/pricing"],
        ),
        (json!({"msg": {"type": "ping"}}), "schema_violation", vec![""]),
        (
            json!({"id": 1, "msg": {"type": "ping", "extra": true}}),
            "schema_violation",
            vec!["/msg"],
        ),
        (json!({"id": 1, "msg": {"type": "launch_missiles"}}), "unknown_type", vec!["/msg/type"]),
        (json!({"id": 1}), "schema_violation", vec![""]),
    ];
    for (frame, code, paths) in cases {
        let out = drover(&["validate"], &serde_json::to_vec(&frame).unwrap());
        assert_eq!(out.status.code(), Some(1), "{frame}");
        let v = verdict(&out);
        assert_eq!(v["valid"], false);
        assert_eq!(v["code"], code, "{frame}");
        assert_eq!(instance_paths(&out), paths, "{frame}");
        for error in v["errors"].as_array().unwrap() {
            let keys: Vec<&str> = error.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["instance_path", "message", "schema_path"]);
        }
    }
}

#[test]
fn syntax_and_encoding_errors_have_their_codes() {
    let out = drover(&["validate"], b"{\"msg\": ");
    assert_eq!(
        (out.status.code(), verdict(&out)["code"].clone()),
        (Some(1), json!("invalid_json"))
    );
    let out = drover(&["validate"], b"{\"msg\": \"\xff\"}");
    assert_eq!(
        (out.status.code(), verdict(&out)["code"].clone()),
        (Some(1), json!("invalid_utf8"))
    );
    let out = drover(&["validate"], b"{\"a\":1,\"a\":1}");
    assert_eq!(verdict(&out)["code"], "invalid_json");
}

#[test]
fn reads_a_file_and_exits_2_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ping.json");
    std::fs::write(&path, br#"{"id":1,"msg":{"type":"ping"}}"#).unwrap();
    let out = drover(&["validate", path.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(0));

    let missing = dir.path().join("missing.json");
    let out = drover(&["validate", missing.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.json"), "{stderr}");
}

#[test]
fn validates_configs_in_toml_and_json() {
    let toml = br#"
[api]
listen = "127.0.0.1:9000"

[[drivers]]
name = "container"
command = ["drover", "driver", "container"]
"#;
    let out = drover(&["validate", "--kind", "config"], toml);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    let bad = br#"
[gate]
confidence_floor = 0.5

[[drivers]]
name = "Bad Name"
command = []
"#;
    let out = drover(&["validate", "--kind", "config", "-"], bad);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        instance_paths(&out),
        ["/drivers/0/command", "/drivers/0/name", "/gate/confidence_floor"]
    );

    let out = drover(&["validate", "--kind", "config"], br#"{"api": {"listen": 8080}}"#);
    assert_eq!(instance_paths(&out), ["/api/listen"]);

    let out = drover(&["validate", "--kind", "config"], b"[api\nlisten=");
    assert_eq!(verdict(&out)["code"], "invalid_json");
}

#[test]
fn validates_job_submissions() {
    let job = json!({"driver": "container", "action": "run", "params": {"image": "x"},
                     "gpu": {"count": 1}, "max_runtime_s": 600, "budget_usd": 1.5});
    let out = drover(&["validate", "--kind", "job"], &serde_json::to_vec(&job).unwrap());
    assert_eq!(out.status.code(), Some(0));

    let job = json!({"driver": "container", "action": "run", "max_runtime_s": 0, "budget_usd": -1,
                     "labels": {"Bad Key": "v"}});
    let out = drover(&["validate", "--kind", "job"], &serde_json::to_vec(&job).unwrap());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(instance_paths(&out), ["/budget_usd", "/labels", "/max_runtime_s"]);
}
