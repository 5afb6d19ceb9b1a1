//! One driver process: spawned through the sandbox on a dedicated thread, with the transport
//! at fd 3 (`DROVER_TRANSPORT_FD=3`), stdin on `/dev/null`, stdout and stderr on pipes, and a
//! stop pipe that kills it. With `transport = "stdio"` the transport is the driver's stdin and
//! stdout instead (`DROVER_TRANSPORT=stdio` in its environment) and only stderr is captured.
//!
//! The sandbox is prepared on tokio's blocking pool, at most [`PREPARING_AT_ONCE`] (2) at a
//! time; the thread only spawns (the `pre_exec`
//! path allocates nothing; `PDEATHSIG` is tied to this thread, which lives exactly as long as
//! the driver), so the memory it keeps for the driver's lifetime is what spawning and waiting
//! touch, not what preparing did. It reports the start, then blocks
//! in [`drover_sandbox::Sandboxed::wait`] until the driver dies and reports the typed death.
//! Writing to, or closing, the stop pipe makes the sandbox kill the driver; so dropping a
//! [`Process`] always ends its driver.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;

use drover_proto::config::TransportKind;
use drover_sandbox::{Command, Death, Terminator, prepare};
use nix::fcntl::OFlag;
use tokio::net::UnixStream;
use tokio::net::unix::pipe;
use tokio::sync::{Semaphore, oneshot};

use crate::spec::{DriverSpec, Options};

/// Sandboxes prepared at once (each on a blocking-pool thread).
pub(crate) const PREPARING_AT_ONCE: usize = 2;

static PREPARING: Semaphore = Semaphore::const_new(PREPARING_AT_ONCE);

/// Why a driver process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnFailure {
    /// The driver's `command` is empty.
    #[error("driver {driver}: command is empty")]
    NoCommand {
        /// The driver.
        driver: String,
    },
    /// A descriptor or directory the spawn needs could not be made.
    #[error("driver {driver}: {what}: {source}")]
    Setup {
        /// The driver.
        driver: String,
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox refused or failed to start the process.
    #[error("driver {driver}: sandbox: {reason}")]
    Sandbox {
        /// The driver.
        driver: String,
        /// The sandbox's error, as text.
        reason: String,
    },
}

/// The supervisor's ends of a started process's descriptors.
#[derive(Debug)]
pub(crate) struct Streams {
    /// The supervisor's end of the transport.
    pub(crate) transport: UnixStream,
    /// The driver's stdout, unless it carries the transport.
    pub(crate) stdout: Option<pipe::Receiver>,
    /// The driver's stderr.
    pub(crate) stderr: pipe::Receiver,
}

/// A started driver process.
#[derive(Debug)]
pub(crate) struct Process {
    /// The pid, for logs.
    pub(crate) pid: u32,
    /// Sends SIGTERM.
    pub(crate) terminator: Terminator,
    /// Resolves when the driver has died (and has been reaped).
    pub(crate) death: oneshot::Receiver<Result<Death, String>>,
    /// Protections the kernel could not provide, as text.
    pub(crate) degradations: Vec<String>,
    /// Writing here (or dropping it) kills the driver.
    stop: Option<File>,
    /// The private work directory (mode 0700), removed with whatever the driver left in it
    /// when the process is dropped.
    _work_dir: Option<drover_sandbox::work_dir::WorkDir>,
}

impl Process {
    /// Asks the sandbox to kill the driver now (SIGKILL to its whole namespace or group).
    pub(crate) fn kill(&mut self) {
        if let Some(mut stop) = self.stop.take() {
            let _ = stop.write_all(b"k");
        }
    }
}

fn pipe_pair(driver: &str, what: &'static str) -> Result<(OwnedFd, OwnedFd), SpawnFailure> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnFailure::Setup {
        driver: driver.to_owned(),
        what,
        source: e.into(),
    })
}

/// Starts one process of `spec`.
pub(crate) async fn spawn(
    spec: &DriverSpec,
    options: &Options,
) -> Result<(Process, Streams), SpawnFailure> {
    let driver = spec.config.name.to_string();
    let setup = |what| {
        let driver = driver.clone();
        move |source| SpawnFailure::Setup { driver, what, source }
    };
    let mut argv = spec.config.command.iter();
    let program = argv.next().ok_or_else(|| SpawnFailure::NoCommand { driver: driver.clone() })?;

    let (work_dir, scratch): (PathBuf, _) = match &spec.work_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let scratch = drover_sandbox::work_dir::WorkDir::create_in(
                &options.scratch_dir,
                &format!("drover-{driver}-"),
            )
            .map_err(setup("creating the work directory"))?;
            (scratch.path().to_path_buf(), Some(scratch))
        }
    };

    let (ours, theirs) = StdUnixStream::pair().map_err(setup("socketpair"))?;
    ours.set_nonblocking(true).map_err(setup("socketpair"))?;
    let transport = UnixStream::from_std(ours).map_err(setup("socketpair"))?;
    let (stderr_read, stderr_write) = pipe_pair(&driver, "stderr pipe")?;
    let (stop_read, stop_write) = pipe_pair(&driver, "stop pipe")?;
    let stderr = pipe::Receiver::from_owned_fd(stderr_read).map_err(setup("stderr pipe"))?;
    let mut policy = spec.policy.clone();
    let mut command = Command::new(program, work_dir).args(argv);
    command.memory_cgroup = options.cgroups.clone();
    let stdout = match spec.config.transport {
        TransportKind::Fd3 => {
            let (stdout_read, stdout_write) = pipe_pair(&driver, "stdout pipe")?;
            let stdin = File::open("/dev/null").map_err(setup("opening /dev/null"))?;
            command.transport = Some(OwnedFd::from(theirs));
            command.stdio = [Some(OwnedFd::from(stdin)), Some(stdout_write), Some(stderr_write)];
            Some(pipe::Receiver::from_owned_fd(stdout_read).map_err(setup("stdout pipe"))?)
        }
        TransportKind::Stdio => {
            let theirs = OwnedFd::from(theirs);
            let stdin = theirs.try_clone().map_err(setup("socketpair"))?;
            command.stdio = [Some(stdin), Some(theirs), Some(stderr_write)];
            policy.env.push(("DROVER_TRANSPORT".into(), "stdio".into()));
            None
        }
    };
    let dropped = options.dropped.clone();

    // Prepared on the blocking pool: the driver's own thread then only spawns and waits, so
    // what preparing allocates and the stack it uses are not kept for the driver's lifetime.
    // At most PREPARING_AT_ONCE at a time, so that starting many drivers at once reuses a
    // few blocking threads instead of starting one per driver.
    let permit = PREPARING.acquire().await.map_err(|error| SpawnFailure::Sandbox {
        driver: driver.clone(),
        reason: format!("preparing the sandbox: {error}"),
    })?;
    let prepared = tokio::task::spawn_blocking(move || prepare(&policy, command, &dropped))
        .await
        .map_err(|error| SpawnFailure::Sandbox {
            driver: driver.clone(),
            reason: format!("preparing the sandbox did not finish: {error}"),
        })?
        .map_err(|error| SpawnFailure::Sandbox {
            driver: driver.clone(),
            reason: error.to_string(),
        })?;

    drop(permit);

    let (started_tx, started_rx) = oneshot::channel();
    let (death_tx, death_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("driver-{driver}"))
        .spawn(move || {
            let spawned = prepared.spawn();
            let mut sandboxed = match spawned {
                Ok(sandboxed) => sandboxed,
                Err(error) => {
                    let _ = started_tx.send(Err(error.to_string()));
                    return;
                }
            };
            let terminator = match sandboxed.terminator() {
                Ok(terminator) => terminator,
                Err(error) => {
                    sandboxed.kill("set-up failed");
                    let _ = sandboxed.wait(None);
                    let _ = started_tx.send(Err(error.to_string()));
                    return;
                }
            };
            let degradations = sandboxed.degradations().iter().map(ToString::to_string).collect();
            let _ = started_tx.send(Ok((sandboxed.pid(), terminator, degradations)));
            let death = sandboxed.wait(Some(stop_read.as_fd())).map_err(|e| e.to_string());
            drop(sandboxed);
            let _ = death_tx.send(death);
        })
        .map_err(setup("starting the driver thread"))?;

    let started = started_rx.await.unwrap_or_else(|_| Err("the driver thread ended".to_owned()));
    let (pid, terminator, degradations) =
        started.map_err(|reason| SpawnFailure::Sandbox { driver: driver.clone(), reason })?;
    let streams = Streams { transport, stdout, stderr };
    let process = Process {
        pid,
        terminator,
        death: death_rx,
        degradations,
        stop: Some(File::from(stop_write)),
        _work_dir: scratch,
    };
    Ok((process, streams))
}
