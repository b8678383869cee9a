"""Which part of a two-vGPU hook config breaks CUDA-graph capture (run on a GPU machine; with
one card, the second vGPU names a card that is not there, which still takes the multi-slot path).

    python3 tests/gpu/capture_matrix.py --hook build/hook-gpu/libflexai_hook.so

Captures and replays a graph of matmuls on device 0 (tests/gpu/two_gpu.py's probe) under
configs that differ in one thing each, and prints which capture failed and what the hook
logged ($FLEXAI_DEBUG: its own failed driver calls and failed launches).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from two_gpu import GIB, PROBE, base_env, smi  # noqa: E402

from flexai_node.hook.config import HookConfig, VGPULimit, container_env, write_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hook", type=Path, required=True)
    args = ap.parse_args()
    hook = str(args.hook.resolve())
    uuids = [row[0] for row in smi("uuid")]
    if len(uuids) < 2:  # one card: the second vGPU names a card that is not there; the
        uuids.append("GPU-00000000-0000-0000-0000-000000000001")  # config still has two slots
    tmp = Path(tempfile.mkdtemp(prefix="capture-"))
    both_mem = (12 * GIB, 20 * GIB)
    variants = {
        "two vGPUs, cores+memory": ((30, 60), both_mem, "0,1", {}),
        "two vGPUs, cores only": ((30, 60), (0, 0), "0,1", {}),
        "two vGPUs, memory only": ((0, 0), both_mem, "0,1", {}),
        "card 0 only, cores+memory, both visible": ((30,), both_mem[:1], "0,1", {}),
        "card 0 only, cores+memory, card 0 visible": ((30,), both_mem[:1], "0", {}),
        "two vGPUs, cores+memory, relaxed capture": ((30, 60), both_mem, "0,1", {"CAPTURE_MODE": "relaxed"}),
        "two vGPUs, cores+memory, thread_local capture": ((30, 60), both_mem, "0,1", {"CAPTURE_MODE": "thread_local"}),
    }
    failed = 0
    for i, (name, (cores, mem, visible, extra)) in enumerate(variants.items()):
        conf = tmp / f"{i}.conf"
        write_config(
            conf,
            HookConfig(
                vgpus=tuple(VGPULimit(uuid=uuids[k], memory_bytes=mem[k], cores=cores[k]) for k in range(len(cores))),
                region_path=str(tmp / f"{i}.region"),
            ),
        )
        env = base_env(CUDA_VISIBLE_DEVICES=visible, FLEXAI_DEBUG="1", **container_env(str(conf), hook), **extra)
        r = subprocess.run(
            [sys.executable, "-c", PROBE, "compute", "graph", "0", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        ok = r.returncode == 0
        failed += not ok
        hook_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("flexai-hook")][:10]
        errors = [ln for ln in r.stderr.splitlines() if "Error" in ln][:2]
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {r.stdout.strip()[-80:]}")
        for ln in hook_lines + errors:
            print(f"       {ln}")
    r = subprocess.run(
        [sys.executable, "-c", PROBE, "compute", "graph", "0", "1"],
        env=base_env(CUDA_VISIBLE_DEVICES="0,1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(f"{'ok  ' if r.returncode == 0 else 'FAIL'} no hook (control): {r.stdout.strip()[-80:]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
