#!/usr/bin/env bash
# Memory of the product: a real `drover serve` (the release binary), its own resident set read
# from /proc/PID/status (drivers are separate processes, not counted), in three states:
#
#   idle        the embedded configuration (only the data directory, the listen address and
#               a token given), so the bundled `container` driver connected, nothing running;
#   N drivers   `pool_size = N` sandboxed `drover driver example` processes connected;
#   under load  the same server while J concurrent `sleep` jobs each stream ten progress
#               updates and one log line a second: the peak (VmHWM) and what is left after.
#
# Prints a Markdown section on stdout. BENCH_SMOKE=1: 2 drivers, 20 jobs of 1 s. The data
# directories are on the repository's file system (target/). Needs root (CI) or an empty
# capability bounding set, as `drover serve` does.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/load.sh

if [ "${BENCH_SMOKE:-0}" = 1 ]; then drivers=2; jobs=20; seconds=1; else drivers=32; jobs=500; seconds=5; fi

cargo build -q --release --locked -p drover --bin drover
target=${CARGO_TARGET_DIR:-target}
work=$(realpath "$(mktemp -d "$target/bench-memory.XXXXXX")")
trap 'rm -rf "$work"' EXIT
# The dropped uid (65534) must reach the data directories and execute the binary, which sits
# in a directory of its own (serve refuses a data directory inside a tree drivers may read).
chmod 755 "$work"
install -D -m 755 "$target/release/drover" "$work/bin/drover"

load_start
python3 - "$work" "$drivers" "$jobs" "$seconds" <<'PY'
import json, os, re, signal, subprocess, sys, threading, time, urllib.request

work, drivers, jobs, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
exe = os.path.join(work, "bin", "drover")
out = subprocess.run([exe, "token", "new", "--name", "bench", "--scopes",
                      "jobs:read,jobs:write,drivers:read"], capture_output=True, text=True, check=True).stdout
token = out.split()[0]
entry = out[out.index("[[api.tokens]]"):]


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def request(url, method="GET", body=None):
    req = urllib.request.Request(url, method=method, data=body, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


class Serve:
    def __init__(self, name, extra=""):
        data = os.path.join(work, f"data-{name}")
        config = os.path.join(work, f"{name}.toml")
        with open(config, "w") as f:
            f.write(f'[supervisor]\ndata_dir = "{data}"\n\n[api.rate_limit]\nper_second = 100000\n'
                    f'burst = 100000\n\n{entry}\n{extra}')
        self.proc = subprocess.Popen([exe, "serve", "--config", config, "--listen", "127.0.0.1:0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(50):
            line = self.proc.stdout.readline()
            m = re.search(r"listening on (http://\S+)", line)
            if m or not line:
                break
        if not m:
            sys.exit(f"benches/memory.sh: drover serve did not start: {line!r}")
        self.url = m.group(1)

    def wait_sessions(self, want):
        deadline = time.time() + 120
        while time.time() < deadline:
            status, body = request(self.url + "/v1/drivers")
            if status == 200 and sum(d["ready_sessions"] for d in body["drivers"]) >= want:
                return
            time.sleep(0.1)
        sys.exit(f"benches/memory.sh: {want} driver session(s) never became ready")

    def settled_rss(self):
        # Let start-up work finish (the reaper, the first heartbeats) before reading.
        time.sleep(2)
        return rss_kib(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


# Idle: the embedded configuration's bundled container driver.
serve = Serve("idle")
serve.wait_sessions(1)
idle = serve.settled_rss()
idle_anon, idle_file = rss_kib(serve.proc.pid, "RssAnon"), rss_kib(serve.proc.pid, "RssFile")
with open(f"/proc/{serve.proc.pid}/smaps") as f:
    # Resident pages of the drover executable's own mappings (its code and read-only data), and
    # the size of its code mapping.
    idle_exe, exe_code_size, mapping, perms = 0, 0, "", ""
    for line in f:
        head = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            mapping = head[5] if len(head) > 5 else ""
            perms = head[1]
        elif head[0] == "Rss:" and mapping == exe:
            idle_exe += int(head[1])
        elif head[0] == "Size:" and mapping == exe and perms.startswith("r-x"):
            exe_code_size += int(head[1])
idle_threads = len(os.listdir(f"/proc/{serve.proc.pid}/task"))
serve.stop()

# The bundled container driver stays next to declared drivers: one more session.
example = f'[[drivers]]\nname = "example"\ncommand = ["{exe}", "driver", "example"]\npool_size = '
one = Serve("one", example + "1\n")
one.wait_sessions(2)
rss_one = one.settled_rss()
one.stop()

serve = Serve("many", example + f"{drivers}\n")
serve.wait_sessions(drivers + 1)
rss_many = serve.settled_rss()
per_driver = (rss_many - rss_one) / max(drivers - 1, 1)

spec = json.dumps({"driver": "example", "action": "sleep", "params": {"seconds": seconds},
                   "max_runtime_s": 600, "budget_usd": 0.0}).encode()
ids, failed = [], []
def submit(k):
    for _ in range(k):
        status, body = request(serve.url + "/v1/jobs", "POST", spec)
        (ids.append(body["id"]) if status == 201 else failed.append(status))
started = time.time()
threads = [threading.Thread(target=submit, args=(jobs // 10 + (i < jobs % 10),)) for i in range(10)]
for t in threads: t.start()
peak, done = 0, 0
while any(t.is_alive() for t in threads) or time.time() - started < seconds:
    peak = max(peak, rss_kib(serve.proc.pid))
    time.sleep(0.05)
for t in threads: t.join()
deadline = time.time() + 120 + seconds
while time.time() < deadline:
    peak = max(peak, rss_kib(serve.proc.pid))
    states = [request(f"{serve.url}/v1/jobs/{i}")[1]["state"] for i in ids[-20:]]
    if all(s in ("succeeded", "failed", "cancelled") for s in states):
        break
    time.sleep(0.2)
done = sum(request(f"{serve.url}/v1/jobs/{i}")[1]["state"] == "succeeded" for i in ids)
peak = max(peak, rss_kib(serve.proc.pid, "VmHWM"))
after = serve.settled_rss()
serve.stop()

mib = lambda kib: f"{kib / 1024:.1f} MiB"
def verdict(value, target, unit=""):
    return "pass" if value <= target else f"fail, {value - target:.0f}{unit} ({(value / target - 1) * 100:.0f}%) over"
load_bound = rss_many + 64 * jobs
rows = [
    ("idle, embedded configuration, bundled driver connected", mib(idle), "<= 12 MiB",
     verdict(idle, 12 * 1024, " KiB")),
    ("idle: private (anonymous) memory", mib(idle_anon), "(shown)", ""),
    ("idle: file-backed pages (shared, reclaimable)", f"{mib(idle_file)}, {mib(idle_exe)} of it the executable's code", "(shown)", ""),
    ("one `example` driver connected", mib(rss_one), "(shown)", ""),
    (f"{drivers} `example` drivers connected", mib(rss_many), "(shown)", ""),
    ("per further connected driver", f"{per_driver:.0f} KiB", "<= 64 KiB", verdict(per_driver, 64, " KiB")),
    (f"peak with {jobs} jobs submitted and streaming", mib(peak),
     f"<= {mib(load_bound)} (drivers + 64 KiB/job)", verdict(peak, load_bound, " KiB")),
    ("after the jobs ended", mib(after), "(shown)", ""),
]
print("## Memory: a real `drover serve`")
print()
print("Command: `benches/memory.sh` (the release binary; the supervisor's own `VmRSS` from `/proc`, its")
print(f"sandboxed drivers not counted; then {jobs} `sleep {seconds}` jobs submitted by 10 clients over the API,")
print(f"each streaming ten progress updates and a log line a second: {len(ids)} accepted, {done} succeeded,")
print(f"{len(failed)} refused{' (' + ', '.join(sorted(set(map(str, failed)))) + ')' if failed else ''}). Data directories on the repository's file system.")
print()
print("| Figure | Measured | Target | Verdict |")
print("|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
if idle > 12 * 1024:
    print()
    print("**Why the idle target is missed, and the plan.** The split above is the profile")
    print(f"(`/proc/PID/status` and `smaps`, {idle_threads} threads): the private part, what drover allocates")
    print(f"(runtime, thread stacks, allocator arenas, SQLite, compiled validators), is {mib(idle_anon)}; most")
    print(f"of the rest is the executable's own pages: {mib(idle_exe)} resident, its code mapping {mib(exe_code_size)}.")
    print("Start-up touches a small part of the code, but the kernel reads the file ahead into large")
    print("page-cache folios and maps each whole folio on a fault, so nearly all of it becomes resident.")
    print("An experiment on the same binary (mapped cold, 300 scattered pages touched, 2026-12-05): 13.8 MB")
    print("resident with the default read-ahead, 1.2 MB after `madvise(MADV_RANDOM)` on the mapping. The")
    print("same advice given to `drover serve` alone (an `LD_PRELOAD` constructor, experiment only) changed")
    print("nothing (17.0 MiB either way): the bundled driver runs the same executable without it, its")
    print("read-ahead fills the page cache with large folios, and serve's faults then map them whole.")
    print("Those pages are shared and reclaimable, but they count in RSS. Done so far: the release")
    print("profile (Size section) took the idle figure from 24.2 to about 17 MiB, and the transport's full")
    print("schema validators are compiled on first use (0.7 MiB less private memory). Plan: every drover")
    print("process (serve and the drivers it runs from the same file) advises its own code mapping")
    print("`MADV_RANDOM` first thing in `main` (an `unsafe` madvise, so a safe function in `drover-sys`),")
    print("measured with this section; then further size cuts shrink what remains.")
if per_driver > 64 or peak > load_bound:
    print()
    print("**Per-driver and load rows.** With few drivers (smoke) one-time costs that fall between the")
    print("one-driver and the N-driver readings (the first sessions' buffers, allocator arenas of the")
    print("threads that prepare sandboxes) weigh on the per-driver figure; the 32-driver run is the one")
    print("the target is for. Where it or the load bound is missed there, the plan is the same heap")
    print("profile: per-session buffers and the per-job event queues are the candidates.")
PY
load_line
