#!/usr/bin/env bash
# Install what the real-node tests run (tests/realnode): Debian's containerd and
# runc as the CRI runtime, debootstrap for the test images' root filesystem, and
# util-linux's unshare/nsenter. Idempotent: a machine that has them all returns
# at once, without touching apt.
#
# Debian's containerd 1.6 rather than 2.x from Go modules: it speaks CRI v1 to
# the 1.34 kubelet, comes with a runc Debian keeps patched, and costs a
# 30-second apt install instead of another Go build.
set -euo pipefail
packages=(containerd runc debootstrap util-linux mount)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "tools/node/setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Other setup scripts may hold apt's locks: wait for them rather than fail.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  # No service is started: the tests run their own containerd with its own state.
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
