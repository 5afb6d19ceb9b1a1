#!/usr/bin/env bash
# The official `vastai` CLI from PyPI against `drover fake-vast`: search offers, create an
# instance, show instances, destroy it; then the simulator's own ledger must show nothing left
# billing and no key ever sent in a URL.
#
#   scripts/vastai-cli-check.sh
#
# Needs python3 (3.9+) with venv and pip, and network access to PyPI the first time.
# Environment:
#   VASTAI_VENV     virtualenv to use or create (default: target/vastai-venv)
#   VASTAI_VERSION  the vastai release to install (default: 1.9.1)
#   DROVER_BIN      a built drover binary (default: built here with cargo)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VASTAI_VENV:-target/vastai-venv}
version=${VASTAI_VERSION:-1.9.1}
if [ ! -x "$venv/bin/vastai" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "vastai==$version"
fi
vastai="$venv/bin/vastai"
py="$venv/bin/python"

if [ -z "${DROVER_BIN:-}" ]; then
  cargo build --quiet --locked -p drover
  DROVER_BIN="${CARGO_TARGET_DIR:-target}/debug/drover"
fi

work=$(mktemp -d)
key="cli-check-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
"$DROVER_BIN" fake-vast --listen 127.0.0.1:0 --api-key "$key" --seed 7 --speed 20 \
  >"$work/fake.out" 2>"$work/fake.err" &
fake_pid=$!
cleanup() { kill "$fake_pid" 2>/dev/null || true; wait "$fake_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  grep -q '^fake-vast listening on ' "$work/fake.out" 2>/dev/null && break
  sleep 0.1
done
url=$(sed -n 's/^fake-vast listening on //p' "$work/fake.out")
[ -n "$url" ] || { echo "fake-vast did not start:"; cat "$work/fake.err"; exit 1; }

# A private HOME: the CLI caches its role and update checks there.
export HOME="$work/home" VASTAI_NO_UPDATE_CHECK=1 CI=true
mkdir -p "$HOME"
v() { "$vastai" --url "$url" --api-key "$key" "$@"; }
fail() { echo "FAIL: $*"; exit 1; }
json() { "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); $1" "$2"; }

echo "== search offers"
v search offers 'num_gpus=1 gpu_name=RTX_4090' --raw >"$work/offers.json"
offer=$(json 'assert d and all(o["gpu_name"] == "RTX 4090" and o["num_gpus"] == 1 for o in d), d; print(d[0]["id"])' "$work/offers.json") \
  || fail "search offers returned no matching RTX 4090 offer"
v search offers 'num_gpus=1 gpu_name=RTX_4090' >"$work/offers.txt"
grep -q "$offer" "$work/offers.txt" || fail "the offers table does not show offer $offer"
echo "offer $offer"

echo "== create instance"
v create instance "$offer" --image pytorch/pytorch --disk 20 --label cli-check --raw >"$work/create.json"
contract=$(json 'assert d["success"] is True, d; print(int(d["new_contract"]))' "$work/create.json") \
  || fail "create instance did not answer success with new_contract"
echo "instance $contract"

echo "== show instances"
v show instances --raw >"$work/list.json"
json "assert any(i['id'] == $contract and i['label'] == 'cli-check' for i in d), d" "$work/list.json" \
  || fail "show instances --raw does not list instance $contract"
v show instances >"$work/list.txt"
grep -q "cli-check" "$work/list.txt" || fail "the instances table does not show the label"
v show instance "$contract" --raw >"$work/one.json"
json "assert d['id'] == $contract, d" "$work/one.json" || fail "show instance $contract"

echo "== destroy instance"
# `destroy instance --raw` prints nothing in this CLI version; the plain form says what it did.
v destroy instance "$contract" -y >"$work/destroy.txt"
grep -q "destroying instance $contract" "$work/destroy.txt" || fail "destroy instance did not succeed"
gone=""
for _ in $(seq 1 50); do
  v show instances --raw >"$work/after.json"
  if json "assert not any(i['id'] == $contract for i in d)" "$work/after.json" 2>/dev/null; then gone=1; break; fi
  sleep 0.1
done
[ -n "$gone" ] || fail "instance $contract still listed after destroy"

echo "== wrong key is refused"
"$vastai" --url "$url" --api-key "not-the-key" show instances >"$work/bad.txt" 2>&1 || true
grep -q "401" "$work/bad.txt" || fail "a wrong key was not refused with 401"

echo "== the simulator's ledger"
"$py" - "$url" "$key" <<'PY'
import json, sys, urllib.request
url, key = sys.argv[1], sys.argv[2]
def get(path):
    req = urllib.request.Request(url + path, headers={"Authorization": "Bearer " + key})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)
ledger, stats = get("/_sim/ledger"), get("/_sim/stats")
assert ledger["live"] == [], f"instances still billing: {ledger['live']}"
assert len(ledger["entries"]) == 1 and ledger["entries"][0]["ended_s"] is not None, ledger
assert stats["api_key_in_url"] == 0, "the CLI sent the key in a URL"
assert stats["contracts_created"] == 1 and stats["destroys"] >= 1, stats
print(f"billed {ledger['total_usd']:.6f} USD; nothing left billing; {stats['requests']} requests")
PY
echo "vastai CLI check: 1 passed, 0 failed"
