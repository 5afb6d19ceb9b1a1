#!/usr/bin/env bash
# Driver round trip: supervisor Connection <-> Rust SDK driver process over a socketpair,
# validated on both sides, vs a raw socketpair echo of the same bytes.
# Prints a Markdown section on stdout. BENCH_SMOKE=1 runs each contender a few times.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/load.sh
args=()
[ "${BENCH_SMOKE:-0}" = 1 ] && args=(--smoke)
cargo bench -q --no-run --locked -p drover-driver --bench roundtrip
load_start
cargo bench -q -p drover-driver --bench roundtrip -- "${args[@]}"
load_line
