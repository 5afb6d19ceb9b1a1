#!/usr/bin/env bash
# Tests of the Python driver SDK: standard-library unittest, real driver processes on a
# socketpair, every frame they write checked by `drover validate`. Builds that binary first.
#
#   drivers/python/test.sh            # all tests
#   drivers/python/test.sh -k cancel  # unittest's own options pass through
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --locked -p drover
target_dir=${CARGO_TARGET_DIR:-target}
DROVER_BIN="$(cd "$target_dir/debug" && pwd)/drover"
export DROVER_BIN
cd drivers/python/tests
exec python3 -W error::ResourceWarning -m unittest "${@:--v}" test_driver
