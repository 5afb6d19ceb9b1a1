//! Starting the driver under test: sandboxed (the default profile, as the supervisor would) or
//! not (`--no-sandbox`), with the transport on fd 3 and stdout and stderr captured.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use drover_sandbox::{Command, Dropped, Policy, prepare};
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tokio::sync::{oneshot, watch};

/// Lines of each output stream kept for the report.
const TAIL_LINES: usize = 8;
/// Longest output line kept, in characters.
const TAIL_LINE_CHARS: usize = 200;

/// How the driver is started.
#[derive(Clone, Debug)]
pub(crate) enum Launcher {
    /// In the sandbox, after Phase A.
    Sandboxed {
        /// The policy (the default profile plus read grants for the program and scripts).
        policy: Box<Policy>,
        /// Phase A's proof.
        dropped: Dropped,
    },
    /// As a plain child process.
    Plain,
}

/// What the driver wrote on stdout and stderr.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub(crate) stdout_lines: u64,
    pub(crate) stdout_first: Option<String>,
    pub(crate) stderr: VecDeque<String>,
}

impl Output {
    /// The last lines of stderr, joined, for a failure's reason.
    pub(crate) fn stderr_tail(&self) -> String {
        self.stderr.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

/// A started driver.
#[derive(Debug)]
pub(crate) struct Process {
    /// Set once the driver has died: why, in words.
    pub(crate) exit: watch::Receiver<Option<String>>,
    /// What it printed.
    pub(crate) output: Arc<Mutex<Output>>,
    kill: Option<Killer>,
    _work_dir: tempfile::TempDir,
}

#[derive(Debug)]
enum Killer {
    /// A byte written here makes the sandbox's wait kill the driver.
    Pipe(OwnedFd),
    /// Sent, the waiting task kills the child.
    Channel(oneshot::Sender<()>),
}

impl Process {
    /// Starts `argv` with `theirs` as its transport.
    pub(crate) fn start(
        launcher: &Launcher,
        argv: &[OsString],
        theirs: StdUnixStream,
    ) -> anyhow::Result<Self> {
        let work_dir = tempfile::Builder::new()
            .prefix("drover-driver-check-")
            .tempdir()
            .context("creating the driver's work directory")?;
        let output = Arc::new(Mutex::new(Output::default()));
        let (exit_tx, exit) = watch::channel(None);
        let (program, args) = argv.split_first().context("no command given")?;
        let kill = match launcher {
            Launcher::Sandboxed { policy, dropped } => {
                let (out_read, out_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
                let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
                let (stop_read, stop_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
                let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
                let mut command = Command::new(program.clone(), work_dir.path().to_path_buf())
                    .args(args.iter().cloned());
                command.transport = Some(OwnedFd::from(theirs));
                command.stdio = [Some(OwnedFd::from(null)), Some(out_write), Some(err_write)];
                let (started_tx, started) = std::sync::mpsc::channel();
                let policy = policy.clone();
                let dropped = dropped.clone();
                // The sandbox's wait blocks, and PDEATHSIG follows the spawning thread: one
                // thread per driver prepares, spawns and waits for it.
                std::thread::Builder::new()
                    .name("driver-check-wait".into())
                    .spawn(move || {
                        let spawned = prepare(&policy, command, &dropped)
                            .context("preparing the sandbox")
                            .and_then(|p| p.spawn().context("starting the sandboxed driver"));
                        let mut sandboxed = match spawned {
                            Ok(sandboxed) => {
                                let _ = started_tx.send(Ok(()));
                                sandboxed
                            }
                            Err(error) => {
                                let _ = started_tx.send(Err(error));
                                return;
                            }
                        };
                        let cause = match sandboxed.wait(Some(stop_read.as_fd())) {
                            Ok(death) => death.cause.to_string(),
                            Err(error) => format!("lost: {error}"),
                        };
                        drop(sandboxed);
                        let _ = exit_tx.send(Some(cause));
                    })
                    .context("starting the wait thread")?;
                started.recv().context("the wait thread ended")??;
                capture(out_read, Stream::Stdout, &output)?;
                capture(err_read, Stream::Stderr, &output)?;
                Killer::Pipe(stop_write)
            }
            Launcher::Plain => {
                // The child end must survive exec: clear close-on-exec, and let a shell move
                // it to fd 3 (std cannot place descriptors above 2 without `unsafe`; bash, unlike dash,
                // takes descriptor numbers above 9).
                let theirs = OwnedFd::from(theirs);
                fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty()))?;
                let n = std::os::fd::AsRawFd::as_raw_fd(&theirs);
                let script = format!("exec 3<&{n} {n}<&- && exec \"$@\"");
                let mut child = tokio::process::Command::new("bash")
                    .arg("-c")
                    .arg(script)
                    .arg("drover-driver")
                    .arg(program)
                    .args(args)
                    .env("DROVER_TRANSPORT_FD", "3")
                    .current_dir(work_dir.path())
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting the driver")?;
                drop(theirs);
                if let Some(stdout) = child.stdout.take() {
                    spawn_lines(tokio::io::BufReader::new(stdout), Stream::Stdout, &output);
                }
                if let Some(stderr) = child.stderr.take() {
                    spawn_lines(tokio::io::BufReader::new(stderr), Stream::Stderr, &output);
                }
                let (kill_tx, kill_rx) = oneshot::channel::<()>();
                tokio::spawn(async move {
                    let status = tokio::select! {
                        status = child.wait() => status,
                        _ = kill_rx => {
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    };
                    let cause = match status {
                        Ok(status) => describe(status),
                        Err(error) => format!("lost: {error}"),
                    };
                    let _ = exit_tx.send(Some(cause));
                });
                Killer::Channel(kill_tx)
            }
        };
        Ok(Self { exit, output, kill: Some(kill), _work_dir: work_dir })
    }

    /// Whether the driver is still running.
    pub(crate) fn alive(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// Why the driver died, if it did.
    pub(crate) fn died(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Waits until the driver dies or `until`; returns why it died.
    pub(crate) async fn wait_until(&mut self, until: tokio::time::Instant) -> Option<String> {
        let mut exit = self.exit.clone();
        let _ = tokio::time::timeout_at(until, exit.wait_for(Option::is_some)).await;
        self.died()
    }

    /// Kills the driver (if it still runs) and waits for it.
    pub(crate) async fn kill(&mut self) {
        match self.kill.take() {
            Some(Killer::Pipe(fd)) => {
                let _ = nix::unistd::write(&fd, b"k");
            }
            Some(Killer::Channel(tx)) => {
                let _ = tx.send(());
            }
            None => {}
        }
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        self.wait_until(until).await;
    }

    /// A short description of the driver's death with the end of its stderr, for reasons.
    pub(crate) fn death_note(&self) -> String {
        let output = self.output.lock();
        let tail = output.stderr_tail();
        let died = self.died().unwrap_or_else(|| "is still running".to_owned());
        if tail.is_empty() { died } else { format!("{died}; stderr: {tail}") }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "ended".to_owned(),
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn capture(read: OwnedFd, stream: Stream, output: &Arc<Mutex<Output>>) -> anyhow::Result<()> {
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(read)
        .context("reading the driver's output")?;
    spawn_lines(tokio::io::BufReader::new(receiver), stream, output);
    Ok(())
}

fn spawn_lines<R>(mut reader: R, stream: Stream, output: &Arc<Mutex<Output>>)
where
    R: tokio::io::AsyncBufRead + Unpin + Send + 'static,
{
    let output = Arc::clone(output);
    tokio::spawn(async move {
        let mut line = Vec::new();
        loop {
            line.clear();
            // A line is capped while it is read, so a driver cannot grow this buffer.
            match (&mut reader).take(64 * 1024).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text: String = String::from_utf8_lossy(&line)
                .trim_end_matches(['\n', '\r'])
                .chars()
                .take(TAIL_LINE_CHARS)
                .collect();
            let mut output = output.lock();
            match stream {
                Stream::Stdout => {
                    output.stdout_lines += 1;
                    output.stdout_first.get_or_insert(text);
                }
                Stream::Stderr => {
                    if output.stderr.len() == TAIL_LINES {
                        output.stderr.pop_front();
                    }
                    output.stderr.push_back(text);
                }
            }
        }
    });
}

/// `argv` with every argument that names an existing file by a relative path made absolute:
/// the driver starts in its own work directory, so `python3 drivers/x.py` must reach the script
/// wherever the check was started. The program (`argv[0]`) is rewritten only when it has a
/// directory part (`./driver`); a bare name is looked up in `PATH`. Symbolic links are kept,
/// not resolved: a venv's `.venv/bin/python` is a link to the system interpreter that finds
/// its venv through the path it was started by.
pub(crate) fn absolute_args(argv: &[OsString]) -> Vec<OsString> {
    argv.iter()
        .enumerate()
        .map(|(i, arg)| {
            let path = Path::new(arg);
            let program_by_name = i == 0 && path.components().count() < 2;
            if path.is_absolute() || program_by_name || !path.is_file() {
                return arg.clone();
            }
            std::path::absolute(path).map_or_else(|_| arg.clone(), PathBuf::into_os_string)
        })
        .collect()
}

/// Read grants for a sandboxed driver: the program's file when it is given as a path, and the
/// directory of every argument that names an existing file (a script, which may import its
/// neighbours), each canonicalized.
pub(crate) fn read_grants(argv: &[OsString]) -> Vec<PathBuf> {
    let mut grants = Vec::new();
    for (i, arg) in argv.iter().enumerate() {
        let path = PathBuf::from(arg);
        if path.components().count() < 2 || !path.is_file() {
            continue;
        }
        let Ok(path) = path.canonicalize() else { continue };
        let grant = if i == 0 { Some(path) } else { path.parent().map(PathBuf::from) };
        grants.extend(grant);
    }
    grants
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_without_resolving_links() {
        // Under the current directory, so that it can be named by a relative path.
        let dir = tempfile::tempdir_in(".").unwrap();
        let name = dir.path().file_name().unwrap();
        let venv_bin = dir.path().join(".venv/bin");
        std::fs::create_dir_all(&venv_bin).unwrap();
        std::os::unix::fs::symlink("/bin/sh", venv_bin.join("python")).unwrap();
        std::fs::write(dir.path().join("driver.py"), "").unwrap();
        let relative = Path::new(name);
        let argv: Vec<OsString> = vec![
            relative.join(".venv/bin/python").into(),
            relative.join("driver.py").into(),
            "--flag".into(),
        ];
        let absolute = absolute_args(&argv);
        let cwd = std::env::current_dir().unwrap().join(name);
        assert_eq!(
            absolute[0],
            cwd.join(".venv/bin/python").into_os_string(),
            "the link, not /bin/sh"
        );
        assert_eq!(absolute[1], cwd.join("driver.py").into_os_string());
        assert_eq!(absolute[2], OsString::from("--flag"));
        // The script's directory (and the venv under it) becomes readable.
        assert!(read_grants(&absolute).contains(&cwd.canonicalize().unwrap()));
    }
}
