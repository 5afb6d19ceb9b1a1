//! The shipped Kubernetes manifest works (issue 17): `drover serve` started with the
//! ConfigMap's `drover.toml` (extracted from deploy/kubernetes/drover.yaml), the data
//! directory moved to a temporary one and the port to a free one (both by `DROVER_*`
//! overrides and `--listen`, as nothing else may change), answers the manifest's liveness and
//! readiness probes the way the kubelet calls them: a plain HTTP GET with no token. The
//! tokens the manifest takes from its Secret (`DROVER_API__TOKENS`) open the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use drover::client::{ApiClient, Token};
use drover_api::token::ApiToken;

fn manifest() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/drover.yaml");
    std::fs::read_to_string(path).unwrap()
}

/// The block under `drover.toml: |` in the ConfigMap, de-indented.
fn configmap_toml(manifest: &str) -> String {
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "drover.toml: |").skip(1);
    let first = lines.next().expect("the ConfigMap has a drover.toml");
    let indent = first.len() - first.trim_start().len();
    let mut out = format!("{}\n", first.trim_start());
    for line in lines {
        if !line.trim().is_empty() && line.len() - line.trim_start().len() < indent {
            break;
        }
        out.push_str(line.get(indent..).unwrap_or(""));
        out.push('\n');
    }
    out
}

/// The `path` of the container's `probe` (`livenessProbe`, `readinessProbe`).
fn probe_path(manifest: &str, probe: &str) -> String {
    manifest
        .lines()
        .skip_while(|l| l.trim() != format!("{probe}:"))
        .find_map(|l| l.trim().strip_prefix("path: "))
        .unwrap_or_else(|| panic!("no {probe} path"))
        .to_owned()
}

/// A GET as the kubelet's httpGet probe makes it: no Authorization header. The status code.
fn kubelet_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.31\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn the_manifests_probes_pass_with_its_configmap_and_no_token() {
    let manifest = manifest();
    let toml = configmap_toml(&manifest);
    assert!(toml.contains("listen = \"0.0.0.0:8080\""), "{toml}");
    assert!(manifest.contains("containerPort: 8080"));
    let (liveness, readiness) =
        (probe_path(&manifest, "livenessProbe"), probe_path(&manifest, "readinessProbe"));
    assert_eq!((liveness.as_str(), readiness.as_str()), ("/healthz", "/readyz"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("drover.toml");
    std::fs::write(&config, &toml).unwrap();
    let token = ApiToken::generate().unwrap();
    let tokens = format!(
        "[{{ name = \"ci\", sha256 = \"{}\", scopes = [\"drivers:read\"], format = \"drover-v1\" }}]",
        token.sha256_hex()
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env_remove("VASTAI_API_KEY")
        .env("DROVER_SUPERVISOR__DATA_DIR", dir.path().join("data"))
        .env("DROVER_API__TOKENS", &tokens);
    let serve = start_command(command);
    let addr = serve.url.trim_start_matches("http://").to_owned();

    let (status, _) = kubelet_get(&addr, &liveness);
    assert_eq!(status, 200, "liveness");
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = kubelet_get(&addr, &readiness);
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "readiness without a token: {body}");
        assert!(Instant::now() < deadline, "never ready: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Without a token the probe learns nothing but "ready".
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, serde_json::json!({"ready": true, "checks": {}}));
    // Any other route still needs a token; the Secret's token opens it.
    assert_eq!(kubelet_get(&addr, "/v1/drivers").0, 401);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
        let drivers = client.drivers().await.unwrap().body;
        assert_eq!(drivers.drivers[0].name.as_str(), "container");
    });
}
