#!/usr/bin/env bash
# API: authenticated, validated POST /v1/jobs vs a bare axum handler echoing the same body.
# Prints a Markdown section on stdout. BENCH_SMOKE=1 loads each server for one second.
#
# drover's three servers run in one process (crates/drover-api/examples/bench_server.rs); the
# two Python peers (benches/api-python-peer.py, volatile and durable) beside it. All five are
# loaded in turn by wrk over loopback with the same body, connections and duration,
# alternating, so every ratio is measured in one run on one machine. Both durable stores
# (drover's and the durable peer's) live on the repository's own file system (target/), a
# real disk where fsync costs what it costs in production, never tmpfs; BENCH_API_DIR
# overrides the directory. Needs wrk (Debian package `wrk`; installed here when missing and
# run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/load.sh

smoke=${BENCH_SMOKE:-0}
if [ "$smoke" = 1 ]; then duration=1s; rounds=1; else duration=8s; rounds=3; fi
threads=1
connections=32

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }) >/dev/null 2>&1
  fi
  command -v wrk >/dev/null || { echo "benches/api.sh: needs wrk (apt-get install wrk)" >&2; exit 2; }
fi

# The Python peer (benches/api-python-peer.py) needs python-jsonschema, from the pinned set.
venv=${BENCH_VENV:-target/bench-venv}
if ! cmp -s benches/peers-requirements.txt "$venv/.requirements" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r benches/peers-requirements.txt >&2
  cp benches/peers-requirements.txt "$venv/.requirements"
fi

cargo build -q --release -p drover-api --example bench_server
server_bin="${CARGO_TARGET_DIR:-target}/release/examples/bench_server"

base=${BENCH_API_DIR:-${CARGO_TARGET_DIR:-target}}
mkdir -p "$base"
work=$(mktemp -d "$base/drover-api-bench.XXXXXX")
# The mount's type as the kernel names it (`stat -f` prints "ext2/ext3" for ext4, a magic-number
# table older than ext4).
fs=$(df --output=fstype "$work" | tail -n 1)
fifo="$work/stdin"
mkfifo "$fifo"
cleanup() {
  [ -n "${peer_pid:-}" ] && kill "$peer_pid" 2>/dev/null || true
  [ -n "${durable_peer_pid:-}" ] && kill "$durable_peer_pid" 2>/dev/null || true
  exec 3>&- 2>/dev/null || true
  [ -n "${server_pid:-}" ] && wait "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$server_bin" "$work" < "$fifo" > "$work/addresses" &
server_pid=$!
exec 3>"$fifo"   # the server runs until this is closed
for _ in $(seq 100); do [ -s "$work/addresses" ] && break; sleep 0.1; done
read -r api_field volatile_field bare_field < "$work/addresses"
api=${api_field#api=}
volatile=${volatile_field#volatile=}
bare=${bare_field#bare=}
token=$(cat "$work/token")
token_sha256=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
"$venv/bin/python" benches/api-python-peer.py --token-sha256 "$token_sha256" --port 0 \
  > "$work/peer-port" 2> "$work/peer.log" &
peer_pid=$!
"$venv/bin/python" benches/api-python-peer.py --token-sha256 "$token_sha256" --port 0 \
  --durable "$work/peer.db" > "$work/durable-peer-port" 2> "$work/durable-peer.log" &
durable_peer_pid=$!
for _ in $(seq 100); do [ -s "$work/peer-port" ] && [ -s "$work/durable-peer-port" ] && break; sleep 0.1; done
peer="127.0.0.1:$(head -n1 "$work/peer-port")"
durable_peer="127.0.0.1:$(head -n1 "$work/durable-peer-port")"

body='{"driver":"echo","action":"run","params":{"n":3,"text":"benchmark"},"gpu":{"count":1,"models":["RTX 4090"]},"max_runtime_s":3600,"budget_usd":2.5,"labels":{"team":"bench"}}'
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
unset token

# One load run; prints "requests_per_second p99_ms non_2xx".
load() {
  local out rps p99 value unit errors
  out=$(wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$work/post.lua" "http://$1/v1/jobs")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  read -r value unit < <(awk '$1 == "99%" {v=$2; u=$2; sub(/[a-z]+$/, "", v); sub(/^[0-9.]+/, "", u); print v, u}' <<<"$out")
  case "$unit" in
    us) p99=$(awk -v v="$value" 'BEGIN {printf "%.3f", v / 1000}') ;;
    ms) p99=$value ;;
    s) p99=$(awk -v v="$value" 'BEGIN {printf "%.3f", v * 1000}') ;;
    *) p99=nan ;;
  esac
  errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' <<<"$out")
  echo "$rps $p99 ${errors:-0}"
}

bare_runs=()
api_runs=()
volatile_runs=()
peer_runs=()
durable_peer_runs=()
load_start
for _ in $(seq "$rounds"); do
  bare_runs+=("$(load "$bare")")
  api_runs+=("$(load "$api")")
  volatile_runs+=("$(load "$volatile")")
  peer_runs+=("$(load "$peer")")
  durable_peer_runs+=("$(load "$durable_peer")")
done
load_report=$(load_line)
kill "$peer_pid" "$durable_peer_pid" 2>/dev/null || true
wait "$peer_pid" "$durable_peer_pid" 2>/dev/null || true
peer_pid=
durable_peer_pid=
exec 3>&-
wait "$server_pid"
server_pid=

# The round with the median throughput of each.
median() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
read -r bare_rps bare_p99 bare_errors <<<"$(median "${bare_runs[@]}")"
read -r api_rps api_p99 api_errors <<<"$(median "${api_runs[@]}")"
read -r volatile_rps volatile_p99 volatile_errors <<<"$(median "${volatile_runs[@]}")"
read -r peer_rps peer_p99 peer_errors <<<"$(median "${peer_runs[@]}")"
read -r durable_peer_rps durable_peer_p99 durable_peer_errors <<<"$(median "${durable_peer_runs[@]}")"
# verdict MEASURED TARGET: "pass" or "fail, N% short" (the miss is relative to the target).
verdict() { awk -v r="$1" -v t="$2" 'BEGIN {if (r >= t) print "pass"; else printf "fail, %.0f%% short\n", 100 * (t - r) / t}'; }
durable_ratio=$(awk -v a="$api_rps" -v b="$volatile_rps" 'BEGIN {printf "%.2f", a / b}')
durable_verdict=$(verdict "$durable_ratio" 0.5)
peer_ratio=$(awk -v a="$api_rps" -v b="$durable_peer_rps" 'BEGIN {printf "%.1f", a / b}')
peer_verdict=$(verdict "$peer_ratio" 20)
volatile_peer_ratio=$(awk -v a="$volatile_rps" -v b="$peer_rps" 'BEGIN {printf "%.1f", a / b}')
volatile_ratio=$(awk -v a="$volatile_rps" -v b="$bare_rps" 'BEGIN {printf "%.2f", a / b}')
ratio=$(awk -v a="$api_rps" -v b="$bare_rps" 'BEGIN {printf "%.2f", a / b}')
p99_ratio=$(awk -v a="$api_p99" -v b="$bare_p99" 'BEGIN {printf "%.2f", a / b}')

echo "## API: durable \`POST /v1/jobs\` vs the same router over a volatile backend, and durable and volatile Python peers"
echo
echo "Command: \`benches/api.sh\` (wrk -t$threads -c$connections -d$duration, $rounds alternating round(s) each, median"
echo "round shown; $(( ${#body} )) B body). Durable stores: SQLite (WAL, synchronous = FULL) in \`$base\`, a"
echo "$fs file system (a real disk, not tmpfs: every commit's fsync is paid)."
echo "*drover*: the real router: bearer token (checksum, SHA-256, constant-time lookup), rate limit,"
echo "content type, size limit, strict JSON, \`JobSpec\` schema, the driver's params schema, the job"
echo "durable in the store before 201, and two audit events per request (batched to the store)."
echo "*Volatile*: the same router and checks over a backend that keeps nothing (not a product mode)."
echo "*Python peers* (\`benches/api-python-peer.py\`, \`http.server\`, one thread per connection): the"
echo "same token check, content checks and python-jsonschema validation of the body and params; the"
echo "durable one commits the job and its first event to SQLite (WAL, synchronous = FULL) before 201."
echo "*Bare*: axum with one handler that echoes the body (the floor of the HTTP stack)."
echo
echo "| Server | Requests/s | p99 latency | Non-2xx |"
echo "|---|---|---|---|"
echo "| drover \`POST /v1/jobs\`, durable | $api_rps | $api_p99 ms | $api_errors |"
echo "| drover router, volatile backend | $volatile_rps | $volatile_p99 ms | $volatile_errors |"
echo "| Python peer, durable (SQLite, fsync per job) | $durable_peer_rps | $durable_peer_p99 ms | $durable_peer_errors |"
echo "| Python peer, volatile (nothing stored) | $peer_rps | $peer_p99 ms | $peer_errors |"
echo "| bare axum echo | $bare_rps | $bare_p99 ms | $bare_errors |"
echo
echo "| Target | Measured | Target | Verdict |"
echo "|---|---|---|---|"
echo "| durable / volatile, same router | ${durable_ratio}x | >= 0.5x | $durable_verdict |"
echo "| durable drover / durable Python peer | ${peer_ratio}x | >= 20x | $peer_verdict |"
echo
echo "Also measured: the volatile router is ${volatile_peer_ratio}x the volatile Python peer and runs at"
echo "${volatile_ratio}x of the bare handler; the durable row is ${ratio}x of the bare handler (p99 ${p99_ratio}x)."
echo "$load_report"
if [ "$durable_verdict" != pass ] || [ "$peer_verdict" != pass ]; then
  echo
  echo '**Why a target is missed, and the plan.** The profile (`perf record -g` and per-thread'
  echo 'context-switch counts of the bench server under this load, 2026-12-05): the durable path is'
  echo 'bound by hand-offs, not by SQLite or the disk. sqlx runs the SQLite connection on a thread of'
  echo 'its own and every statement is a round trip to it; about 70% of the server'"'"'s CPU was the'
  echo 'kernel switching and waking threads (futex waits, wake-ups), 470 µs then 200 µs of CPU per durable'
  echo 'request (before, after the audit change) against about 12 µs on the volatile router. Until 2026-12-05 each audit event was'
  echo 'also its own fsynced transaction (two per request); audit batches are now one transaction'
  echo 'and one multi-row statement, and a group-commit batch without idempotency keys writes its'
  echo 'jobs, labels and first events in three multi-row statements (measured with the audit change'
  echo 'alone: 1521 -> 4182 requests/s, p99 127 -> 11.6 ms, same machine and load). Plan: fold'
  echo 'the audit batch into the job group commit, and run each batch as one closure on a dedicated'
  echo 'SQLite thread (one hand-off per batch instead of one per statement).'
fi
