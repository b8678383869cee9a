#!/usr/bin/env bash
# Install what the real-node tests run (tests/realnode): Debian's containerd and
# runc as the CRI runtime, debootstrap for the test images' root filesystem, and
# util-linux's unshare/nsenter. Idempotent: a machine that has them all returns
# at once, without touching apt.
#
# Debian's containerd 1.6 rather than 2.x from Go modules: it speaks CRI v1 to
# the 1.34 kubelet, comes with a runc Debian keeps patched, and costs a
# 30-second apt install instead of another Go build.
exec "$(dirname "$0")/../apt-install.sh" containerd runc debootstrap util-linux mount
