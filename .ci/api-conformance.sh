#!/usr/bin/env bash
# The HTTP API against the official tools (issue 17): starts `drover serve` (embedded simulator,
# a fresh data directory, one token with every scope), fetches the OpenAPI document it serves,
# checks it equals the committed schemas/api/openapi.json, validates it with
# openapi-spec-validator, then runs schemathesis against the live server for a bounded number
# of examples per operation. Any 5xx or failed check fails the step.
#
#   .ci/api-conformance.sh [DROVER_BINARY]      (default target/debug/drover)
#
# Tools are pinned and installed into target/api-venv. Bounds: API_EXAMPLES examples per
# operation (default 50) and the whole run under API_SECONDS (default 240). A 5xx fails
# schemathesis's not_a_server_error check.
set -euo pipefail
cd "$(dirname "$0")/.."
drover=${1:-target/debug/drover}
examples=${API_EXAMPLES:-50}
seconds=${API_SECONDS:-240}
venv=target/api-venv

if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    openapi-spec-validator==0.9.0 schemathesis==4.32.5
fi

work=$(mktemp -d)
chmod 755 "$work"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

token_output=$("$drover" token new --name conformance \
  --scopes jobs:read,jobs:write,drivers:read,metrics:read,jobs:admin)
token=$(printf '%s\n' "$token_output" | head -n 1)
{
  printf '[supervisor]\ndata_dir = "%s/data"\n\n' "$work"
  # Plain-http webhook URLs allowed: the schema cannot say that a server refuses them, so
  # schemathesis would count the refusal of a schema-valid body as a failure.
  printf '[api]\nallow_http_webhooks = true\n\n'
  printf '[api.rate_limit]\nper_second = 100000\nburst = 100000\n\n'
  # schemathesis sends many requests without a token from one address (its ignored_auth
  # check expects 401 each time), more than the per-peer limit lets through before 429.
  printf '[api.limits]\nunauthenticated_per_second = 100000\nunauthenticated_burst = 100000\n\n'
  printf '%s\n' "$token_output" | sed -n '/^\[\[api.tokens\]\]/,$p'
} > "$work/drover.toml"

mkfifo "$work/stdout"
"$drover" serve --listen 127.0.0.1:0 --config "$work/drover.toml" > "$work/stdout" 2> "$work/serve.log" &
server=$!
read -r line < "$work/stdout"
url=${line#drover serve: listening on }
echo "serve: $url"
# Keep draining stdout so the server never blocks on it.
cat "$work/stdout" > /dev/null &

auth="Authorization: Bearer $token"
for _ in $(seq 1 300); do
  if curl -fsS -o /dev/null "$url/readyz"; then break; fi
  sleep 0.1
done
curl -fsS -H "$auth" "$url/readyz" > /dev/null

curl -fsS -H "$auth" "$url/v1/openapi.json" > "$work/openapi.json"
python3 - "$work/openapi.json" schemas/api/openapi.json <<'EOF'
import json, sys
served, committed = (json.load(open(path)) for path in sys.argv[1:3])
if served != committed:
    sys.exit("the served OpenAPI document differs from schemas/api/openapi.json: cargo run -p drover -- schemas")
EOF
"$venv/bin/openapi-spec-validator" "$work/openapi.json"

# Every check schemathesis has, on every operation; a generated job runs on the bundled
# container driver through the simulator, so nothing real is rented.
timeout "$seconds" "$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run "$work/openapi.json" \
  --url "$url" -H "$auth" \
  --checks all \
  --max-examples "$examples" \
  --seed 17 \
  --no-color \
  --suppress-health-check all \
  --report junit --report-dir "$work/report"

echo "api conformance: openapi-spec-validator and schemathesis passed"
