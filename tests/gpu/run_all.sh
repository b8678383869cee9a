#!/usr/bin/env bash
# The hook's proof on a real NVIDIA GPU (issue 4), in one go for the device machine:
# build the hook with CMake (headers carried in .cuda/include: that machine has no
# network), then memory, compute accuracy, two-process fairness and overhead.
#
#   tests/gpu/run_all.sh [phases] [bench/hook_gpu.py options, e.g. --quick]
#   phases: memory,compute,pair,launch_ab,tiny,transformer,transformer_under (overhead = the last four; default all)
# Results: $OUT/hook-results.json, $OUT/hook-summary.txt, $OUT/hook-log.txt
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/hook-gpu-out}"
mkdir -p "$OUT"
PHASES="${1:-memory,compute,pair,overhead}"
shift || true   # the rest goes to bench/hook_gpu.py, e.g. --quick --kinds graph --limits 50,70
export PYTHONUNBUFFERED=1

{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  tests/gpu/build_hook.sh || exit 1
  FLEXAI_HOOK_LIB="$PWD/build/hook-gpu/libflexai_hook.so" \
  FLEXAI_SHIM_LIBRARY="$PWD/build/hook-gpu/libflexai_shim.so" \
    python3 bench/hook_gpu.py --out "$OUT" --phases "$PHASES" "$@"
} 2>&1 | tee "$OUT/hook-log.txt"
