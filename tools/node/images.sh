#!/usr/bin/env bash
# Build the real-node tests' container images, with no registry: each is an OCI
# archive that `ctr -n k8s.io images import` loads under its name, cached outside
# the repository keyed by a hash of its inputs (this script, the sources, the
# Debian packages it takes), and rebuilt only when that key changes.
#
#   flexai.local/pause:1        the pod sandbox: tools/node/pause.c, static
#   flexai.local/base:bookworm  the project's Debian base root filesystem
#                               (tools/images/base.sh: one debootstrap for every
#                               image), glibc for the preloaded hook, python for
#                               gpu-monitor
#
# Usage: tools/node/images.sh    prints "NAME ARCHIVE" per image, one a line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${FLEXAI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flexai}/node-images
mkdir -p "$cache"
# pack NAME LAYER_TAR OUT JSON_CMD: one uncompressed layer (a root filesystem tar),
# config, manifest, index.
pack() {
  local name=$1 layer_tar=$2 out=$3 cmd=$4 d
  d=$(mktemp -d "$cache/.pack.XXXXXX")
  mkdir -p "$d/blobs/sha256"
  cp "$layer_tar" "$d/layer.tar"
  local layer lsize config csize manifest msize
  layer=$(sha256sum "$d/layer.tar" | cut -d' ' -f1); lsize=$(stat -c %s "$d/layer.tar")
  mv "$d/layer.tar" "$d/blobs/sha256/$layer"
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$cmd" "$layer" > "$d/config"
  config=$(sha256sum "$d/config" | cut -d' ' -f1); csize=$(stat -c %s "$d/config")
  mv "$d/config" "$d/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config" "$csize" "$layer" "$lsize" > "$d/manifest"
  manifest=$(sha256sum "$d/manifest" | cut -d' ' -f1); msize=$(stat -c %s "$d/manifest")
  mv "$d/manifest" "$d/blobs/sha256/$manifest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$msize" "$name" "${name##*:}" > "$d/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
  tar -C "$d" -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$d"
}

key() { { cat "$0"; printf '%s\n' "$@"; } | sha256sum | cut -c1-16; }

# pause: the key covers the source and the compiler.
pause_out=$cache/pause-$(key "$(cat "$here/pause.c")" "$(gcc --version | head -1)").tar
if [[ ! -s $pause_out ]]; then
  echo "building flexai.local/pause:1" >&2
  root=$(mktemp -d "$cache/.rootfs.XXXXXX")
  gcc -static -O2 -o "$root/pause" "$here/pause.c"
  tar --numeric-owner -C "$root" -cf "$root.tar" .
  pack flexai.local/pause:1 "$root.tar" "$pause_out" '["/pause"]'
  rm -rf "$root" "$root.tar"
fi
echo "flexai.local/pause:1 $pause_out"

# base: the rootfs tar's path carries its own key (what goes into it, see base.sh).
rootfs=$(bash "$here/../images/base.sh")
base_out=$cache/base-$(key "$(basename "$rootfs")").tar
if [[ ! -s $base_out ]]; then
  echo "building flexai.local/base:bookworm from $rootfs" >&2
  pack flexai.local/base:bookworm "$rootfs" "$base_out" '["/bin/sh"]'
fi
echo "flexai.local/base:bookworm $base_out"
