//! The read budget of a session: a token bucket over the bytes read from a driver's
//! transport. When a driver sends faster than [`crate::Options::read_bytes_per_second`] (after
//! a burst of a quarter of that, at least two frames), the session stops reading until the
//! bucket refills, so the driver blocks in its own `write` and is slowed to the rate. The other
//! work of the session (heartbeats, commands, deadlines) goes on meanwhile; a pong waits at
//! most the time the socket buffer takes to drain at the rate (milliseconds).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// A stream that counts the bytes read through it.
#[derive(Debug)]
pub(crate) struct Metered<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T> Metered<T> {
    /// Wraps `inner`; the count is shared with the returned counter.
    pub(crate) fn new(inner: T) -> (Self, Arc<AtomicU64>) {
        let read = Arc::new(AtomicU64::new(0));
        (Self { inner, read: Arc::clone(&read) }, read)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        self.read.fetch_add(got as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A token bucket over a byte counter.
#[derive(Debug)]
pub(crate) struct ReadBudget {
    read: Arc<AtomicU64>,
    seen: u64,
    /// Bytes that may still be read now; negative after an overdraft.
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl ReadBudget {
    /// `rate` bytes per second, with a burst of a quarter second's worth (at least
    /// `min_burst`).
    pub(crate) fn new(read: Arc<AtomicU64>, rate: u64, min_burst: u64) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate / 4.0).max(min_burst as f64);
        Self { read, seen: 0, tokens: burst, rate, burst, at: Instant::now() }
    }

    /// `None` while reading may go on; otherwise the instant it may resume.
    pub(crate) fn resume_at(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let total = self.read.load(Ordering::Relaxed);
        let spent = total.saturating_sub(self.seen) as f64;
        self.seen = total;
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.at = now;
        self.tokens = (self.tokens + refill).min(self.burst) - spent;
        if self.tokens >= 0.0 {
            None
        } else {
            Some(now + Duration::from_secs_f64(-self.tokens / self.rate))
        }
    }
}
