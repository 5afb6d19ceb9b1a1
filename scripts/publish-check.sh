#!/usr/bin/env bash
# The crates a Rust driver links, packaged as crates.io would take them: `cargo publish
# --dry-run` for drover-sys, drover-proto, drover-schema, drover-transport and drover-driver together (cargo
# resolves their path dependencies through a local overlay, so none has to be published
# first), then a check that the driver SDK's dependency tree holds no sandbox, Landlock,
# seccomp or capabilities crate (a driver must not link the supervisor's sandbox).
#
#   scripts/publish-check.sh
#
# Needs the crates.io index (network). Compiles each packaged crate once in target/package
# (about 75 s on 2 cores with a warm target directory).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo publish --dry-run --locked --allow-dirty \
  -p drover-sys -p drover-proto -p drover-schema -p drover-transport -p drover-driver

forbidden='^(drover-sandbox|landlock|seccompiler|caps|syscalls) '
tree=$(cargo tree --locked -p drover-driver -e normal,build --prefix none --format '{p}')
if grep -E "$forbidden" <<<"$tree"; then
  echo "drover-driver depends on a sandbox crate (above); a driver must not link it" >&2
  exit 1
fi
echo "drover-driver links no sandbox crate ($(sort -u <<<"$tree" | wc -l) crates in its tree)"
