#!/usr/bin/env bash
# What building the images needs (tools/images/build.sh, tests/deploy/test_images.py):
# Debian's buildah and podman (no Docker daemon here), runc for podman's test runs, and
# debootstrap for the base.
# Idempotent: does nothing when they are installed.
exec "$(dirname "$0")/../apt-install.sh" buildah podman runc debootstrap
