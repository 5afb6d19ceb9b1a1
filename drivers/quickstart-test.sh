#!/usr/bin/env bash
# Runs the quick start of drivers/README.md as written: every ```sh block of its "Quick start"
# section, in order, in one shell (set -euo pipefail) started in a fresh directory under /tmp,
# with each file block (```LANG PATH) written to PATH at that point. `drover` (built here) is
# first on PATH and DROVER_SRC is this checkout, as the quick start assumes.
#
#   drivers/quickstart-test.sh                  # every subsection, in order
#   drivers/quickstart-test.sh Python Run       # only the ### subsections starting so
#
# Also checks that the Rust block is crates/drover-driver/examples/sleeper.rs verbatim and that
# every driver there is under 60 lines. Needs python3, /usr/bin/python3 with venv, Node 20+
# with npm, cargo, and the package registries (PyPI, npm, crates.io).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
. drivers/drover-bin.sh

work=$(mktemp -d /tmp/drover-quickstart-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
chmod 755 "$work"

python3 - "$repo" "$work/quickstart.sh" "$@" <<'PY'
import re, shlex, sys
repo, out, chosen = sys.argv[1], sys.argv[2], sys.argv[3:]
readme = open(f"{repo}/drivers/README.md").read()
section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
parts = section.split("\n### ")[1:]
parts = [p for p in parts if not chosen or any(p.startswith(c) for c in chosen)]
if not parts:
    sys.exit(f"quick start: no subsection starts with {chosen}")
script = []
blocks = []
for part in parts:
    heading = part.split("\n", 1)[0]
    blocks.append(("heading", heading))
    blocks += re.findall(r"^```([^\n]*)\n(.*?)^```$", part, re.S | re.M)
for info, body in blocks:
    words = info.split()
    if info == "heading":
        script.append(f"printf '\\n=== quick start: %s\\n' {shlex.quote(body)}")
    elif words == ["sh"]:
        script.append(body)
    elif len(words) == 2:
        path = words[1]
        if len(body.splitlines()) >= 60:
            sys.exit(f"quick start: {path} has {len(body.splitlines())} lines; keep a driver under 60")
        if path == "src/main.rs":
            example = open(f"{repo}/crates/drover-driver/examples/sleeper.rs").read()
            if body != example:
                sys.exit("quick start: the Rust block differs from crates/drover-driver/examples/sleeper.rs")
        script.append(f"cat > {path} <<'QUICKSTART_EOF'\n{body}QUICKSTART_EOF\n")
    else:
        sys.exit(f"quick start: a block with info string {info!r}: use `sh` or `LANG PATH`")
# No `set -x`: the serve section holds an API token in a variable, and tokens never reach logs.
open(out, "w").write("set -euo pipefail\n" + "\n".join(script))
PY

export DROVER_SRC=$repo PATH="$(dirname "$DROVER_BIN"):$PATH"
cd "$work"
bash "$work/quickstart.sh"
