#!/usr/bin/env bash
# Install what building the images needs (tools/images/build.sh, tests/deploy/test_images.py):
# Debian's buildah and podman (no Docker daemon here), debootstrap for the base, and
# nothing else. Idempotent: returns at once when all are installed.
set -euo pipefail
packages=(buildah podman debootstrap)
missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "tools/images/setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Other setup scripts may hold apt's locks: wait for them rather than fail.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
