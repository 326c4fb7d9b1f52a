#!/usr/bin/env bash
# Builds the operator image with buildah (no daemon, no base image pulls):
#
#   hack/image.sh [OPERATOR_BINARY] [TAG]
#
# OPERATOR_BINARY defaults to target/release/mahler-operator (`make image`);
# mahler-server is taken from beside it (or MAHLER_SERVER_BINARY);
# TAG to localhost/mahler-operator:<crate version>. Prints the image ID.
# Needs root or a user namespace (buildah), and Debian's buildah package.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/mahler-operator}
version=$(awk -F'"' '/^version/ {print $2; exit}' "$root/Cargo.toml")
tag=${2:-localhost/mahler-operator:$version}
ctx=${MAHLER_IMAGE_CONTEXT:-$root/target/image/context}
command -v buildah >/dev/null || { echo "buildah is not installed: apt-get install buildah" >&2; exit 1; }
[[ -x $bin ]] || { echo "no operator binary at $bin: run \`make build\`" >&2; exit 1; }

tools=$("$root/hack/tools.sh" dir tofu otelcol)
mirror=$("$root/hack/tools.sh" mirror)
rm -rf "$ctx"
# Three trees, one image layer each (see Containerfile): base, tofu, operator;
# and work, the operator's writable directory.
rootfs=$ctx/layers/base
tofufs=$ctx/layers/tofu
opfs=$ctx/layers/operator
mkdir -p "$rootfs"/{usr/bin,usr/lib/git-core,etc/ssl/certs,tmp,lib,lib64} \
  "$tofufs"/usr/local/bin "$tofufs"/usr/share/mahler "$opfs"/usr/local/bin "$ctx/layers/work"

# Binaries. The operator is stripped (a debug build carries debug info).
cp "$bin" "$opfs/usr/local/bin/mahler-operator"
strip "$opfs/usr/local/bin/mahler-operator" 2>/dev/null || true
# The REST API (charts/mahler/templates/api-server.yaml runs it), built
# beside the operator (`make build`).
server=${MAHLER_SERVER_BINARY:-$(dirname "$bin")/mahler-server}
# (`make image` always has it; without one the image has no REST API.)
if [[ -x $server ]]; then
  cp "$server" "$opfs/usr/local/bin/mahler-server"
  strip "$opfs/usr/local/bin/mahler-server" 2>/dev/null || true
else
  echo "warning: no mahler-server binary at $server (\`make build\`): the image has no REST API" >&2
fi
cp -L "$tools/tofu" "$tofufs/usr/local/bin/tofu"
# The collector that validates environments' telemetry configs (static).
cp -L "$tools/otelcol" "$tofufs/usr/local/bin/otelcol"
cp /usr/bin/git "$rootfs/usr/bin/git"
for helper in git-remote-http git-remote-https; do
  cp /usr/lib/git-core/$helper "$rootfs/usr/lib/git-core/$helper"
done
# The provider mirror (hard links inside it are kept).
cp -a "$mirror" "$tofufs/usr/share/mahler/providers"
rm -f "$tofufs/usr/share/mahler/providers/.complete"

# The shared libraries every binary loads (tofu is static), at the paths the
# dynamic loader looks them up.
for b in "$opfs"/usr/local/bin/* "$rootfs/usr/bin/git" "$rootfs"/usr/lib/git-core/*; do
  ldd "$b" 2>/dev/null | awk '/=>/ {print $3} /^[ \t]*\/lib/ {print $1}' | grep '^/' || true
done | sort -u | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
  # The loader resolves /lib/x86_64-linux-gnu via the usrmerge layout too.
done
if [[ -d $rootfs/usr/lib/x86_64-linux-gnu ]]; then
  mkdir -p "$rootfs/lib/x86_64-linux-gnu"
  cp -a "$rootfs/usr/lib/x86_64-linux-gnu/." "$rootfs/lib/x86_64-linux-gnu/"
  rm -rf "$rootfs/usr/lib/x86_64-linux-gnu"
fi

cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
mahler:x:65532:65532:mahler:/var/lib/mahler:/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
mahler:x:65532:
GROUP
echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"
touch "$ctx/layers/work/.keep"

# --force-rm: a failed build (a full disk) leaves no working container
# behind to hold its base image.
buildah --storage-driver vfs --isolation chroot bud --quiet \
  --layers --force-rm -f "$root/Containerfile" -t "$tag" "$ctx" >/dev/null
buildah --storage-driver vfs rmi --prune >/dev/null 2>&1 || true
buildah --storage-driver vfs images --noheading --format '{{.ID}}' "$tag"
echo "built $tag" >&2
