#!/usr/bin/env bash
# Build the hook for a GPU machine into build/hook-gpu (no tests; headers from
# $FLEXAI_CUDA_INCLUDE_DIR or .cuda/include, carried: that machine has no network).
# -Werror first, and say so if this compiler warns; never lose the run over a warning.
# Used by run_all.sh and run_two.sh; exits non-zero only if no library came out.
set -uo pipefail
cd "$(dirname "$0")/../.."
INC="${FLEXAI_CUDA_INCLUDE_DIR:-$PWD/.cuda/include}"
build() {
  cmake -S csrc/hook -B build/hook-gpu -DFLEXAI_CUDA_INCLUDE_DIR="$INC" -DFLEXAI_HOOK_TESTS=OFF \
        -DFLEXAI_WERROR="$1" -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build/hook-gpu -j 8
}
build ON 2>&1 | grep -Ei "warning|error" || echo "build: no warnings ($(gcc --version | head -1))"
test -f build/hook-gpu/libflexai_hook.so || { echo "retrying without -Werror"; build OFF 2>&1 | tail -5; }
test -f build/hook-gpu/libflexai_hook.so || { echo "build failed"; exit 1; }
