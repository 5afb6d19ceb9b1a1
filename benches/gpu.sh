#!/usr/bin/env bash
# CUDA inside vs outside the GPU sandbox profile: `drover sandbox gpu-check --json` (the same
# driver-API workload, as `drover sandbox gpu-workload`, outside and inside sandbox/gpu.toml,
# ROUNDS alternating pairs, medians, ratios inside/outside; target >= 0.98x on each figure).
# Prints a Markdown section on stdout. On a machine without an NVIDIA GPU (no nvidia-smi, or
# gpu-check answering "no GPU") the section says so and measures nothing; it never invents
# figures.
#
#   benches/gpu.sh            # 5 pairs
#   benches/gpu.sh --smoke    # 1 pair (or BENCH_SMOKE=1)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
if [ "${1:-}" = "--smoke" ] || [ "${BENCH_SMOKE:-0}" = 1 ]; then ROUNDS=1; fi
target_dir=${CARGO_TARGET_DIR:-target}

echo '## Local GPUs: CUDA inside vs outside `sandbox/gpu.toml`'
echo
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "No GPU machine was available for this run (no \`nvidia-smi\` here), so no GPU figure was"
  echo "measured. On a machine with an NVIDIA GPU this section runs \`drover sandbox gpu-check"
  echo "--json --rounds $ROUNDS\`: CUDA init, pinned host-to-device and device-to-host copies and a"
  echo "memory-bound kernel, inside the GPU profile vs outside it, as ratios (target >= 0.98x each)."
  exit 0
fi
cargo build --release -q -p drover >&2
set +e
report=$("$target_dir/release/drover" sandbox gpu-check --json --rounds "$ROUNDS")
status=$?
set -e
echo "Command: \`drover sandbox gpu-check --json --rounds $ROUNDS\` (exit $status; medians of"
echo "$ROUNDS alternating pairs; ratios are inside/outside rates, and outside/inside time for init)."
echo
echo '```json'
echo "$report"
echo '```'
