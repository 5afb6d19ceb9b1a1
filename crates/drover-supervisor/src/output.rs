//! A driver's stdout and stderr: always drained, split into lines (at `\n` or `\r`; empty
//! lines are skipped), each line cut at
//! [`crate::Options::output_line_bytes`], the last [`crate::Options::output_tail_lines`] kept
//! for the death report, and each line logged (at most [`LOGGED_LINES_PER_SECOND`] per second
//! per stream; the rest are counted and the count is logged).
//!
//! Nothing a driver writes there reaches the transport: a stray `print` is a log line, never
//! a corrupted frame.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Lines per second and stream written to the supervisor's log; the rest are only counted.
pub const LOGGED_LINES_PER_SECOND: u32 = 50;

/// The last lines of one stream, shared between the drain task and the session.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Tail {
    /// A copy of the kept lines, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }

    fn push(&self, line: String, keep: usize) {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() >= keep {
            lines.pop_front();
        }
        if keep > 0 {
            lines.push_back(line);
        }
    }
}

/// Reads `source` to its end, line by line, into `tail` and the log.
pub(crate) async fn drain<R: AsyncRead + Unpin>(
    mut source: R,
    tail: Tail,
    driver: String,
    stream: &'static str,
    keep: usize,
    max_line: usize,
) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut window = Instant::now();
    let (mut logged, mut unlogged) = (0u32, 0u64);
    let mut emit = |bytes: &[u8], cut: bool| {
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        if cut {
            text.push_str(" [cut]");
        }
        if window.elapsed() >= Duration::from_secs(1) {
            if unlogged > 0 {
                tracing::warn!(%driver, stream, lines = unlogged, "driver output not logged (rate limit)");
            }
            window = Instant::now();
            (logged, unlogged) = (0, 0);
        }
        if logged < LOGGED_LINES_PER_SECOND {
            logged += 1;
            tracing::info!(%driver, stream, line = %text, "driver output");
        } else {
            unlogged += 1;
        }
        tail.push(text, keep);
    };
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &buf[..n] {
            // `\r` ends a line too (progress bars redraw with it); empty lines are skipped.
            if byte == b'\n' || byte == b'\r' {
                if !line.is_empty() || cut {
                    emit(&line, cut);
                }
                line.clear();
                cut = false;
            } else if line.len() < max_line {
                line.push(byte);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() || cut {
        emit(&line, cut);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_cut_and_only_the_last_ones_kept() {
        let input: Vec<u8> =
            [&b"one\r\ntwo\n\n 10%\r 20%\r"[..], &[b'x'; 50], b"\n\xff tail"].concat();
        let tail = Tail::default();
        drain(&input[..], tail.clone(), "d".into(), "stdout", 4, 8).await;
        assert_eq!(tail.snapshot(), [" 10%", " 20%", "xxxxxxxx [cut]", "\u{fffd} tail"]);
    }
}
