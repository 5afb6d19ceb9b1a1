#!/usr/bin/env bash
# Tests of the TypeScript driver SDK as its users get it: dependencies from the lockfile
# (`npm ci`), the generated types checked against schemas/transport/ (`gen-types.mjs
# --check`), the package built with tsc and packed (`npm pack`), installed into a fresh example
# project, the example compiled against it; then `node --test` with the fixture and the
# example driver (every frame they write checked by `drover validate`), and the example passes
# `drover driver-check` (sandboxed as root, as on CI).
#
#   drivers/typescript/test.sh
#
# Needs Node 20+ and npm (Debian's `nodejs` and `npm`), and the npm registry the first time.
# The project lives in a fresh directory under /tmp that the sandbox's dropped uid can read.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
. drivers/drover-bin.sh
export DROVER_REPO="$repo"

cd drivers/typescript
npm ci --silent --no-audit --no-fund
node scripts/gen-types.mjs --check
work=$(mktemp -d /tmp/drover-typescript-sdk-XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
npm pack --silent --pack-destination "$work" >/dev/null
mkdir "$work/example"
cp example/sleeper.ts example/tsconfig.json "$work/example/"
cp -r test "$work/example/test"
cd "$work/example"
echo '{"private": true}' >package.json
npm install --silent --no-audit --no-fund "$work"/drover-driver-sdk-*.tgz
"$repo/drivers/typescript/node_modules/.bin/tsc" -p tsconfig.json

EXAMPLE_JS="$work/example/sleeper.js" node --test test/driver.test.mjs

flags=()
[ "$(id -u)" -eq 0 ] || flags=(--no-sandbox)  # the sandbox needs root to drop to uid 65534
"$DROVER_BIN" driver-check "${flags[@]}" --cancel-job 'sleep={"seconds": 30}' -- /usr/bin/node "$work/example/sleeper.js"
