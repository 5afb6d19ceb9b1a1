//! A driver's stdout and stderr: always drained, split into lines (at `\n` or `\r`; empty
//! lines are skipped), each line cut at
//! [`crate::Options::output_line_bytes`], the last [`crate::Options::output_tail_lines`] kept
//! for the death report, and each line logged (at most [`LOGGED_LINES_PER_SECOND`] per second
//! per stream; the rest are counted and the count is logged).
//!
//! Nothing a driver writes there reaches the transport: a stray `print` is a log line, never
//! a corrupted frame. Nothing a driver writes reaches the supervisor's log raw either: every
//! driver-supplied text (these lines, `log` and `error` messages) is logged through
//! [`Escaped`], quoted and with every control character visible, so it can neither start a
//! forged log line nor pass a field (`driver=...`) off as the supervisor's.
//!
//! An idle stream owns no read buffer: the drain waits for readiness, then reads at most
//! [`READ_CHUNK`] bytes (8 KiB) into a buffer that lives only for that read, so each connected
//! driver pays only for its partial line (at most the line cap) and its kept tail.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::unix::pipe;

/// Lines per second and stream written to the supervisor's log; the rest are only counted.
pub const LOGGED_LINES_PER_SECOND: u32 = 50;

/// Most bytes one read takes from a driver's stdout or stderr.
pub const READ_CHUNK: usize = 8192;

/// Driver-supplied text as it goes into the supervisor's log: in double quotes, with `"` and
/// `\` escaped, `\n`, `\r`, `\t` as such, every other control character (C0, DEL, C1) as
/// `\xHH` (ESC is `\x1b`), and the Unicode line/paragraph separators and bidirectional
/// overrides, which reorder or break a line in a viewer, as `\u{HHHH}`. Everything else is
/// written as it is.
#[derive(Debug)]
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\x{:02x}", u32::from(c))?,
                '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                    write!(f, "\\u{{{:04x}}}", u32::from(c))?
                }
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// The last lines of one stream, shared between the drain task and the session.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Tail {
    /// A copy of the kept lines, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.lines.lock().iter().cloned().collect()
    }

    fn push(&self, line: String, keep: usize) {
        let mut lines = self.lines.lock();
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
            tracing::info!(%driver, stream, line = %Escaped(&text), "driver output");
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

    #[test]
    fn escaped_text_is_one_quoted_line_with_its_controls_visible() {
        let hostile = "\n2026-12-04T17:00:00Z  INFO drover: forged\r\x1b[2J\t\"q\" \\ \u{0}\u{7f}\u{85}\u{202e}é";
        let shown = Escaped(hostile).to_string();
        assert_eq!(
            shown,
            r#""\n2026-12-04T17:00:00Z  INFO drover: forged\r\x1b[2J\t\"q\" \\ \x00\x7f\x85\u{202e}é""#
        );
        assert!(shown.chars().all(|c| !c.is_control()));
    }
}
