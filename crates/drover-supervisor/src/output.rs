//! A driver's stdout and stderr: always drained, split into lines (at `\n` or `\r`; empty
//! lines are skipped), each line cut at
//! [`crate::Options::output_line_bytes`], the last [`crate::Options::output_tail_lines`] kept
//! for the death report, and each line logged (at most [`LOGGED_LINES_PER_SECOND`] per second
//! per stream; the rest are counted and the count is logged).
//!
//! Nothing a driver writes there reaches the transport: a stray `print` is a log line, never
//! a corrupted frame.
//!
//! An idle stream owns no read buffer: the drain waits for readiness, then reads at most
//! [`READ_CHUNK`] bytes (8 KiB) into a buffer that lives only for that read, so each connected
//! driver pays only for its partial line (at most the line cap) and its kept tail.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::unix::pipe;

/// Lines per second and stream written to the supervisor's log; the rest are only counted.
pub const LOGGED_LINES_PER_SECOND: u32 = 50;

/// Most bytes one read takes from a driver's stdout or stderr.
pub const READ_CHUNK: usize = 8192;

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
pub(crate) async fn drain(
    source: pipe::Receiver,
    tail: Tail,
    driver: String,
    stream: &'static str,
    keep: usize,
    max_line: usize,
) {
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
        if source.readable().await.is_err() {
            break;
        }
        // Not held across the await above: a waiting drain owns no buffer.
        let mut buf = [0u8; READ_CHUNK];
        let n = match source.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
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
        let (mut writer, reader) = pipe::pipe().unwrap();
        // More than one read's worth, so lines also span reads.
        let input = [&[b'y'; READ_CHUNK + 3][..], b"\n", &input].concat();
        let writing = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut writer, &input).await.unwrap();
        });
        drain(reader, tail.clone(), "d".into(), "stdout", 4, 8).await;
        writing.await.unwrap();
        assert_eq!(tail.snapshot(), [" 10%", " 20%", "xxxxxxxx [cut]", "\u{fffd} tail"]);
    }
}
