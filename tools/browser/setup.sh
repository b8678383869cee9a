#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser tests (tests/dashboard), from Debian's
# packages: Playwright drives /usr/bin/chromium (its own browser downloads are not used).
# Idempotent: does nothing when chromium is already installed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "tools/browser/setup.sh: chromium is missing; run as root (apt-get install chromium)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium
