#!/usr/bin/env bash
# Builds the drover image with no registry access: compiles the release binary on this
# machine, assembles the runtime root file system, and builds the Containerfile's
# `runtime-local` stage (FROM scratch) with podman.
#
#   deploy/image/build-offline.sh [TAG]      # default tag: localhost/drover:local
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-localhost/drover:local}

command -v podman >/dev/null || { echo "build-offline.sh: podman is required (apt-get install podman)" >&2; exit 2; }
cargo build --release --locked -p drover
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
deploy/image/rootfs.sh "$target_dir/release/drover" target/image/rootfs
podman build --target runtime-local --tag "$tag" --file Containerfile .
echo "build-offline.sh: built $tag" >&2
