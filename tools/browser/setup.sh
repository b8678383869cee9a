#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser tests (tests/dashboard), from Debian's
# packages: Playwright drives /usr/bin/chromium (its own browser downloads are not used).
# Idempotent: does nothing when they are installed.
exec "$(dirname "$0")/../apt-install.sh" chromium fonts-dejavu-core
