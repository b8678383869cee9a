#!/usr/bin/env bash
# Build the images the chart runs, here, with no image registry: buildah (Debian's
# package) on a Debian base made by debootstrap (tools/images/base.sh). Every image is
# saved as a docker-archive tar in a cache outside the repository, keyed by a hash of
# its inputs, and rebuilt only when they change.
#
#   tools/images/build.sh [--without-kube-scheduler]
#                             builds what is missing; prints one line per image:
#                             <image reference> <archive path>
#   (--without-kube-scheduler: all but the image of the control plane's kube-scheduler, so
#   `make test` can build the rest while the Go binaries compile)
#
# Images:
#   docker.io/flexai/flexai-sched:0.1.0      Dockerfile.scheduler (the chart's default name)
#   docker.io/flexai/flexai-node:0.1.0       Dockerfile.node
#   localhost/kube-scheduler:v1.34.4         the kube-scheduler built by tools/controlplane
#   localhost/flexai-views-nginx:bookworm    nginx from Debian, for the chart's views proxy
# Python packages come from PyPI during the build, as in a user's build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${FLEXAI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flexai}/images
mkdir -p "$cache"
exec 9>"$cache/.build.lock"  # one build at a time: buildah's names and the archives are shared
flock 9
# The build steps run in a chroot, not an OCI runtime: crun refuses hosts that mount cgroup v1
# beside an empty v2 hierarchy, and a build of our own Dockerfiles needs no cgroup limits.
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
version=$(awk -F'"' '$1 ~ /^version/ {print $2; exit}' "$repo/pyproject.toml")
log() { echo "[images $(date +%T)] $*" >&2; }
has_image() { buildah images --quiet "$1" >/dev/null 2>&1; }
hash_files() { (cd "$repo" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
  | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }

# archive REF TAR: save REF from buildah's store (atomically: a cut-off save is never used)
archive() { rm -f "$2.partial"; buildah push --quiet "$1" "docker-archive:$2.partial:$1" >/dev/null; mv "$2.partial" "$2"; }

# ---- the bases: a runtime base and a builder (gcc, make, cmake, pip) on top of it ----
rootfs=$("$here/base.sh")
bkey=$(basename "$rootfs" .tar | sed 's/^base-rootfs-//')
base=localhost/flexai-base:$bkey
builder=localhost/flexai-builder:$bkey
if ! has_image "$base"; then
  log "importing $rootfs as $base"
  c=$(buildah from scratch)
  buildah add --quiet "$c" "$rootfs" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/sh "$c"
  buildah commit --quiet --rm "$c" "$base" >/dev/null
fi
if ! has_image "$builder"; then
  log "making $builder"
  c=$(buildah from --quiet "$base")
  buildah run --network host "$c" -- sh -ec 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q;
    apt-get install -y -q --no-install-recommends gcc libc6-dev make cmake python3-pip >/dev/null;
    rm -rf /var/lib/apt/lists/*' >&2
  buildah commit --quiet --rm "$c" "$builder" >/dev/null
fi

# ---- the project's images ----
# bud NAME DOCKERFILE CONTEXT-PATHS...: build unless the archive for these inputs exists
bud() {
  local name=$1 file=$2; shift 2
  local ref=docker.io/flexai/$name:$version
  local key; key=$(echo "$bkey $(hash_files "$file" "$@")" | sha256sum | cut -c1-16)
  local tar=$cache/$name-$key.tar
  if [[ ! -f $tar ]]; then
    log "building $ref ($file)"
    local t0=$SECONDS
    (cd "$repo" && buildah bud --quiet --network host --layers -f "$file" \
       --build-arg "BASE=$base" --build-arg "HOOK_BASE=$builder" --build-arg HOOK_PYTHON=python3 \
       -t "$ref" . >&2)
    archive "$ref" "$tar"
    log "built $ref in $((SECONDS - t0)) s"
  fi
  echo "$ref $tar"
}
bud flexai-sched Dockerfile.scheduler pyproject.toml README.md tools/images/requirements.py flexai_core flexai_sched
bud flexai-node Dockerfile.node pyproject.toml README.md tools/images/requirements.py flexai_core flexai_node csrc/hook

# ---- nginx for the read-only views proxy ----
ref=localhost/flexai-views-nginx:bookworm
tar=$cache/views-nginx-$(echo "$bkey nginx-light" | sha256sum | cut -c1-16).tar
if [[ ! -f $tar ]]; then
  log "making $ref"
  c=$(buildah from --quiet "$base")
  buildah run --network host "$c" -- sh -ec 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q;
    apt-get install -y -q --no-install-recommends nginx-light >/dev/null || apt-get install -y -q --no-install-recommends nginx >/dev/null;
    rm -rf /var/lib/apt/lists/* /var/log/nginx/*' >&2
  buildah config --user 65532:65532 "$c"
  buildah commit --quiet --rm "$c" "$ref" >/dev/null
  archive "$ref" "$tar"
fi
echo "$ref $tar"

[[ ${1:-} == --without-kube-scheduler ]] && exit 0

# ---- kube-scheduler from the control-plane build (the upstream image needs a registry) ----
bindir=$("$repo/tools/controlplane/build.sh" --print)
ks=$(readlink -f "$bindir/kube-scheduler")
[[ -x $ks ]] || { echo "no kube-scheduler: run tools/controlplane/build.sh" >&2; exit 1; }
ksver=$("$ks" --version | awk '{print $2}')
ref=localhost/kube-scheduler:$ksver
tar=$cache/kube-scheduler-$(sha256sum "$ks" | cut -c1-16).tar
if [[ ! -f $tar ]]; then
  log "making $ref"
  c=$(buildah from scratch)
  buildah copy --quiet "$c" "$ks" /usr/local/bin/kube-scheduler >/dev/null
  buildah config --env PATH=/usr/local/bin --entrypoint '["/usr/local/bin/kube-scheduler"]' "$c"
  buildah commit --quiet --rm "$c" "$ref" >/dev/null
  archive "$ref" "$tar"
fi
echo "$ref $tar"
