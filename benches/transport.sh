#!/usr/bin/env bash
# Frame validation: decode + validate + deserialize vs the typed-parse limit.
# Prints a Markdown section on stdout. BENCH_SMOKE=1 runs every contender a few times.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/load.sh
args=()
[ "${BENCH_SMOKE:-0}" = 1 ] && args=(--smoke)
cargo bench -q --no-run --locked -p drover-transport --bench decode
load_start
cargo bench -q -p drover-transport --bench decode -- "${args[@]}"
load_line
