#!/usr/bin/env bash
# Install the Debian packages named that are not installed yet; returns at once when all
# are. Used by the setup scripts under tools/ (the tests' browser, real node and images).
#   tools/apt-install.sh PACKAGE...
set -euo pipefail
missing=()
for p in "$@"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done
(( ${#missing[@]} )) || exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "tools/apt-install.sh: ${missing[*]} missing; run as root (apt-get install)" >&2
  exit 1
fi
echo "tools/apt-install.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Other setup scripts may hold apt's locks: wait for them rather than fail. No service is
# started by the tests' packages: each test runs its own daemons with their own state.
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
