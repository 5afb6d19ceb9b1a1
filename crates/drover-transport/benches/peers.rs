//! drover's side of the frame-validation comparison with Python peers
//! (`benches/validation-peers.sh`, which runs the peers in `benches/validation_peers.py`).
//!
//! Two modes, so that both sides see identical bytes:
//!
//! - `corpus DIR` writes three corpora of length-prefixed frames (exactly as they travel on
//!   the wire), built from `drover_proto::examples`: `control.frames` (one ~130-byte
//!   `job_progress`), `log.frames` (one ~37 KB `job_log` of 500 lines) and `mix.frames` (101
//!   frames a supervisor receives from a busy driver: every driver-sent type, mostly progress,
//!   states and small logs, a few large logs).
//! - `measure DIR MILLIS` times, for each corpus, drover's whole inbound pipeline on every
//!   frame (`FrameValidator::decode`: UTF-8, strict parse, dispatch on `msg.type`, that type's
//!   compiled schema, the typed frame) and the limit (a direct typed parse: `from_slice` into
//!   the envelope and the message struct, its type known in advance, no validation; see
//!   `common/direct.rs`) and serde_json's bare syntax scan (`from_slice::<IgnoredAny>`: nothing built,
//!   nothing allocated), each in alternating batches for about MILLIS milliseconds, and prints
//!   one JSON line per corpus: `{"corpus", "frames", "bytes", "drover_ns", "limit_ns",
//!   "scan_ns"}` with the median nanoseconds per frame over the batches.
//!
//! - `profile FILE SECONDS` runs only drover's pipeline over one corpus file for that long,
//!   for `perf record` (what it showed is in BENCHMARKS.md's peers section).
//! - `memory` prints, as JSON, the private memory (KiB of `RssAnon`) a new `FrameValidator`
//!   holds once built and once every message type went through both of its paths.
//! - `count WHAT FILE N` runs one contender N times over one corpus file and nothing else, for
//!   `valgrind --tool=callgrind` (instruction counts hold on a loaded machine where times do
//!   not): WHAT is `drover` (`FrameValidator::decode`), `full` (the pipeline without its fast
//!   path), `direct` (a typed `from_slice` into the envelope and the message struct, the
//!   limit), `tagged` (`from_slice::<Frame>`) or `none` (reading the corpus only, to subtract).
//!
//! Usage: `cargo bench -p drover-transport --bench peers -- corpus DIR` (the script runs the
//! built executable directly). Default MILLIS: 300.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
#![allow(clippy::cast_possible_truncation, clippy::print_stderr)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "common/direct.rs"]
mod direct;

use drover_proto::{Frame, MessageType, Party, examples};
use drover_transport::FrameValidator;
use serde::de::IgnoredAny;

const CORPORA: [&str; 3] = ["control", "log", "mix"];

fn payload(frame: &Frame) -> Vec<u8> {
    FrameValidator::shared().encode(frame).unwrap()
}

/// The frames of one corpus.
fn corpus(name: &str) -> Vec<Frame> {
    match name {
        "control" => vec![examples::job_progress()],
        "log" => vec![examples::job_log(500)],
        _ => {
            // Each driver-sent type, weighted as a busy session sends them.
            let weight = |t: MessageType| match t {
                MessageType::JobProgress => 40,
                MessageType::Pong | MessageType::JobState | MessageType::Log => 10,
                MessageType::Ack | MessageType::JobResult => 5,
                MessageType::AcquireGpu | MessageType::LeaseStatus | MessageType::ReleaseGpu => 2,
                _ => 1,
            };
            let mut frames = Vec::new();
            for frame in examples::frames() {
                let t = frame.msg.message_type();
                if t.sender() == Party::Supervisor {
                    continue;
                }
                let n = if t == MessageType::JobLog { 10 } else { weight(t) };
                frames.extend(std::iter::repeat_n(frame, n));
            }
            // Two large log batches, as a job streaming output sends now and then.
            frames.push(examples::job_log(100));
            frames.push(examples::job_log(100));
            frames
        }
    }
}

fn write_corpus(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for name in CORPORA {
        let mut bytes = Vec::new();
        for frame in corpus(name) {
            let p = payload(&frame);
            bytes.extend_from_slice(&(p.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&p);
        }
        std::fs::write(dir.join(format!("{name}.frames")), bytes).unwrap();
    }
}

fn read_corpus(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 4 {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(rest[4..4 + n].to_vec());
        rest = &rest[4 + n..];
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(dir: &Path, budget: Duration) {
    let validator = FrameValidator::shared();
    for name in CORPORA {
        let payloads = read_corpus(&dir.join(format!("{name}.frames")));
        let bytes: usize = payloads.iter().map(Vec::len).sum();
        // The limit knows each frame's type in advance.
        let direct: Vec<fn(&[u8])> = payloads
            .iter()
            .map(|p| direct::parser_for(validator.decode(p).unwrap().msg.message_type()))
            .collect();
        // Every frame must pass, or the comparison is meaningless.
        for p in &payloads {
            validator.decode(p).expect("corpus frame is valid");
        }
        let validated = |passes: usize| {
            let start = Instant::now();
            for _ in 0..passes {
                for p in &payloads {
                    black_box(validator.decode(black_box(p)).unwrap());
                }
            }
            start.elapsed()
        };
        let limit = |passes: usize| {
            let start = Instant::now();
            for _ in 0..passes {
                for (p, parse) in payloads.iter().zip(&direct) {
                    parse(black_box(p));
                }
            }
            start.elapsed()
        };
        // Batches of about 2 ms, alternating which goes first.
        let one = validated(3).as_secs_f64() / 3.0;
        let passes = ((0.002 / one) as usize).max(1);
        let scan = |passes: usize| {
            let start = Instant::now();
            for _ in 0..passes {
                for p in &payloads {
                    black_box(serde_json::from_slice::<IgnoredAny>(black_box(p)).unwrap());
                }
            }
            start.elapsed()
        };
        let per_frame = |d: Duration| d.as_nanos() as f64 / (passes * payloads.len()) as f64;
        let (mut v_ns, mut l_ns, mut s_ns) = (Vec::new(), Vec::new(), Vec::new());
        let start = Instant::now();
        let mut round = 0;
        while start.elapsed() < budget || round < 2 {
            if round % 2 == 0 {
                v_ns.push(per_frame(validated(passes)));
                l_ns.push(per_frame(limit(passes)));
                s_ns.push(per_frame(scan(passes)));
            } else {
                s_ns.push(per_frame(scan(passes)));
                l_ns.push(per_frame(limit(passes)));
                v_ns.push(per_frame(validated(passes)));
            }
            round += 1;
        }
        println!(
            "{}",
            serde_json::json!({
                "corpus": name,
                "frames": payloads.len(),
                "bytes": bytes,
                "drover_ns": median(v_ns),
                "limit_ns": median(l_ns),
                "scan_ns": median(s_ns),
            })
        );
    }
}

/// One run of contender `what` on `payload` (see `count` in the module docs).
fn count_one(validator: &FrameValidator, what: &str, payload: &[u8], direct: fn(&[u8])) {
    let payload = black_box(payload);
    match what {
        "drover" => drop(black_box(validator.decode(payload).unwrap())),
        "full" => drop(black_box(validator.decode_full(payload).unwrap())),
        "tagged" => drop(black_box(serde_json::from_slice::<Frame>(payload).unwrap())),
        "direct" => direct(payload),
        "none" => {}
        other => panic!("unknown contender {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["corpus", dir] => write_corpus(Path::new(dir)),
        ["profile", file, seconds] => {
            let validator = FrameValidator::shared();
            let payloads = read_corpus(Path::new(file));
            let budget = Duration::from_secs_f64(seconds.parse().unwrap());
            let start = Instant::now();
            while start.elapsed() < budget {
                for p in &payloads {
                    black_box(validator.decode(black_box(p)).unwrap());
                }
            }
        }
        ["memory"] => {
            // What the validators hold: private resident memory before and after compiling
            // them, then after every example frame was decoded and encoded (what a session
            // that has seen every type holds), in KiB.
            let anon = || {
                let status = std::fs::read_to_string("/proc/self/status").unwrap();
                let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap().to_owned();
                line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
            };
            let before = anon();
            let validator = FrameValidator::new().unwrap();
            let compiled = anon();
            for frame in examples::frames() {
                let payload = validator.encode(&frame).unwrap();
                black_box(validator.decode(&payload).unwrap());
                black_box(validator.decode_full(&payload).unwrap());
            }
            let used = anon();
            println!(
                "{}",
                serde_json::json!({"compiled_kib": compiled - before, "every_type_used_kib": used - before})
            );
        }
        ["count", what, file, n] => {
            let validator = FrameValidator::shared();
            // The typed parser for each payload is chosen before the loop: the limit knows the
            // type in advance.
            let payloads: Vec<_> = read_corpus(Path::new(file))
                .into_iter()
                .map(|p| {
                    let t = serde_json::from_slice::<Frame>(&p).unwrap().msg.message_type();
                    (p, direct::parser_for(t))
                })
                .collect();
            for _ in 0..n.parse::<usize>().unwrap() {
                for (p, direct) in &payloads {
                    count_one(validator, what, p, *direct);
                }
            }
        }
        ["measure", dir] => measure(Path::new(dir), Duration::from_millis(300)),
        ["measure", dir, millis] => {
            measure(Path::new(dir), Duration::from_millis(millis.parse().unwrap()));
        }
        // `cargo test --benches` runs bench targets with no arguments: a quick self-check.
        _ => {
            let dir = std::env::temp_dir().join(format!("drover-peers-{}", std::process::id()));
            write_corpus(&dir);
            measure(&dir, Duration::from_millis(1));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
