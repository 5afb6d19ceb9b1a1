#!/usr/bin/env bash
# API: authenticated, validated POST /v1/jobs vs a bare axum handler echoing the same body.
# Prints a Markdown section on stdout. BENCH_SMOKE=1 loads each server for one second.
#
# Both servers run in one process (crates/drover-api/examples/bench_server.rs), loaded in turn
# by wrk over loopback with the same body, connections and duration, alternating, so the
# ratio is measured in one run on one machine. The store is SQLite on tmpfs (/dev/shm) when
# there is one. Needs wrk (Debian package `wrk`; installed here when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

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

base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/drover-api-bench.XXXXXX")
fifo="$work/stdin"
mkfifo "$fifo"
cleanup() {
  [ -n "${peer_pid:-}" ] && kill "$peer_pid" 2>/dev/null || true
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
for _ in $(seq 100); do [ -s "$work/peer-port" ] && break; sleep 0.1; done
peer="127.0.0.1:$(head -n1 "$work/peer-port")"

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
for _ in $(seq "$rounds"); do
  bare_runs+=("$(load "$bare")")
  api_runs+=("$(load "$api")")
  volatile_runs+=("$(load "$volatile")")
  peer_runs+=("$(load "$peer")")
done
kill "$peer_pid" 2>/dev/null || true
wait "$peer_pid" 2>/dev/null || true
peer_pid=
exec 3>&-
wait "$server_pid"
server_pid=

# The round with the median throughput of each.
median() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
read -r bare_rps bare_p99 bare_errors <<<"$(median "${bare_runs[@]}")"
read -r api_rps api_p99 api_errors <<<"$(median "${api_runs[@]}")"
read -r volatile_rps volatile_p99 volatile_errors <<<"$(median "${volatile_runs[@]}")"
volatile_ratio=$(awk -v a="$volatile_rps" -v b="$bare_rps" 'BEGIN {printf "%.2f", a / b}')
read -r peer_rps peer_p99 peer_errors <<<"$(median "${peer_runs[@]}")"
peer_ratio=$(awk -v a="$api_rps" -v b="$peer_rps" 'BEGIN {printf "%.1f", a / b}')
peer_verdict=$(awk -v r="$peer_ratio" 'BEGIN {print (r >= 20) ? "pass" : "fail"}')
volatile_peer_ratio=$(awk -v a="$volatile_rps" -v b="$peer_rps" 'BEGIN {printf "%.1f", a / b}')
ratio=$(awk -v a="$api_rps" -v b="$bare_rps" 'BEGIN {printf "%.2f", a / b}')
p99_ratio=$(awk -v a="$api_p99" -v b="$bare_p99" 'BEGIN {printf "%.2f", a / b}')
verdict=$(awk -v r="$ratio" 'BEGIN {print (r >= 0.8) ? "pass" : "fail"}')
jobs=$(( ${#api_runs[@]} ))

echo "## API: authenticated, validated \`POST /v1/jobs\` vs a bare echo handler and a Python peer"
echo
echo "Command: \`benches/api.sh\` (wrk -t$threads -c$connections -d$duration, $rounds alternating round(s) each, median"
echo "round shown; $(( ${#body} )) B body; store: SQLite in $base, WAL, synchronous = FULL)."
echo "*Bare*: axum, one handler that echoes the body. *drover*: the real router: bearer token"
echo "(checksum, SHA-256, constant-time lookup), rate limit, content type, size limit, strict JSON,"
echo "\`JobSpec\` schema, the driver's params schema, the job durable in the store before 201, and"
echo "two audit events per request (batched to the store)."
echo
echo "| Server | Requests/s | p99 latency | Non-2xx |"
echo "|---|---|---|---|"
echo "| bare axum echo | $bare_rps | $bare_p99 ms | $bare_errors |"
echo "| drover \`POST /v1/jobs\` | $api_rps | $api_p99 ms | $api_errors |"
echo "| drover router, volatile backend (not a product mode) | $volatile_rps | $volatile_p99 ms | $volatile_errors |"
echo "| Python \`http.server\` peer, same auth and jsonschema checks, nothing stored | $peer_rps | $peer_p99 ms | $peer_errors |"
echo
echo "Throughput ratio (drover / bare): **${ratio}x** (target >= 0.8x): **$verdict**. p99 ratio: ${p99_ratio}x."
echo "The API layer alone (the same router and checks over a backend that writes nothing) runs at"
echo "**${volatile_ratio}x** of the bare handler."
echo "Against the Python peer (\`benches/api-python-peer.py\`: the same token check, content"
echo "checks and python-jsonschema validation of the body and params, one thread per connection):"
echo "drover **${peer_ratio}x** (target >= 20x): **$peer_verdict**; the volatile router ${volatile_peer_ratio}x."
echo "The peer stores nothing, so the like-for-like comparison is the volatile row; drover's"
echo "durable row pays for the fsynced write the peer does not make."
if [ "$verdict" = fail ]; then
  echo
  echo '**Why the target is missed, and the plan.** Two profiles (`perf record -g`, 5 s under this'
  echo 'load, 2026-11-29). *Durable path*: about half of all CPU time was context switches between'
  echo "tokio's workers and sqlx's SQLite worker thread: sqlx runs each SQLite connection on its own"
  echo 'thread and hands every statement over a channel, and accepting a job takes six to seven'
  echo 'statements on the single writer (BEGIN IMMEDIATE, INSERT job, INSERT label, UPDATE event'
  echo "counter, INSERT event, COMMIT), each a hand-off and a wake-up; SQLite's own work (VDBE, WAL"
  echo 'frames, checksums) was under 5%. *API layer* (the volatile row): a flat profile, no symbol'
  echo 'over 7%: allocation and copying about 15%, JSON parsing and serialising, the two schema'
  echo 'validations (their id patterns run a regex engine), the token digest, audit events, the'
  echo 'kernel TCP path. Durability is not negotiable (a job is acknowledged only after its fsynced'
  echo 'commit), so the plan cuts hand-offs, not guarantees: group commit (one writer task folds the'
  echo 'submissions waiting at that moment into one transaction) and the first event written by the'
  echo 'job insert itself, from about six hand-offs per job to about two; then, for the API layer,'
  echo 'one parse of the body shared by both validations and the typed value, and audit events'
  echo 'built without intermediate strings. A durable write per request will still not reach 0.8x'
  echo 'of a handler that does nothing; the volatile row is the ceiling the API layer sets.'
fi
