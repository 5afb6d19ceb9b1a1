//! Per-driver resource bounds (issue 13, item 4): under `drover exec` as root, a driver runs in
//! its own pids, cpu and memory cgroups, so a thread bomb stops at the driver's own pids limit
//! while another driver still starts, and a driver spinning on every core is held to its CPU
//! quota, as the cgroup's own accounting shows. Like `sandbox.rs`, these need root (CI), and
//! say why when they cannot run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::sandbox_harness;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sandbox_harness::*;

/// The leaf cgroup `drover exec` (pid `exec_pid`) made for its driver under `controller`'s
/// hierarchy, once it exists: `<mount>/drover-65534/<exec_pid>-<n>`.
fn leaf_of(controller: &str, exec_pid: u32) -> Option<PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup").join(controller).join("drover-65534");
    let v2 = Path::new("/sys/fs/cgroup/drover-65534");
    let parent = if v1.is_dir() { v1 } else { v2.to_path_buf() };
    std::fs::read_dir(parent)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{exec_pid}-")))
}

fn wait_for_leaf(controller: &str, exec_pid: u32) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(leaf) = leaf_of(controller, exec_pid) {
            return leaf;
        }
        assert!(Instant::now() < deadline, "drover exec made no {controller} cgroup");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {text}"))
}

const THREAD_BOMB: &str = r#"
import threading, time
n = 0
try:
    for _ in range(3000):
        threading.Thread(target=time.sleep, args=(8,), daemon=True).start()
        n += 1
except RuntimeError:
    pass
print(n, flush=True)
time.sleep(8)
"#;

#[test]
fn a_thread_bomb_stops_at_its_own_pids_limit_and_another_driver_still_starts() {
    require_privilege!();
    if !is_root() {
        drover_testkit::skip_or_fail!(
            "drivers get cgroups only when drover starts as root (as on CI)"
        );
    }
    let bomb_profile = profile("[limits]\npids = 64\n");
    let mut bomb = exec_command(As::Root, &bomb_profile, &["/usr/bin/python3", "-c", THREAD_BOMB])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let leaf = wait_for_leaf("pids", bomb.id());
    assert_eq!(read(&leaf.join("pids.max")).trim(), "64");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(bomb.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    let Ok(threads) = first.trim().parse::<u32>() else {
        let _ = bomb.kill();
        let output = bomb.wait_with_output().unwrap();
        panic!("the bomb said {first:?}: {}", String::from_utf8_lossy(&output.stderr))
    };
    // The interpreter's own thread counts too; the bomb got no more than its limit.
    assert!(threads < 64, "{threads} threads started under pids = 64");
    assert!(field(&read(&leaf.join("pids.events")), "max") > 0, "the pids limit was never hit");
    // While the bomb holds every task it may have, another driver starts and runs.
    let other = run(As::Root, &profile(""), &["/bin/sh", "-c", "/bin/true & wait; echo ok"]);
    assert_eq!(other.status.code(), Some(0), "{}", stderr(&other));
    assert_eq!(String::from_utf8_lossy(&other.stdout).trim(), "ok");
    let _ = bomb.kill();
    let _ = bomb.wait();
}

const SPINNERS: &str = r#"
import os, time
end = time.monotonic() + 4
for _ in range(2):
    if os.fork() == 0:
        while time.monotonic() < end:
            pass
        os._exit(0)
os.wait()
os.wait()
"#;

#[test]
fn a_driver_spinning_on_every_core_is_held_to_its_cpu_quota() {
    require_privilege!();
    if !is_root() {
        drover_testkit::skip_or_fail!(
            "drivers get cgroups only when drover starts as root (as on CI)"
        );
    }
    // A tenth of a core for two processes that would each take a whole one (so the quota
    // binds even when other work on a busy machine leaves them little).
    let quota = profile("[limits]\ncpu_millicores = 100\n");
    let mut spinner = exec_command(As::Root, &quota, &["/usr/bin/python3", "-c", SPINNERS])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cpu = wait_for_leaf("cpu", spinner.id());
    let v1 = cpu.starts_with("/sys/fs/cgroup/cpu");
    let accounting = if v1 { wait_for_leaf("cpuacct", spinner.id()) } else { cpu.clone() };
    std::thread::sleep(Duration::from_secs(3));
    // The kernel's own accounting, read together: CPU used, and the periods that passed.
    let stat = read(&cpu.join("cpu.stat"));
    let used_us = if v1 {
        read(&accounting.join("cpuacct.usage")).trim().parse::<u64>().unwrap() / 1000
    } else {
        field(&stat, "usage_usec")
    };
    let (periods, throttled) = (field(&stat, "nr_periods"), field(&stat, "nr_throttled"));
    let status = spinner.wait().unwrap();
    assert!(status.success(), "{status:?}");
    eprintln!(
        "cpu quota: {used_us} us used over {periods} periods of 100 ms, {throttled} throttled"
    );
    assert!(periods >= 10, "only {periods} periods passed");
    assert!(throttled > 0, "never throttled: {used_us} us over {periods} periods");
    // At most 10 ms per 100 ms period, with slack for the period in progress and accounting.
    let allowed_us = (periods + 2) * 10_000 * 5 / 4;
    assert!(used_us <= allowed_us, "{used_us} us used, {allowed_us} us allowed");
}

#[test]
fn the_memory_limit_is_still_enforced_beside_the_new_limits() {
    require_privilege!();
    if !is_root() {
        drover_testkit::skip_or_fail!(
            "drivers get cgroups only when drover starts as root (as on CI)"
        );
    }
    let limited = profile("[limits]\nmemory_bytes = 67108864\npids = 32\ncpu_millicores = 2000\n");
    let hog = "x = bytearray(256 << 20)\nprint(len(x))\n";
    let output = run(As::Root, &limited, &["/usr/bin/python3", "-c", hog]);
    assert_eq!(output.status.code(), Some(137), "{}", stderr(&output));
    assert!(stderr(&output).contains("killed by the kernel's OOM killer"), "{}", stderr(&output));
}
