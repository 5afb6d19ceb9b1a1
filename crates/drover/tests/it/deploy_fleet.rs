//! The shipped fleet deployment stays honest without a cluster (issue 16): the Kubernetes
//! ConfigMap in deploy/fleet/kubernetes/drover.yaml holds exactly deploy/fleet/drover.toml
//! (the file compose.yaml mounts); loaded as `serve` loads it, with the environment the
//! manifests set, the store URL comes from the environment only, every replica has the same
//! deployment id and heartbeat expiry, and no secret is in the ConfigMap or the compose file;
//! the secrets reach the replicas from Secrets (`secretKeyRef`) or the caller's environment;
//! the replicas' probes are /healthz and /readyz. Then two replicas really start from that
//! file with that environment, on a real PostgreSQL (drover-testkit) and one `drover
//! fake-vast`, answer the probes the way the kubelet calls them, and share one deployment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::start_command;

use drover_proto::config::{Config, ProviderConfig};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/fleet").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap()
}

/// The block under `drover.toml: |` in the ConfigMap, de-indented (as kubernetes_probes.rs).
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

/// The document of `kind` in a multi-document manifest.
fn document<'a>(manifest: &'a str, kind: &str) -> &'a str {
    manifest
        .split("\n---\n")
        .find(|doc| doc.lines().any(|l| l == format!("kind: {kind}")))
        .unwrap_or_else(|| panic!("no {kind}"))
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

/// The lines of the container's env entry `name` up to the next entry.
fn env_entry(deployment: &str, name: &str) -> Vec<String> {
    let mut lines =
        deployment.lines().skip_while(|l| l.trim() != format!("- name: {name}")).peekable();
    assert!(lines.next().is_some(), "no env entry {name}");
    lines
        .take_while(|l| !l.trim().starts_with("- name:") && !l.trim().ends_with("ports:"))
        .map(|l| l.trim().to_owned())
        .collect()
}

fn load(toml: &str, env: &[(&str, &str)]) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drover.toml");
    std::fs::write(&path, toml).unwrap();
    let env = env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)));
    drover::cmd::serve::load_config_with(Some(&path), env).unwrap()
}

const DATABASE_URL: &str = "postgres://drover:0123456789abcdef@drover-postgres:5432/drover";

#[test]
fn the_configmap_is_the_fleet_file_and_holds_no_secret() {
    let manifest = read("kubernetes/drover.yaml");
    let toml = configmap_toml(document(&manifest, "ConfigMap"));
    assert_eq!(toml, read("drover.toml"), "the ConfigMap and deploy/fleet/drover.toml differ");
    let table: toml::Table = toml::from_str(&toml).unwrap();
    let store = table.get("store").and_then(|s| s.get("url"));
    assert!(store.is_none(), "store.url belongs in the drover-store Secret: {store:?}");
    let api = table["api"].as_table().unwrap();
    assert!(!api.contains_key("tokens"), "tokens belong in the drover-tokens Secret");
    for secret in ["postgres://", "postgresql://", "password", "VASTAI_API_KEY ="] {
        assert!(!toml.to_lowercase().contains(&secret.to_lowercase()), "{secret} in {toml}");
    }
}

#[test]
fn with_the_manifests_environment_every_replica_shares_database_deployment_and_expiry() {
    let toml = read("drover.toml");
    // Without the Secret's variable there is no shared store: SQLite in the data directory.
    let bare = load(&toml, &[]);
    assert_eq!(bare.store.url, None);
    let config = load(
        &toml,
        &[
            ("DROVER_STORE__URL", DATABASE_URL),
            ("DROVER_API__TOKENS", "[]"),
            ("VASTAI_API_KEY", "not-a-config-key"),
        ],
    );
    assert_eq!(config.store.url.as_deref(), Some(DATABASE_URL));
    assert_eq!(config.supervisor.deployment.as_deref(), Some("drover-fleet"));
    assert_eq!(config.supervisor.replica_expiry_s, 30);
    assert_eq!(config.api.listen, "0.0.0.0:8080");
    assert!(matches!(config.provider, ProviderConfig::Vastai { .. }), "{:?}", config.provider);

    // compose.yaml's replicas: the same file, the simulator on loopback, their own ports.
    let compose = load(
        &toml,
        &[
            ("DROVER_STORE__URL", "postgres://drover:0123@postgres:5432/drover"),
            ("DROVER_PROVIDER__BASE_URL", "http://127.0.0.1:8090"),
            ("DROVER_API__LISTEN", "0.0.0.0:8082"),
        ],
    );
    assert_eq!(compose.supervisor.deployment, config.supervisor.deployment);
    assert_eq!(compose.api.listen, "0.0.0.0:8082");
    assert_eq!(
        compose.provider,
        ProviderConfig::Vastai { base_url: "http://127.0.0.1:8090".to_owned() }
    );
}

#[test]
fn the_replicas_take_their_secrets_from_secrets_and_probe_without_a_token() {
    let manifest = read("kubernetes/drover.yaml");
    let deployment = document(&manifest, "Deployment");
    assert!(deployment.contains("\n  replicas: 3\n"), "three replicas");
    for (variable, secret, optional) in [
        ("DROVER_STORE__URL", "drover-store", false),
        ("VASTAI_API_KEY", "drover-vastai", false),
        ("DROVER_API__TOKENS", "drover-tokens", true),
    ] {
        let entry = env_entry(deployment, variable);
        assert!(entry.contains(&"secretKeyRef:".to_owned()), "{variable}: {entry:?}");
        assert!(entry.contains(&format!("name: {secret}")), "{variable}: {entry:?}");
        assert!(entry.contains(&format!("key: {variable}")), "{variable}: {entry:?}");
        assert!(!entry.iter().any(|l| l.starts_with("value:")), "{variable}: {entry:?}");
        assert_eq!(entry.contains(&"optional: true".to_owned()), optional, "{variable}");
    }
    let probes =
        (probe_path(deployment, "livenessProbe"), probe_path(deployment, "readinessProbe"));
    assert_eq!((probes.0.as_str(), probes.1.as_str()), ("/healthz", "/readyz"));
    // The database's password is a Secret there too.
    let postgres = read("kubernetes/postgres.yaml");
    let statefulset = document(&postgres, "StatefulSet");
    let entry = env_entry(statefulset, "POSTGRES_PASSWORD");
    assert!(entry.contains(&"name: drover-postgres".to_owned()), "{entry:?}");

    // compose.yaml: two replicas, the fleet file, secrets only from the caller's environment.
    let compose = read("compose.yaml");
    for service in ["postgres:", "fake-vast:", "drover-a:", "drover-b:"] {
        assert!(compose.lines().any(|l| l == format!("  {service}")), "{service}");
    }
    assert!(compose.contains("- ./drover.toml:/etc/drover/fleet.toml:ro"));
    assert!(compose.contains(
        "DROVER_STORE__URL: postgres://drover:${DROVER_PG_PASSWORD:?set DROVER_PG_PASSWORD}@"
    ));
    assert!(compose.contains("VASTAI_API_KEY: ${VASTAI_API_KEY:?"));
}

/// The simulator's key in the test: it stands for the drover-vastai Secret.
const KEY: &str = "fake-vast-key-for-the-deploy-fleet-test-0123456789";

struct FakeVast {
    child: Child,
    url: String,
}

impl Drop for FakeVast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fake_vast() -> FakeVast {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["fake-vast", "--listen", "127.0.0.1:0", "--api-key", KEY])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("fake-vast listening on ").expect(&line).to_owned();
    FakeVast { child, url }
}

/// A GET as the kubelet's httpGet probe makes it: no Authorization header. The status code.
fn kubelet_get(addr: &str, path: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.31\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn two_replicas_start_from_the_fleet_file_share_the_database_and_pass_the_probes() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let database = runtime.block_on(drover_testkit::postgres::fresh_database_url());
    let fake = fake_vast();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let replicas: Vec<_> = (0..2)
        .map(|n| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
            // The manifests' environment; the data directory and the port moved for the test.
            command
                .args(["serve", "--listen", "127.0.0.1:0", "--config"])
                .arg(deploy("drover.toml"))
                .env("DROVER_STORE__URL", &database)
                .env("VASTAI_API_KEY", KEY)
                .env("DROVER_PROVIDER__BASE_URL", &fake.url)
                .env("DROVER_SUPERVISOR__DATA_DIR", dir.path().join(format!("data-{n}")));
            start_command(command)
        })
        .collect();
    for replica in &replicas {
        let addr = replica.url.trim_start_matches("http://");
        assert_eq!(kubelet_get(addr, "/healthz"), 200, "liveness");
        let deadline = Instant::now() + Duration::from_secs(30);
        while kubelet_get(addr, "/readyz") != 200 {
            assert!(Instant::now() < deadline, "{addr} never ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Both are live replicas of the one deployment the file names.
    let rows: Vec<(String, String)> = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&database).await.unwrap();
        sqlx::query_as("SELECT deployment, replica_id FROM replicas ORDER BY replica_id")
            .fetch_all(&pool)
            .await
            .unwrap()
    });
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|(deployment, _)| deployment == "drover-fleet"), "{rows:?}");
    assert_ne!(rows[0].1, rows[1].1);
}
