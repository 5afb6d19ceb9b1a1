#!/usr/bin/env bash
# Inspects a built drover image (SR-005) and fails on any of:
#   - the configured user is root, or not numeric uid:gid;
#   - the entrypoint is not ["/usr/local/bin/drover","serve"];
#   - a file in the image carries setuid/setgid bits or file capabilities, or a shell exists;
#   - the binary carries debug info or a symbol table (the image ships it stripped);
#   - the binary does not run under --cap-drop ALL --security-opt no-new-privileges
#     --read-only --network none, or the shipped config does not validate there;
#   - in that container, the supervisor's privilege drop does not verify, or a driver started
#     the way the supervisor starts one (`drover exec`) reports a capability mask other than 0
#     in any of the five sets, NoNewPrivs other than 1, uid 0, or no seccomp filter.
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
import struct, sys, tarfile
bad = []
files = 0

def unstripped_sections(elf):
    """Names of the debug and symbol-table sections of an ELF64 little-endian file."""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    def header(i):
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size
    _, str_off, _ = header(shstrndx)
    names = []
    for i in range(shnum):
        name = header(i)[0]
        names.append(elf[str_off + name:elf.index(b"\0", str_off + name)].decode())
    return [n for n in names if n.startswith(".debug") or n == ".symtab"]

with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    for member in tar:
        files += 1
        if member.mode & 0o6000:
            bad.append(f"{member.name}: setuid/setgid mode {oct(member.mode)}")
        if any("security.capability" in key for key in member.pax_headers):
            bad.append(f"{member.name}: file capabilities")
        if member.name.lstrip("./") in ("bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/bash"):
            bad.append(f"{member.name}: a shell")
        if member.name.lstrip("./") == "usr/local/bin/drover":
            found = unstripped_sections(tar.extractfile(member).read())
            if found:
                names = ", ".join(found)
                bad.append(f"{member.name}: not stripped ({names})")
for line in bad:
    print("check.sh:", line, file=sys.stderr)
print(f"check.sh: {files} entries in the image, {len(bad)} problems", file=sys.stderr)
sys.exit(1 if bad else 0)
'

"${run[@]}" --entrypoint /usr/local/bin/drover "$image" --version
"${run[@]}" --entrypoint /usr/local/bin/drover "$image" validate --kind config /etc/drover/drover.toml

# The runtime probe of SR-005: the supervisor, then a driver, inside the locked-down container.
status=$("${run[@]}" --entrypoint /usr/local/bin/drover "$image" sandbox status --json)
probe=$("${run[@]}" --entrypoint /usr/local/bin/drover "$image" exec -- /usr/local/bin/drover sandbox probe)
python3 - "$status" "$probe" <<'PY'
import json, sys
status = json.loads(sys.argv[1])
drop = status["privilege_drop"]
problems = []
if not drop.get("ok") or drop.get("uid") in (None, 0):
    problems.append(f"supervisor privilege drop: {drop}")
facts = json.loads(sys.argv[2].splitlines()[0])["facts"]["status"]
for mask in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
    if int(facts[mask], 16) != 0:
        problems.append(f"driver {mask} = {facts[mask]}")
if facts["NoNewPrivs"] != "1":
    problems.append(f"driver NoNewPrivs = {facts['NoNewPrivs']}")
if facts["Uid"].split()[0] == "0":
    problems.append(f"driver Uid = {facts['Uid']}")
if facts["Seccomp"] != "2":
    problems.append(f"driver Seccomp = {facts['Seccomp']}")
for line in problems:
    print("check.sh:", line, file=sys.stderr)
print(f"check.sh: supervisor uid {drop['uid']}; driver {' '.join(m + '=' + facts[m] for m in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'))}, NoNewPrivs {facts['NoNewPrivs']}, Seccomp {facts['Seccomp']}; degradations: {status['degradations'] or 'none'}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "check.sh: $image passed" >&2
