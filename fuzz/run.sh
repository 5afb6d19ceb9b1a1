#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time (default 30 s).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# cargo-fuzz needs nightly-only compiler flags (-Zsanitizer=address, coverage instrumentation).
# The project's toolchain is stable 1.95.0, which ships the AddressSanitizer runtime for
# x86_64-unknown-linux-gnu; RUSTC_BOOTSTRAP=1 lets that stable compiler accept the flags. It is
# set only for this build, never for the product. New inputs go to fuzz/corpus/ (git-ignored);
# the committed seeds in fuzz/seeds/ are read, never written. A crash leaves its input in
# fuzz/artifacts/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode_stream validate_frame)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz/run.sh: installing cargo-fuzz from crates.io" >&2
  cargo install cargo-fuzz --locked --version 0.13.2
fi

export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  log="corpus/$target.log"
  echo "fuzz/run.sh: $target for ${seconds}s" >&2
  status=0
  cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb|ERROR|SUMMARY|panicked' "$log" >&2 || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz/run.sh: $target failed (exit $status); input in fuzz/artifacts/$target/, log in fuzz/$log" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
done
