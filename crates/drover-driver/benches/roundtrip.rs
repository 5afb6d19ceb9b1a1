//! Round trip of a small request/response between a supervisor-side `Connection` and a Rust
//! SDK driver in another process, over a real `SOCK_STREAM` socketpair, next to a raw echo of
//! the same bytes over another socketpair.
//!
//! - *Validated*: the supervisor sends `ping` requests through `drover_transport::Connection`
//!   (schema-checked on the way out), the driver (this binary re-executed, serving
//!   `drover_driver::run` on the inherited descriptor) decodes and validates each one, answers
//!   `pong` (validated on the way out), and the supervisor decodes, validates and correlates
//!   the reply. That is the SDK's own heartbeat path, the smallest request/response.
//! - *Raw echo*: the same frame bytes written to a child that copies whatever it reads back
//!   with plain `read`/`write`, and read back by the parent: the floor for two processes
//!   trading these bytes over a socketpair.
//!
//! The same two shapes are then measured with the Python SDK's example driver
//! (`drivers/python/example_driver.py`, standard library only) in place of the Rust one,
//! against the same raw echo.
//!
//! Two shapes, each in paired rounds (a batch of one contender, then the other, alternating
//! which goes first; the ratio is taken per round): *one in flight* (each request waits for
//! its answer: latency, p50/p99 per pair) and *64 in flight* (pipelined: throughput).
//!
//! Each shape runs in two placements, every process pinned: *same CPU* (the bench and its
//! peers on one CPU: a wake-up is a context switch there) and *across CPUs* (the peers on
//! another CPU: every wake-up crosses CPUs, which in a virtual machine wakes an idle vCPU).
//! Unpinned, the scheduler chose a placement per process and run, and one contender could
//! pay cross-CPU wake-ups while the other did not: one run had the raw echo 2.8x slower than
//! the validated pair, a ratio that measured placement, not validation.
//!
//! Usage: `cargo bench -p drover-driver --bench roundtrip [-- --smoke]`. Prints a Markdown
//! section on stdout (`benches/roundtrip.sh`).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use drover_driver::{Action, Driver, Job, JobContext, JobOutcome};
use drover_proto::{Frame, Message, Party, Ping, Welcome};
use drover_transport::{Connection, FrameValidator, Inbound};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use tokio::net::UnixStream;

/// Validated pairs must stay within this factor of the raw echo.
const TARGET_RATIO: f64 = 3.0;
/// And reach this many validated pairs per second (pipelined).
const TARGET_PAIRS_PER_S: f64 = 100_000.0;
/// Requests in flight in the pipelined shape.
const WINDOW: usize = 64;

const ROLE_ENV: &str = "ROUNDTRIP_ROLE";
/// The CPU a child pins itself to before anything else.
const CPU_ENV: &str = "ROUNDTRIP_CPU";

/// Pins the calling thread (and the threads it starts later) to one CPU.
fn pin(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).unwrap();
    sched_setaffinity(Pid::from_raw(0), &set).unwrap();
}

/// The CPUs this process may run on, in order.
fn usable_cpus() -> Vec<usize> {
    let set = sched_getaffinity(Pid::from_raw(0)).unwrap();
    (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect()
}

/// Where the peers run relative to the bench, which is pinned to the first usable CPU.
#[derive(Clone, Copy)]
enum Placement {
    SameCpu,
    AcrossCpus,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Self::SameCpu => "same CPU",
            Self::AcrossCpus => "across CPUs",
        }
    }
}

struct Bench;

impl Driver for Bench {
    const NAME: &'static str = "roundtrip";
    const VERSION: &'static str = "1";

    fn actions(&self) -> Vec<Action> {
        vec![Action::with_schema("noop", serde_json::json!({"type": "object"}))]
    }

    async fn run(&self, _ctx: JobContext, _job: Job) -> JobOutcome {
        Ok(None)
    }
}

/// The raw echo child: copies stdin (the socket) to stdout (the same socket).
fn echo() {
    let mut buf = vec![0u8; 64 * 1024];
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    loop {
        let n = match nix::unistd::read(stdin.as_fd(), &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut at = 0;
        while at < n {
            match nix::unistd::write(stdout.as_fd(), &buf[at..n]) {
                Ok(written) => at += written,
                Err(_) => return,
            }
        }
    }
}

/// The Python SDK's example driver, with the socket at its own descriptor number, pinned to
/// `cpu` before the script runs.
fn spawn_python(theirs: StdUnixStream, cpu: usize) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../drivers/python/example_driver.py");
    let fd = OwnedFd::from(theirs);
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/../../drivers/python/src");
    let pinned = format!(
        "import os, runpy, sys; os.sched_setaffinity(0, {{{cpu}}}); sys.argv = [{script:?}]; \
         runpy.run_path({script:?}, run_name='__main__')"
    );
    let child = Command::new("python3")
        .args(["-c", &pinned])
        // The SDK from the source tree (a development run; drivers/python/test.sh installs it).
        .env("PYTHONPATH", sdk)
        .env("DROVER_TRANSPORT_FD", fd.as_raw_fd().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    drop(fd);
    child
}

/// The supervisor's side of the handshake: `hello` in, `welcome` out.
async fn handshake(ours: StdUnixStream) -> Validated {
    ours.set_nonblocking(true).unwrap();
    let mut conn = Connection::new(UnixStream::from_std(ours).unwrap(), Party::Supervisor);
    let Some(Inbound::Request { id, msg: Message::Hello(_) }) = conn.recv().await.unwrap() else {
        panic!("expected hello")
    };
    let welcome = Welcome {
        protocol_version: 1,
        session_id: "bench".parse().unwrap(),
        heartbeat_ms: 600_000,
        max_frame_bytes: 1 << 20,
    };
    conn.reply(id, welcome).await.unwrap();
    Validated { conn }
}

fn spawn(role: &str, theirs: StdUnixStream, cpu: usize) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    command.env(ROLE_ENV, role).env(CPU_ENV, cpu.to_string()).stderr(Stdio::inherit());
    if role == "echo" {
        let copy = theirs.try_clone().unwrap();
        command.stdin(OwnedFd::from(theirs)).stdout(OwnedFd::from(copy));
    } else {
        // The driver gets the socket at its own descriptor number, as DROVER_TRANSPORT_FD says.
        let fd = OwnedFd::from(theirs);
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        command.env("DROVER_TRANSPORT_FD", fd.as_raw_fd().to_string()).stdout(Stdio::null());
        let child = command.spawn().unwrap();
        drop(fd);
        return child;
    }
    command.spawn().unwrap()
}

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

fn format_us(ns: f64) -> String {
    format!("{:.1} µs", ns / 1000.0)
}

struct Validated {
    conn: Connection<UnixStream>,
}

impl Validated {
    /// `n` pairs with at most `window` in flight; per-pair latencies in ns when `window` is 1.
    async fn pairs(&mut self, n: usize, window: usize, latencies: &mut Vec<f64>) {
        let mut sent = 0;
        let mut done = 0;
        let mut started = Instant::now();
        while sent < window.min(n) {
            started = Instant::now();
            self.conn.request(Ping {}).await.unwrap();
            sent += 1;
        }
        while done < n {
            match self.conn.recv().await.unwrap().unwrap() {
                Inbound::Reply { msg: Message::Pong(_), .. } => {}
                other => panic!("expected pong, got {other:?}"),
            }
            done += 1;
            if window == 1 {
                latencies.push(started.elapsed().as_nanos() as f64);
            }
            if sent < n {
                started = Instant::now();
                self.conn.request(Ping {}).await.unwrap();
                sent += 1;
            }
        }
    }
}

struct Raw {
    stream: StdUnixStream,
    frame: Vec<u8>,
}

impl Raw {
    /// `n` pairs with at most `window` in flight, written one frame per `write` as the
    /// validated side does; replies are read as they come.
    fn pairs(&mut self, n: usize, window: usize, latencies: &mut Vec<f64>) {
        let len = self.frame.len();
        let mut back = vec![0u8; len * window];
        let mut sent = 0;
        let mut received_bytes = 0;
        let mut started = Instant::now();
        while sent < window.min(n) {
            started = Instant::now();
            self.stream.write_all(&self.frame).unwrap();
            sent += 1;
        }
        while received_bytes < n * len {
            let got = self.stream.read(&mut back).unwrap();
            assert!(got > 0, "the echo child went away");
            let before = received_bytes / len;
            received_bytes += got;
            for _ in before..received_bytes / len {
                if window == 1 {
                    latencies.push(started.elapsed().as_nanos() as f64);
                }
                if sent < n {
                    started = Instant::now();
                    self.stream.write_all(&self.frame).unwrap();
                    sent += 1;
                }
            }
        }
    }
}

struct Shape {
    label: &'static str,
    placement: Placement,
    window: usize,
    raw_ns: Stats,
    validated_ns: Stats,
    raw_pairs_per_s: f64,
    validated_pairs_per_s: f64,
    ratio: f64,
    ratio_p10: f64,
    ratio_p90: f64,
    raw_latency: Option<(f64, f64)>,
    validated_latency: Option<(f64, f64)>,
}

async fn measure(
    label: &'static str,
    placement: Placement,
    window: usize,
    rounds: usize,
    validated: &mut Validated,
    raw: &mut Raw,
) -> Shape {
    // Warm up, then size batches to about 5 ms of the raw echo.
    let (mut lat_v, mut lat_r) = (Vec::new(), Vec::new());
    validated.pairs(2000, window, &mut Vec::new()).await;
    raw.pairs(2000, window, &mut Vec::new());
    let start = Instant::now();
    raw.pairs(1000, window, &mut Vec::new());
    let per_pair = start.elapsed().as_secs_f64() / 1000.0;
    let batch = ((0.005 / per_pair) as usize).clamp(window.max(50), 200_000);
    let mut raw_ns = Vec::new();
    let mut validated_ns = Vec::new();
    for round in 0..rounds {
        let mut time_raw = || {
            let start = Instant::now();
            raw.pairs(batch, window, &mut lat_r);
            start.elapsed().as_nanos() as f64 / batch as f64
        };
        if round % 2 == 0 {
            raw_ns.push(time_raw());
            let start = Instant::now();
            validated.pairs(batch, window, &mut lat_v).await;
            validated_ns.push(start.elapsed().as_nanos() as f64 / batch as f64);
        } else {
            let start = Instant::now();
            validated.pairs(batch, window, &mut lat_v).await;
            validated_ns.push(start.elapsed().as_nanos() as f64 / batch as f64);
            raw_ns.push(time_raw());
        }
    }
    let mut ratios: Vec<f64> = validated_ns.iter().zip(&raw_ns).map(|(v, r)| v / r).collect();
    ratios.sort_by(f64::total_cmp);
    let latency = |mut l: Vec<f64>| {
        (!l.is_empty()).then(|| {
            l.sort_by(f64::total_cmp);
            (percentile(&l, 0.5), percentile(&l, 0.99))
        })
    };
    let raw_ns = stats(raw_ns);
    let validated_ns = stats(validated_ns);
    Shape {
        label,
        placement,
        window,
        raw_pairs_per_s: 1e9 / raw_ns.median,
        validated_pairs_per_s: 1e9 / validated_ns.median,
        raw_ns,
        validated_ns,
        ratio: percentile(&ratios, 0.5),
        ratio_p10: percentile(&ratios, 0.1),
        ratio_p90: percentile(&ratios, 0.9),
        raw_latency: latency(lat_r),
        validated_latency: latency(lat_v),
    }
}

async fn bench(smoke: bool) {
    let rounds = if smoke { 2 } else { 60 };
    let py_rounds = (rounds / 3).max(2);
    let cpus = usable_cpus();
    pin(cpus[0]);
    let mut placements = vec![(Placement::SameCpu, cpus[0])];
    if let Some(&other) = cpus.get(1) {
        placements.push((Placement::AcrossCpus, other));
    }

    let mut shapes = Vec::new();
    let mut py_shapes = Vec::new();
    for &(placement, peer_cpu) in &placements {
        // The SDK driver, and the handshake.
        let (ours, theirs) = StdUnixStream::pair().unwrap();
        let mut driver = spawn("driver", theirs, peer_cpu);
        let mut validated = handshake(ours).await;

        // The raw echo of the same bytes: a framed ping as the supervisor sends it.
        let (ours, theirs) = StdUnixStream::pair().unwrap();
        let mut echo_child = spawn("echo", theirs, peer_cpu);
        let payload = FrameValidator::shared()
            .encode(&Frame::request(drover_proto::MsgId::FIRST, Ping {}))
            .unwrap();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let mut raw = Raw { stream: ours, frame };

        shapes.push(measure("one in flight", placement, 1, rounds, &mut validated, &mut raw).await);
        shapes.push(
            measure("64 in flight", placement, WINDOW, rounds, &mut validated, &mut raw).await,
        );
        validated.conn.close().await.unwrap();
        let _ = driver.wait();

        // The Python SDK driver, against the same raw echo (fewer rounds: it is much slower).
        let (ours, theirs) = StdUnixStream::pair().unwrap();
        let mut python = spawn_python(theirs, peer_cpu);
        let mut py = handshake(ours).await;
        py_shapes.push(measure("one in flight", placement, 1, py_rounds, &mut py, &mut raw).await);
        py_shapes
            .push(measure("64 in flight", placement, WINDOW, py_rounds, &mut py, &mut raw).await);
        py.conn.close().await.unwrap();
        let _ = python.wait();
        drop(raw);
        let _ = echo_child.wait();
    }

    if smoke {
        println!(
            "## Driver round trip (smoke run: both contenders executed, nothing worth reading measured)"
        );
        return;
    }
    let bytes = raw_frame_len();
    println!("## Driver round trip: supervisor and Rust SDK driver over a socketpair");
    println!();
    println!(
        "Command: `cargo bench -p drover-driver --bench roundtrip` ({rounds} paired rounds per shape)."
    );
    println!(
        "*Validated*: `ping` -> `pong` ({bytes}-byte frames) between a supervisor-side `Connection` and a"
    );
    println!(
        "Rust SDK driver process, over a real socketpair, every frame schema-checked when written and"
    );
    println!(
        "decoded, validated and correlated when read, on both sides. *Raw echo*: the same bytes to a"
    );
    println!(
        "child that copies them back with plain `read`/`write`. Each round times a batch of each (about"
    );
    println!(
        "5 ms of raw echo, alternating which goes first); the ratio is the median of the per-round"
    );
    println!(
        "ratios with its 10th-90th percentile. Times are per pair: median with the min-max over rounds."
    );
    println!();
    println!(
        "| Shape | Placement | Raw echo | Validated | Ratio (p10-p90) | Validated pairs/s | Raw pairs/s | Latency p50 / p99 (validated; raw) | Verdict |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for s in &shapes {
        let ratio_ok = s.ratio <= TARGET_RATIO;
        let rate_ok = s.window == 1 || s.validated_pairs_per_s >= TARGET_PAIRS_PER_S;
        let verdict = match (ratio_ok, rate_ok) {
            (true, true) => "pass".to_owned(),
            (false, _) => format!("**miss** (ratio > {TARGET_RATIO}x)"),
            (true, false) => format!("**miss** (< {TARGET_PAIRS_PER_S:.0}/s)"),
        };
        let latency = match (s.validated_latency, s.raw_latency) {
            (Some((v50, v99)), Some((r50, r99))) => format!(
                "{} / {}; {} / {}",
                format_us(v50),
                format_us(v99),
                format_us(r50),
                format_us(r99)
            ),
            _ => "(pipelined)".to_owned(),
        };
        println!(
            "| {} | {} | {} ({}-{}) | {} ({}-{}) | {:.2}x ({:.2}-{:.2}) | {:.0} | {:.0} | {} | {} |",
            s.label,
            s.placement.label(),
            format_us(s.raw_ns.median),
            format_us(s.raw_ns.min),
            format_us(s.raw_ns.max),
            format_us(s.validated_ns.median),
            format_us(s.validated_ns.min),
            format_us(s.validated_ns.max),
            s.ratio,
            s.ratio_p10,
            s.ratio_p90,
            s.validated_pairs_per_s,
            s.raw_pairs_per_s,
            latency,
            verdict,
        );
    }
    println!();
    println!(
        "Targets: validated within {TARGET_RATIO}x of the raw echo in every shape and placement, and at least {TARGET_PAIRS_PER_S:.0} validated"
    );
    println!(
        "pairs per second pipelined. Every process is pinned: *same CPU*, the bench and its peers on one"
    );
    println!(
        "CPU; *across CPUs*, the peers on another, so every wake-up crosses CPUs (in a virtual machine,"
    );
    println!(
        "an idle vCPU woken). Unpinned, the scheduler chose per process and run, and one contender could"
    );
    println!(
        "cross CPUs while the other did not: a run on 2026-12-05 put the raw echo at 35.4 µs and the"
    );
    println!(
        "validated pair at 12.8 µs (0.36x), a figure of placement, not validation. One in flight, both"
    );
    println!(
        "contenders pay two process wake-ups per pair, so the scheduler, not validation, sets most of"
    );
    println!("the pace. Pipelined, both sides");
    println!(
        "write one frame per `write` (the `Connection` flushes every frame), so the raw contender does"
    );
    println!(
        "the same. A profile (`perf record` of this bench) puts most of the validated time in the"
    );
    println!(
        "kernel's socket write and read paths; JSON parsing, schema checks and allocation are a few"
    );
    println!("per cent each.");
    println!();
    println!(
        "The same with the Python SDK's example driver (`drivers/python/example_driver.py`) in place of the"
    );
    println!(
        "Rust one ({py_rounds} paired rounds per shape and placement, the same raw echo); reported for comparison, no target:"
    );
    println!();
    println!(
        "| Shape | Placement | Raw echo | Python SDK | Ratio (p10-p90) | Python pairs/s | Latency p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in &py_shapes {
        let latency = s.validated_latency.map_or_else(
            || "(pipelined)".to_owned(),
            |(v50, v99)| format!("{} / {}", format_us(v50), format_us(v99)),
        );
        println!(
            "| {} | {} | {} | {} ({}-{}) | {:.2}x ({:.2}-{:.2}) | {:.0} | {} |",
            s.label,
            s.placement.label(),
            format_us(s.raw_ns.median),
            format_us(s.validated_ns.median),
            format_us(s.validated_ns.min),
            format_us(s.validated_ns.max),
            s.ratio,
            s.ratio_p10,
            s.ratio_p90,
            s.validated_pairs_per_s,
            latency,
        );
    }
}

fn raw_frame_len() -> usize {
    FrameValidator::shared()
        .encode(&Frame::request(drover_proto::MsgId::FIRST, Ping {}))
        .map(|p| p.len())
        .unwrap_or(0)
}

fn main() {
    if let Some(cpu) = std::env::var(CPU_ENV).ok().and_then(|cpu| cpu.parse().ok()) {
        pin(cpu);
    }
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("driver") => {
            let _ = drover_driver::run(Bench);
            return;
        }
        Ok("echo") => return echo(),
        _ => {}
    }
    let smoke = std::env::args().any(|a| a == "--smoke" || a == "--test");
    // Children pin themselves first; the bench pins itself in `bench`.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(bench(smoke));
}
