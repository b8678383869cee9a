#!/usr/bin/env bash
# The hook's proof on a real NVIDIA GPU (issue 4), in one go for the device machine:
# build the hook with CMake (headers carried in .cuda/include: that machine has no
# network), then memory, compute accuracy, two-process fairness and overhead.
#
#   tests/gpu/run_all.sh [phases] [bench/hook_gpu.py options, e.g. --quick]
#   phases: memory,compute,pair,launch_ab,tiny,transformer (overhead = the last three; default all)
# Results: $OUT/hook-results.json, $OUT/hook-summary.txt, $OUT/hook-log.txt
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/hook-gpu-out}"
mkdir -p "$OUT"
PHASES="${1:-memory,compute,pair,overhead}"
shift || true   # the rest goes to bench/hook_gpu.py, e.g. --quick --kinds graph --limits 50,70
INC="${FLEXAI_CUDA_INCLUDE_DIR:-$PWD/.cuda/include}"
export PYTHONUNBUFFERED=1

{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  build() {
    cmake -S csrc/hook -B build/hook-gpu -DFLEXAI_CUDA_INCLUDE_DIR="$INC" -DFLEXAI_HOOK_TESTS=OFF \
          -DFLEXAI_WERROR="$1" -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build/hook-gpu -j 8
  }
  # -Werror first (and say so if this compiler warns); never lose the run over a warning.
  build ON 2>&1 | grep -Ei "warning|error" || echo "build: no warnings ($(gcc --version | head -1))"
  test -f build/hook-gpu/libflexai_hook.so || { echo "retrying without -Werror"; build OFF 2>&1 | tail -5; }
  test -f build/hook-gpu/libflexai_hook.so || { echo "build failed"; exit 1; }
  FLEXAI_HOOK_LIB="$PWD/build/hook-gpu/libflexai_hook.so" \
  FLEXAI_SHIM_LIBRARY="$PWD/build/hook-gpu/libflexai_shim.so" \
    python3 bench/hook_gpu.py --out "$OUT" --phases "$PHASES" "$@"
} 2>&1 | tee "$OUT/hook-log.txt"
