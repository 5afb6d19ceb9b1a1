//! Finding the transport the supervisor gave this process.
//!
//! | Environment | Transport |
//! |---|---|
//! | `DROVER_TRANSPORT=stdio` | stdin (frames in) and stdout (frames out); nothing else may write to stdout |
//! | `DROVER_TRANSPORT_FD=N` (the sandbox sets `3`) | the `SOCK_STREAM` Unix socket at fd `N` |
//! | neither | [`TransportError::NotStarted`]: the process was not started as a driver |
//!
//! The descriptor is adopted at most once per process; a second [`Transport::from_env`] is
//! [`TransportError::AlreadyTaken`]. Adopting it is `drover_sys::fd::adopt_socket`,
//! which first checks through `/proc/self/fd/N` that the descriptor is open and is a socket, so
//! a driver started by hand (with fd 3 closed, or a file there) gets an error instead of
//! undefined behaviour, and this crate has no `unsafe` code.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use drover_sys::fd::AdoptError;

/// The variable that selects the stdio transport when it is `stdio`.
pub const TRANSPORT_ENV: &str = "DROVER_TRANSPORT";
/// The variable naming the descriptor of the socket transport (the sandbox sets it to `3`).
pub const TRANSPORT_FD_ENV: &str = "DROVER_TRANSPORT_FD";

/// Set once the transport descriptor has been adopted.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Why the transport could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Neither `DROVER_TRANSPORT=stdio` nor `DROVER_TRANSPORT_FD` is set.
    #[error(
        "not started as a drover driver: neither {TRANSPORT_ENV}=stdio nor {TRANSPORT_FD_ENV} is set (run it with `drover driver-check -- CMD` to test it)"
    )]
    NotStarted,
    /// `DROVER_TRANSPORT_FD` is not a descriptor number above 2.
    #[error("{TRANSPORT_FD_ENV} must be a descriptor number above 2, not {value:?}")]
    BadFd {
        /// The variable's value (a number, or at most 16 characters of it).
        value: String,
    },
    /// The descriptor is closed or is not a socket.
    #[error("{TRANSPORT_FD_ENV}={fd}: the descriptor is {what}, not the transport socket")]
    NotASocket {
        /// The descriptor.
        fd: RawFd,
        /// What it is instead (`closed`, or its `/proc/self/fd` link).
        what: String,
    },
    /// The transport was already taken by this process.
    #[error("the transport descriptor was already adopted by this process")]
    AlreadyTaken,
    /// Registering the socket with the runtime failed.
    #[error("cannot use the transport socket")]
    Io(#[source] std::io::Error),
}

/// The byte stream to the supervisor.
#[derive(Debug)]
pub enum Transport {
    /// The socket at `DROVER_TRANSPORT_FD`.
    Socket(tokio::net::UnixStream),
    /// stdin and stdout.
    Stdio(tokio::io::Join<tokio::io::Stdin, tokio::io::Stdout>),
}

impl Transport {
    /// Opens the transport named by the environment (see the [module docs](self)). Must be
    /// called inside a tokio runtime.
    pub fn from_env() -> Result<Self, TransportError> {
        if std::env::var_os(TRANSPORT_ENV).is_some_and(|v| v == "stdio") {
            if TAKEN.swap(true, Ordering::SeqCst) {
                return Err(TransportError::AlreadyTaken);
            }
            return Ok(Self::Stdio(tokio::io::join(tokio::io::stdin(), tokio::io::stdout())));
        }
        let Some(value) = std::env::var_os(TRANSPORT_FD_ENV) else {
            return Err(TransportError::NotStarted);
        };
        let value = value.to_string_lossy();
        let fd: RawFd = match value.parse() {
            Ok(fd) if fd > 2 => fd,
            _ => return Err(TransportError::BadFd { value: value.chars().take(16).collect() }),
        };
        if TAKEN.swap(true, Ordering::SeqCst) {
            return Err(TransportError::AlreadyTaken);
        }
        let owned = drover_sys::fd::adopt_socket(fd).map_err(|e| match e {
            AdoptError::NotASocket { fd, what } => TransportError::NotASocket { fd, what },
            AdoptError::AlreadyAdopted { .. } => TransportError::AlreadyTaken,
            AdoptError::Stdio { fd } => TransportError::BadFd { value: fd.to_string() },
        });
        let owned = match owned {
            Ok(owned) => owned,
            Err(e) => {
                // Not adopted: a later call may try again (e.g. after fixing the descriptor).
                TAKEN.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let std_stream = std::os::unix::net::UnixStream::from(owned);
        std_stream.set_nonblocking(true).map_err(TransportError::Io)?;
        tokio::net::UnixStream::from_std(std_stream).map(Self::Socket).map_err(TransportError::Io)
    }
}
