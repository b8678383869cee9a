#!/usr/bin/env bash
# Issue 23 on a device machine, in one go: build the hook and its shim (headers carried in
# .cuda/include: that machine has no network), then tests/gpu/frameworks.py: the agent's
# default calibration, memory per framework, workers, fork, compute at 10-90% in the default
# config, pairs, Triton/JAX/Llama at 30/60%, overhead per framework.
#
#   tests/gpu/run_frameworks.sh [frameworks.py options, e.g. --phases compute,pair --seconds 2]
# Results: $OUT/frameworks.json, $OUT/frameworks.md, $OUT/frameworks-log.txt
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/fw-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv,noheader)"
  python3 -c 'import torch, triton, jax, cupy, transformers; print("torch", torch.__version__, "triton", triton.__version__, "jax", jax.__version__, "cupy", cupy.__version__, "transformers", transformers.__version__)'
  tests/gpu/build_hook.sh || exit 1
  python3 tests/gpu/frameworks.py --out "$OUT" "$@"
} 2>&1 | tee "$OUT/frameworks-log.txt"
