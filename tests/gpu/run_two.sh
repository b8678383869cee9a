#!/usr/bin/env bash
# Issue 8 on a device machine with two GPUs, in one go: build the hook (headers carried in
# .cuda/include), the node agent with a pod holding one vGPU on each card (gRPC and protobuf
# wheels carried in .whl/), then one process with different limits on the two cards.
#
#   tests/gpu/run_two.sh [agent,limits]     (device tool: carry [".cuda", ".whl"]; default both)
# Results: $OUT/node-agent-2gpu.md, $OUT/two-gpu.md, $OUT/two-gpu-log.txt
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/two-gpu-out}"
mkdir -p "$OUT"
PARTS="${1:-agent,limits}"
export PYTHONUNBUFFERED=1
{
  echo "== $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site
  fi
  B=build/hook-gpu
  tests/gpu/build_hook.sh || exit 1
  if [[ ",$PARTS," == *,agent,* ]]; then
    python3 tests/gpu/node_agent_check.py --hook $B/libflexai_hook.so --shim $B/libflexai_shim.so \
        --slice-gib 8 --cards 2 --symlink-mounts --out "$OUT/node-agent-2gpu.md" | tail -40
    echo "node agent check: rc=${PIPESTATUS[0]}"
  fi
  if [[ ",$PARTS," == *,limits,* ]]; then
    python3 tests/gpu/two_gpu.py --hook $B/libflexai_hook.so --out "$OUT/two-gpu.md"
    echo "two_gpu: rc=$?"
  fi
} 2>&1 | tee "$OUT/two-gpu-log.txt"
