#!/usr/bin/env bash
# clang-format for `make lint` (csrc/ against the repository's .clang-format), from Debian's
# package: the version bookworm ships (14). Python's linter and formatter come from the pinned
# `lint` extra instead (pyproject.toml). Idempotent.
exec "$(dirname "$0")/../apt-install.sh" clang-format
