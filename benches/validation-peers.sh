#!/usr/bin/env bash
# Frame validation: drover vs the Python validators a Python supervisor would use (pydantic v2,
# fastjsonschema, python-jsonschema), on the same corpus of frames written by drover, in the
# same run. Prints a Markdown section on stdout; BENCH_SMOKE=1 runs every contender once.
#
#   benches/validation-peers.sh                     # 9 paired rounds, ~250 ms per contender each
#   ROUNDS=15 MILLIS=400 benches/validation-peers.sh
#
# The peers are installed from PyPI into target/bench-venv (BENCH_VENV) at the versions pinned in
# benches/peers-requirements.txt; drover's side is crates/drover-transport/benches/peers.rs.
# Targets: drover at least 3x faster than pydantic on small frames and 1.5x on the 36 KB
# job_log (issue 18), and 30x faster than python-jsonschema.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/load.sh

ROUNDS=${ROUNDS:-9}
MILLIS=${MILLIS:-250}
smoke=()
if [ "${BENCH_SMOKE:-0}" = 1 ] || [ "${1:-}" = "--smoke" ]; then ROUNDS=1; MILLIS=20; smoke=(--smoke); fi

venv=${BENCH_VENV:-target/bench-venv}
if ! cmp -s benches/peers-requirements.txt "$venv/.requirements" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r benches/peers-requirements.txt >&2
  cp benches/peers-requirements.txt "$venv/.requirements"
fi

exe=$(cargo bench --no-run -q --locked -p drover-transport --bench peers --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "peers" and m.get("executable"):
        print(m["executable"])')
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
"$exe" corpus "$corpus"
load_start
"$venv/bin/python" benches/validation_peers.py --exe "$exe" --corpus "$corpus" \
  --rounds "$ROUNDS" --millis "$MILLIS" "${smoke[@]}"
load_line
