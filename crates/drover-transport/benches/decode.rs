//! Decode + validate + deserialize, next to the limit: a direct typed `serde_json::from_slice`
//! of the same bytes into the envelope and the message struct, with no validation at all.
//!
//! Two frames: a ~130-byte `job_progress` (the common control frame) and a ~37 KB `job_log` of
//! 500 lines (the largest routine frame). Measured for each:
//!
//! - `limit`: `serde_json::from_slice::<DirectFrame<M>>(payload)` (see `common/direct.rs`:
//!   straight into the message struct, no tree, no tag buffering);
//! - `validated`: the codec decoding frames from a stream buffer, then `FrameValidator::decode`
//!   (its fast path: one pass from the bytes into the typed frame, the schema checked on every
//!   value);
//! - for comparison: the full path alone (`FrameValidator::decode_full`: strict parse to a
//!   `Value`, the compiled `jsonschema` validator, the typed frame from the tree; what every
//!   frame paid before the fast path and what a rejected frame still pays), the strict parse to
//!   `Value` alone, and `serde_json::from_slice::<Frame>` (serde's internally tagged enum, which
//!   buffers the message to find its tag).
//!
//! The harness is paired rather than sequential: each round times a batch of one contender
//! and then a batch of the other (alternating which goes first), and the ratio is taken per
//! round. On a shared 2-core machine the load changes from second to second; a ratio of two
//! batches a millisecond apart holds where two benchmarks run ten seconds apart do not.
//!
//! Usage: `cargo bench -p drover-transport --bench decode [-- --smoke]`. Prints a Markdown
//! section on stdout (`benches/transport.sh` puts it into BENCHMARKS.md).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
#![allow(clippy::cast_possible_truncation)]

use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "common/direct.rs"]
mod direct;

use bytes::BytesMut;
use direct::DirectFrame;
use drover_proto::{Frame, JobLog, JobProgress, examples};
use drover_transport::codec::{Decoded, FrameCodec};
use drover_transport::{FrameValidator, json};
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

/// Validated decode must stay within this factor of the direct typed parse (issue 18).
const TARGET: f64 = 1.3;
/// Aim for batches of about this long: long enough to time, short enough to pair closely.
const BATCH_TIME: Duration = Duration::from_millis(2);

/// A contender: runs `n` iterations and returns how long they took (setup excluded).
type Contender<'a> = Box<dyn FnMut(usize) -> Duration + 'a>;

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut values: Vec<f64>) -> Stats {
    values.sort_by(f64::total_cmp);
    Stats { median: values[values.len() / 2], min: values[0], max: values[values.len() - 1] }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Times `contenders` in interleaved batches; returns per-iteration nanoseconds per round for
/// each contender.
fn paired(rounds: usize, contenders: &mut [Contender<'_>]) -> Vec<Vec<f64>> {
    // Calibrate the batch size on the slowest contender.
    let slowest = contenders
        .iter_mut()
        .map(|c| {
            c(10);
            c(50).as_secs_f64() / 50.0
        })
        .fold(0.0, f64::max);
    let batch = ((BATCH_TIME.as_secs_f64() / slowest) as usize).clamp(1, 100_000);
    let mut samples = vec![Vec::with_capacity(rounds); contenders.len()];
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..contenders.len()).collect()
        } else {
            (0..contenders.len()).rev().collect()
        };
        for i in order {
            let elapsed = contenders[i](batch);
            samples[i].push(elapsed.as_nanos() as f64 / batch as f64);
        }
    }
    samples
}

fn format_ns(ns: f64) -> String {
    if ns >= 1000.0 { format!("{:.2} µs", ns / 1000.0) } else { format!("{ns:.0} ns") }
}

struct Row {
    label: String,
    bytes: usize,
    limit: Stats,
    validated: Stats,
    ratio: f64,
    ratio_p10: f64,
    ratio_p90: f64,
    stages: [f64; 3],
}

/// Measures `frame`, whose message is an `M`.
fn measure<M: DeserializeOwned>(label: &str, frame: &Frame, rounds: usize) -> Row {
    let validator = FrameValidator::shared();
    let payload = validator.encode(frame).unwrap();
    let mut one_frame = BytesMut::new();
    FrameCodec::new().encode(&payload[..], &mut one_frame).unwrap();

    let limit: Contender<'_> = Box::new(|n| {
        let start = Instant::now();
        for _ in 0..n {
            black_box(serde_json::from_slice::<DirectFrame<M>>(black_box(&payload)).unwrap());
        }
        start.elapsed()
    });
    let tagged: Contender<'_> = Box::new(|n| {
        let start = Instant::now();
        for _ in 0..n {
            black_box(serde_json::from_slice::<Frame>(black_box(&payload)).unwrap());
        }
        start.elapsed()
    });
    let validated: Contender<'_> = Box::new(|n| {
        // A stream of n frames, built before the clock starts.
        let mut stream = BytesMut::with_capacity(one_frame.len() * n);
        for _ in 0..n {
            stream.extend_from_slice(&one_frame);
        }
        let mut codec = FrameCodec::new();
        let start = Instant::now();
        while let Some(Decoded::Frame(bytes)) = codec.decode(&mut stream).unwrap() {
            black_box(validator.decode(&bytes).unwrap());
        }
        start.elapsed()
    });
    let full: Contender<'_> = Box::new(|n| {
        let start = Instant::now();
        for _ in 0..n {
            black_box(validator.decode_full(black_box(&payload)).unwrap());
        }
        start.elapsed()
    });
    let parse: Contender<'_> = Box::new(|n| {
        let start = Instant::now();
        for _ in 0..n {
            black_box(json::parse(black_box(&payload)).unwrap());
        }
        start.elapsed()
    });

    // All five in the same rounds, so the comparison figures hold next to the totals.
    let mut contenders = [limit, validated, full, parse, tagged];
    let [limit_ns, validated_ns, full_ns, parse_ns, tagged_ns]: [Vec<f64>; 5] =
        paired(rounds, &mut contenders).try_into().unwrap();
    let mut ratios: Vec<f64> = validated_ns.iter().zip(&limit_ns).map(|(v, l)| v / l).collect();
    ratios.sort_by(f64::total_cmp);

    Row {
        label: label.to_owned(),
        bytes: payload.len(),
        limit: stats(limit_ns),
        validated: stats(validated_ns),
        ratio: percentile(&ratios, 0.5),
        ratio_p10: percentile(&ratios, 0.1),
        ratio_p90: percentile(&ratios, 0.9),
        stages: [full_ns, parse_ns, tagged_ns].map(|ns| stats(ns).median),
    }
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke" || a == "--test");
    let rounds = if smoke { 3 } else { 400 };
    let rows = [
        measure::<JobProgress>("`job_progress`", &examples::job_progress(), rounds),
        measure::<JobLog>("`job_log`, 500 lines", &examples::job_log(500), rounds),
    ];
    let note = if smoke { " (smoke run: every figure below means nothing)" } else { "" };
    println!("## Frame validation: decode + validate + deserialize{note}");
    println!();
    println!(
        "Command: `cargo bench -p drover-transport --bench decode` ({rounds} paired rounds per frame)."
    );
    println!(
        "*Limit*: a direct typed parse: `serde_json::from_slice` of the same payload straight into"
    );
    println!(
        "the envelope and the message's own struct (its type known in advance), no validation at all."
    );
    println!(
        "*Validated*: the codec decodes frames from a stream buffer, then `FrameValidator::decode`:"
    );
    println!(
        "its fast path reads each frame in one pass straight into the typed message while a wrapper"
    );
    println!(
        "around the deserializer checks every value against the compiled schema of its `msg.type`"
    );
    println!(
        "(duplicate keys refused at any depth; a frame it does not accept goes to the full path,"
    );
    println!("which gives the same answer with every violation). Each round times a batch");
    println!(
        "of each (about 2 ms, alternating which goes first); the ratio is the median of the per-round"
    );
    println!(
        "ratios, with its 10th-90th percentile, so it holds while the machine is busy. Times are the"
    );
    println!("median per frame with the min-max over rounds.");
    println!();
    println!(
        "| Frame | Payload | Limit (direct typed parse) | Validated | Ratio (p10-p90) | Target | Verdict |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        let verdict = if row.ratio <= TARGET {
            "pass".to_owned()
        } else {
            format!("**fail**, {:.0}% over", (row.ratio / TARGET - 1.0) * 100.0)
        };
        println!(
            "| {} | {} B | {} ({}-{}) | {} ({}-{}) | {:.2}x ({:.2}-{:.2}) | <= {TARGET}x | {verdict} |",
            row.label,
            row.bytes,
            format_ns(row.limit.median),
            format_ns(row.limit.min),
            format_ns(row.limit.max),
            format_ns(row.validated.median),
            format_ns(row.validated.min),
            format_ns(row.validated.max),
            row.ratio,
            row.ratio_p10,
            row.ratio_p90,
        );
    }
    println!();
    println!(
        "For comparison, timed in the same rounds (median per frame): the full path alone (strict"
    );
    println!(
        "parse to a `Value` tree, the compiled `jsonschema` validator, the typed frame from the tree:"
    );
    println!(
        "what every frame paid before the fast path, and what a rejected frame still pays), its"
    );
    println!(
        "strict parse alone, and serde's own `Frame` parse (its tagged enum buffers the message):"
    );
    println!();
    println!(
        "| Frame | Validated (fast path) | Full path | Strict parse to `Value` | `from_slice::<Frame>` (tagged enum) |"
    );
    println!("|---|---|---|---|---|");
    for row in &rows {
        let [full, parse, tagged] = row.stages;
        println!(
            "| {} | {} | {} | {} | {} |",
            row.label,
            format_ns(row.validated.median),
            format_ns(full),
            format_ns(parse),
            format_ns(tagged)
        );
    }
    println!();
    println!(
        "**What a profile showed** (`valgrind --tool=callgrind` of `peers count` on the same frames,"
    );
    println!(
        "instructions per frame, 2026-12-05): the full path spent 2.5x the direct parse's instructions"
    );
    println!(
        "on `job_progress` (building and freeing the tree, then walking it twice); the fast path takes"
    );
    println!(
        "1.21x (job_progress: 6.2k vs 5.1k) and 1.11x (job_log: 507k vs 458k). What is left on a small"
    );
    println!(
        "frame is the per-key bookkeeping (which property, seen before, required) and the identifier"
    );
    println!(
        "patterns, matched byte by byte where they are runs of ASCII classes; on a large log, the"
    );
    println!("per-line length check and the sequence wrapper.");
    if rows.iter().any(|row| row.ratio > TARGET) {
        println!();
        println!(
            "**Why the target is missed, and the plan.** The instruction counts above meet the"
        );
        println!("target, so a miss in this table's times is the machine's noise on a few hundred");
        println!(
            "nanoseconds or the extra work the counts show (key bookkeeping and patterns on small"
        );
        println!(
            "frames). Plan: a per-node key table (perfect hash of the few property names) in place of"
        );
        println!("the linear search, and this section again on a quiet machine.");
    }
}
