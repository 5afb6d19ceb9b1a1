//! A real PostgreSQL server for tests, started by the test binary itself.
//!
//! One server per test binary, on a Unix socket in a temporary directory (no TCP port, so test
//! binaries running side by side never collide), one fresh database per test. The server runs
//! as `nobody` when the tests run as root (PostgreSQL refuses root; CI runs as root), under a
//! shell that stops it when this process's end of a pipe closes, so no server outlives the
//! test binary however it ends.
//!
//! The binaries are found through `DROVER_TEST_PG_BIN` (a directory), then `PATH`, then
//! Debian's `/usr/lib/postgresql/<version>/bin` (newest version). A missing server is a test
//! failure, not a skip: `.ci/run` installs Debian's `postgresql` package.
//!
//! `fsync = off` on this throwaway cluster: the tests check what the store writes and how
//! concurrent writers are kept apart, not the disk; the SQLite crash test covers durability.

// A server that cannot start is a test failure, said as plainly as possible.
#![allow(clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor};

/// The superuser `initdb` creates.
const USER: &str = "drover";

/// `nobody` on Debian, which PostgreSQL runs as when the tests are root.
const NOBODY: u32 = 65534;

struct Server {
    /// Removed by the wrapper once the server has stopped (a static is never dropped).
    dir: tempfile::TempDir,
    /// The wrapper shell; its stdin is the pipe whose closing stops the server.
    _wrapper: Child,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// Options for a new, empty database on this binary's server.
pub async fn fresh_database() -> PgConnectOptions {
    let server = SERVER.get_or_init(start);
    let name = format!("t{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::SeqCst));
    let admin = server.options("postgres");
    // The socket exists a moment before the server accepts sessions ("starting up").
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        match sqlx::PgConnection::connect_with(&admin).await {
            Ok(conn) => break conn,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot connect to the test server: {error}"),
        }
    };
    conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create a database");
    conn.close().await.expect("close");
    server.options(&name)
}

/// A `postgres://` URL of a new, empty database on this binary's server (over its Unix
/// socket; no password: the test cluster trusts local connections).
pub async fn fresh_database_url() -> String {
    let options = fresh_database().await;
    let server = SERVER.get_or_init(start);
    format!(
        "postgres://{USER}@localhost/{}?host={}",
        options.get_database().unwrap_or_default(),
        server.dir.path().display()
    )
}

impl Server {
    fn options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new().socket(self.dir.path()).username(USER).database(database)
    }
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DROVER_TEST_PG_BIN") {
        return dir.into();
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file());
    if let Some(dir) = on_path {
        return dir;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, postgres): install Debian's `postgresql` \
             package or set DROVER_TEST_PG_BIN"
        )
    })
}

/// Runs as `nobody` when this process is root.
fn as_server_user(command: &mut Command) -> &mut Command {
    if is_root() { command.uid(NOBODY).gid(NOBODY) } else { command }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn start() -> Server {
    let bin = bin_dir();
    let dir =
        tempfile::Builder::new().prefix("drover-pg-").tempdir().expect("a temporary directory");
    if is_root() {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
    }
    let data = dir.path().join("data");
    let output = as_server_user(
        Command::new(bin.join("initdb"))
            .args(["--auth=trust", "--encoding=UTF8", "--no-sync", "--username", USER, "-D"])
            .arg(&data)
            .env("LC_ALL", "C")
            .current_dir(dir.path()),
    )
    .output()
    .expect("run initdb");
    assert!(output.status.success(), "initdb failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut wrapper = as_server_user(
        Command::new("sh")
            .arg("-c")
            .arg(
                r#""$1" -D "$2" -k "$3" -c listen_addresses= -c fsync=off -c max_connections=200 & pid=$!
                   read _ignored
                   kill -TERM "$pid"; wait "$pid"
                   rm -rf "$3""#,
            )
            .arg("postgres-under-test")
            .arg(bin.join("postgres"))
            .arg(&data)
            .arg(dir.path())
            .env("LC_ALL", "C")
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .spawn()
    .expect("start postgres");
    wait_for_socket(dir.path(), &mut wrapper);
    // The pipe's write end stays open in this process until it exits.
    if let Some(stdin) = wrapper.stdin.as_mut() {
        stdin.flush().expect("the wrapper's stdin");
    }
    Server { dir, _wrapper: wrapper }
}

fn wait_for_socket(dir: &Path, wrapper: &mut Child) {
    let socket = dir.join(".s.PGSQL.5432");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Ok(Some(status)) = wrapper.try_wait() {
            panic!("postgres exited before it listened: {status}");
        }
        assert!(Instant::now() < deadline, "postgres did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}
