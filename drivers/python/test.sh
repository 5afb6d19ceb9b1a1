#!/usr/bin/env bash
# Tests of the Python driver SDK as its users get it: the distribution is built from
# pyproject.toml (setuptools, pinned, from PyPI) and installed into a fresh venv; then
# standard-library unittest runs with that venv's interpreter (real driver processes on a
# socketpair, every frame they write checked by `drover validate`), mypy checks the example
# against the installed package's type hints (py.typed), and the example driver,
# next to that venv, passes `drover driver-check` (sandboxed as root, as on CI).
#
#   drivers/python/test.sh            # all tests
#   drivers/python/test.sh -k cancel  # unittest's own options pass through
#
# The venv is made with /usr/bin/python3 when there is one: the sandbox can read /usr, not an
# interpreter under a home directory (pyenv). It lives in a fresh directory under /tmp that
# the sandbox's dropped uid can read, and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
. drivers/drover-bin.sh

python=python3
[ -x /usr/bin/python3 ] && python=/usr/bin/python3
work=$(mktemp -d /tmp/drover-python-sdk-XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
"$python" -m venv "$work/.venv"
# Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
mkdir "$work/sdk"
cp -r drivers/python/pyproject.toml drivers/python/README.md drivers/python/src "$work/sdk/"
"$work/.venv/bin/pip" install --quiet --disable-pip-version-check "$work/sdk"

# Typed for its users: mypy reads the installed package's hints only through its py.typed.
"$work/.venv/bin/pip" install --quiet --disable-pip-version-check mypy==1.19.1
(cd "$work" && .venv/bin/mypy --python-version 3.9 --no-error-summary \
  "$repo/drivers/python/example_driver.py" "$repo/drivers/python/tests/fixture_driver.py")

(cd drivers/python/tests && "$work/.venv/bin/python" -W error::ResourceWarning -m unittest "${@:--v}" test_driver)

if [ $# -eq 0 ]; then
  cp drivers/python/example_driver.py "$work/"
  flags=()
  [ "$(id -u)" -eq 0 ] || flags=(--no-sandbox)  # the sandbox needs root to drop to uid 65534
  "$DROVER_BIN" driver-check "${flags[@]}" --cancel-job 'sleep={"seconds": 30}' \
    -- "$work/.venv/bin/python" "$work/example_driver.py"
fi
