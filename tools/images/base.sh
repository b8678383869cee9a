#!/usr/bin/env bash
# A Debian 12 base image made here with debootstrap, for building the project's images
# where no image registry is reachable. It holds Python 3.11 with venv, CA certificates
# (plus the build host's own extra CAs, so pip works behind a TLS-intercepting proxy),
# and nothing else. Cached as a tar of the root filesystem, keyed by what goes into it.
#
#   tools/images/base.sh        prints the path of the cached rootfs tar (builds it if missing)
set -euo pipefail
cache=${FLEXAI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flexai}/images
mirror=${FLEXAI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
packages=python3,python3-venv,ca-certificates
key=$( { echo "$suite minbase $packages $mirror"; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true; } \
  | sha256sum | cut -c1-16)
out=$cache/base-rootfs-$key.tar
mkdir -p "$cache"
# One debootstrap at a time (the images and the real-node tests both ask for the base).
exec 9>"$cache/.base.lock"
flock 9

if [[ ! -f $out ]]; then
  root=$(mktemp -d /var/tmp/flexai-base.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "debootstrap bookworm into $root" >&2
  debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >&2
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >&2
  fi
  # Only what an image needs: no package lists, caches, docs or logs.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
         "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*
  tar --numeric-owner -C "$root" -cf "$out.partial" .
  mv "$out.partial" "$out"
fi
echo "$out"
