#!/usr/bin/env bash
# Assembles the runtime root file system for the drover image.
#
#   deploy/image/rootfs.sh BINARY DEST
#
# DEST receives: the binary, stripped, at /usr/local/bin/drover; every shared library it links (as `ldd`
# resolves them on this machine) and the dynamic loader, at the same paths; CA certificates;
# /etc/passwd and /etc/group with root and nonroot (65532); nsswitch.conf; the default config
# at /etc/drover/drover.toml; the sandbox profiles at /usr/share/drover/sandbox/; empty
# /tmp (1777) and /var/lib/drover (the data directory). Nothing setuid, no shell.
set -euo pipefail
binary=${1:?usage: rootfs.sh BINARY DEST}
dest=${2:?usage: rootfs.sh BINARY DEST}
repo=$(cd "$(dirname "$0")/../.." && pwd)

rm -rf "$dest"
mkdir -p "$dest"/{usr/local/bin,etc/drover,etc/ssl/certs,usr/share/drover,var/lib/drover,tmp}
install -m 0755 "$binary" "$dest/usr/local/bin/drover"
# Shipped without debug info or symbols whatever profile built it (the release profile already
# strips; a binary built otherwise is stripped here). deploy/image/check.sh verifies.
strip --strip-all "$dest/usr/local/bin/drover"

# Shared libraries and the loader, copied (not linked) to the paths the binary asks for.
ldd "$binary" | awk '/=> \// {print $3} /^\t\/[^ ]+ \(0x/ {print $1}' | sort -u | while read -r lib; do
  mkdir -p "$dest$(dirname "$lib")"
  cp -L "$lib" "$dest$lib"
  chmod 0755 "$dest$lib"
done

if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$dest/etc/ssl/certs/ca-certificates.crt"
fi

cat > "$dest/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:drover:/var/lib/drover:/sbin/nologin
PASSWD
cat > "$dest/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$dest/etc/nsswitch.conf"

install -m 0644 "$repo/deploy/drover.toml" "$dest/etc/drover/drover.toml"
if [ -d "$repo/sandbox" ]; then
  cp -R "$repo/sandbox" "$dest/usr/share/drover/sandbox"
fi

chmod 1777 "$dest/tmp"
chmod 0750 "$dest/var/lib/drover"
# Defence in depth: nothing in the image may carry setuid/setgid bits.
find "$dest" -perm /6000 -type f -exec chmod ug-s {} +
echo "rootfs.sh: $(find "$dest" -type f | wc -l) files in $dest" >&2
