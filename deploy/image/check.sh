#!/usr/bin/env bash
# Inspects a built drover image (SR-005) and fails on any of:
#   - the configured user is root, or not numeric uid:gid;
#   - the entrypoint is not ["/usr/local/bin/drover","serve"];
#   - a file in the image carries setuid/setgid bits or file capabilities, or a shell exists;
#   - the binary does not run under --cap-drop ALL --security-opt no-new-privileges
#     --read-only --network none, or the shipped config does not validate there.
#
#   deploy/image/check.sh [IMAGE]      # default: localhost/drover:local
#
# Containers run with runc: crun refuses the hybrid cgroup layout of some CI machines. The
# explicit ulimits stay within what an unprivileged runtime may set on such machines.
set -euo pipefail
image=${1:-localhost/drover:local}
run=(podman --runtime runc run --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
     --cap-drop ALL --security-opt no-new-privileges --read-only --network none)

user=$(podman image inspect "$image" --format '{{.Config.User}}')
entrypoint=$(podman image inspect "$image" --format '{{json .Config.Entrypoint}}')
echo "check.sh: user=$user entrypoint=$entrypoint" >&2
[[ "$user" =~ ^[0-9]+:[0-9]+$ ]] || { echo "check.sh: user '$user' is not numeric uid:gid" >&2; exit 1; }
[ "${user%%:*}" != 0 ] || { echo "check.sh: the image runs as root" >&2; exit 1; }
[ "$entrypoint" = '["/usr/local/bin/drover","serve"]' ] || { echo "check.sh: wrong entrypoint $entrypoint" >&2; exit 1; }

container=$(podman create "$image")
trap 'podman rm -f "$container" >/dev/null 2>&1 || true' EXIT
podman export "$container" | python3 -c '
import sys, tarfile
bad = []
files = 0
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    for member in tar:
        files += 1
        if member.mode & 0o6000:
            bad.append(f"{member.name}: setuid/setgid mode {oct(member.mode)}")
        if any("security.capability" in key for key in member.pax_headers):
            bad.append(f"{member.name}: file capabilities")
        if member.name.lstrip("./") in ("bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/bash"):
            bad.append(f"{member.name}: a shell")
for line in bad:
    print("check.sh:", line, file=sys.stderr)
print(f"check.sh: {files} entries in the image, {len(bad)} problems", file=sys.stderr)
sys.exit(1 if bad else 0)
'

"${run[@]}" --entrypoint /usr/local/bin/drover "$image" --version
"${run[@]}" --entrypoint /usr/local/bin/drover "$image" validate --kind config /etc/drover/drover.toml
echo "check.sh: $image passed" >&2
