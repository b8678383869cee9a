"""Proof of the CUDA hook on a real GPU (issue 4): memory, compute accuracy, overhead.

    FLEXAI_HOOK_LIB=build/hook-gpu/libflexai_hook.so FLEXAI_SHIM_LIBRARY=build/hook-gpu/libflexai_shim.so \
        python bench/hook_gpu.py --out $OUT [--phases memory,compute,pair,overhead]

Each measurement is a child process (bench/hook_workload.py) under LD_PRELOAD of the hook
with a config written by flexai_node.hook_config, or without the hook for baselines.
Writes <out>/hook-results.json (every figure) and prints a summary table last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flexai_node.hook_config import HookConfig, VGPULimit, container_env, write_config  # noqa: E402

WORKLOAD = str(REPO / "bench" / "hook_workload.py")
HOOK = os.environ.get("FLEXAI_HOOK_LIB", str(REPO / "build" / "hook" / "libflexai_hook.so"))
SHIM = os.environ.get("FLEXAI_SHIM_LIBRARY", str(REPO / "build" / "hook" / "libflexai_shim.so"))
GiB = 1 << 30
TMP = Path(tempfile.mkdtemp(prefix="flexai-bench-"))
RESULTS: dict[str, Any] = {}


def gpu_uuid() -> str:
    return subprocess.run(
        ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True, text=True, check=True
    ).stdout.split()[0]


def config(name: str, **limit: Any) -> Path:
    """A config for one vGPU on this card; its region is private to `name`."""
    path = TMP / f"{name}.conf"
    write_config(path, HookConfig(vgpus=(VGPULimit(uuid=UUID, **limit),), region_path=str(TMP / f"{name}.region")))
    return path


def child(kind: str, *args: str, conf: Path | None = None, hook: bool = True, env: dict[str, str] | None = None,
          timeout: float = 120) -> dict[str, Any]:
    e = dict(os.environ)
    e.pop("LD_PRELOAD", None)
    e.pop("FLEXAI_VGPU_CONFIG", None)
    if hook:
        e["LD_PRELOAD"] = HOOK
        e["FLEXAI_DEBUG"] = "1"  # the hook prints its lookup and window statistics at exit
        if conf is not None:
            e.update(container_env(str(conf), HOOK))
    e.update(env or {})
    t0 = time.time()
    try:
        r = subprocess.run([sys.executable, WORKLOAD, kind, *args], env=e, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    out: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": f"rc={r.returncode}"}
    out["wall_s"] = round(time.time() - t0, 1)
    if r.stderr.strip():
        out["stderr_tail"] = r.stderr.strip().splitlines()[-4:]
    return out


def popen_child(kind: str, *args: str, conf: Path) -> subprocess.Popen[str]:
    e = dict(os.environ)
    e.update(container_env(str(conf), HOOK))
    return subprocess.Popen([sys.executable, WORKLOAD, kind, *args], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def monitor(region: Path, samples: int) -> subprocess.Popen[str]:
    e = dict(os.environ, PYTHONPATH=str(REPO))
    e.pop("LD_PRELOAD", None)
    return subprocess.Popen([sys.executable, "-m", "flexai_node.monitor", "-p", "1", "-n", str(samples), "-o", "json",
                             "--region", str(region), "--shim", SHIM], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class NvmlSampler(threading.Thread):
    """Card utilisation (NVML) every second, as nvidia-smi would show it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        t0 = time.time()
        while not self.stop.wait(1.0):
            self.samples.append((round(time.time() - t0, 1), pynvml.nvmlDeviceGetUtilizationRates(h).gpu))
        pynvml.nvmlShutdown()


def save(out: Path) -> None:
    (out / "hook-results.json").write_text(json.dumps(RESULTS, indent=1))


# ---- phases -----------------------------------------------------------------------

def phase_memory() -> None:
    limit = 16 * GiB
    res = {}
    for mode, env in [("default", {}), ("expandable_segments", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
                      ("cudaMallocAsync", {"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"})]:
        res[mode] = child("fill", conf=config(f"mem-{mode}", memory_bytes=limit), env=env)
    res["limit_mib"] = limit >> 20
    RESULTS["memory"] = res


def phase_compute() -> None:
    res: dict[str, Any] = {}
    res["matmul_nohook"] = child("matmul", hook=False)
    res["matmul_hook_noconfig"] = child("matmul")
    res["graph_nohook"] = child("graph", hook=False)
    base_m, base_g = res["matmul_nohook"].get("tflops", 0), res["graph_nohook"].get("tflops", 0)
    for pct in (10, 20, 30, 50, 70, 90):
        if pct == 30:  # this one also watched by gpu-monitor and NVML, 1 s samples
            conf = config("solo30", cores=30)
            sampler = NvmlSampler()
            sampler.start()
            mon = monitor(TMP / "solo30.region", 10)
            m = child("matmul", "--seconds", "6", conf=conf)
            mon_out, _ = mon.communicate(timeout=30)
            sampler.stop.set()
            res["solo30_monitor"] = [json.loads(ln) for ln in mon_out.splitlines() if ln.startswith("{")]
            res["solo30_nvml"] = sampler.samples
        else:
            m = child("matmul", conf=config(f"m{pct}", cores=pct))
        g = child("graph", conf=config(f"g{pct}", cores=pct))
        m["relative"] = round(m.get("tflops", 0) / base_m, 4) if base_m else None
        g["relative"] = round(g.get("tflops", 0) / base_g, 4) if base_g else None
        res[f"matmul_{pct}"], res[f"graph_{pct}"] = m, g
    RESULTS["compute"] = res


def run_pair(name: str, off_b: int) -> dict[str, Any]:
    ca = config(f"{name}-a", cores=30, core_offset=0)
    cb = config(f"{name}-b", cores=70, core_offset=off_b)
    start = time.time() + 12  # both import torch and warm up before the common start
    sampler = NvmlSampler()
    sampler.start()
    mons = [monitor(TMP / f"{name}-a.region", 18), monitor(TMP / f"{name}-b.region", 18)]
    procs = [popen_child("matmul", "--seconds", "4", "--start-at", str(start), conf=c) for c in (ca, cb)]
    outs = []
    for p in procs:
        o, err = p.communicate(timeout=120)
        lines = [ln for ln in o.splitlines() if ln.startswith("{")]
        outs.append(json.loads(lines[-1]) if lines else {"error": err[-500:]})
    mon_out = [m.communicate(timeout=60)[0] for m in mons]
    sampler.stop.set()
    a, b = outs[0].get("tflops", 0), outs[1].get("tflops", 0)
    return {"a_30": outs[0], "b_70": outs[1], "ratio": round(a / b, 4) if b else None,
            "monitor_a": [json.loads(ln) for ln in mon_out[0].splitlines() if ln.startswith("{")],
            "monitor_b": [json.loads(ln) for ln in mon_out[1].splitlines() if ln.startswith("{")],
            "nvml": sampler.samples}


def phase_pair() -> None:
    RESULTS["pair"] = run_pair("pair", 30)
    RESULTS["pair_same_offset"] = run_pair("pairsame", 0)


def phase_overhead() -> None:
    res: dict[str, Any] = {}
    memcfg = dict(memory_bytes=64 * GiB)
    res["tiny_nohook"] = child("tiny", hook=False)
    res["tiny_hook_noconfig"] = child("tiny")
    res["tiny_hook_memlimit"] = child("tiny", conf=config("tiny-mem", **memcfg))
    res["tiny_hook_cores90"] = child("tiny", conf=config("tiny-90", cores=90, **memcfg))
    res["tf_nohook"] = child("transformer", hook=False)
    res["tf_hook_noconfig"] = child("transformer")
    res["tf_hook_memlimit"] = child("transformer", conf=config("tf-mem", **memcfg))
    # A workload that stays under its limit: about 50% busy (sleeps one step time per step), limit 70%.
    res["tf_duty_nohook"] = child("transformer", "--duty", "1.0", hook=False)
    res["tf_duty_hook_cores70"] = child("transformer", "--duty", "1.0", conf=config("tf-70", cores=70, **memcfg))
    RESULTS["overhead"] = res


def summary() -> str:
    rows = []
    m = RESULTS.get("memory", {})
    for mode in ("default", "expandable_segments", "cudaMallocAsync"):
        r = m.get(mode, {})
        rows.append(f"memory {mode:20s} err={r.get('error')} allocated={r.get('allocated_mib')}MiB "
                    f"mem_get_info={r.get('mem_get_info_before_mib')} smi='{r.get('nvidia_smi')}' nvml={r.get('nvml')}")
    c = RESULTS.get("compute", {})
    if c:
        rows.append(f"matmul base {c.get('matmul_nohook', {}).get('tflops', 0):.1f} TFLOP/s, hook no config "
                    f"{c.get('matmul_hook_noconfig', {}).get('tflops', 0):.1f}, graph base "
                    f"{c.get('graph_nohook', {}).get('tflops', 0):.1f}")
        for pct in (10, 20, 30, 50, 70, 90):
            rows.append(f"limit {pct:2d}%: matmul {100 * (c.get(f'matmul_{pct}', {}).get('relative') or 0):5.1f}%  "
                        f"graph {100 * (c.get(f'graph_{pct}', {}).get('relative') or 0):5.1f}%")
    for key in ("pair", "pair_same_offset"):
        p = RESULTS.get(key)
        if p:
            rows.append(f"{key}: 30% {p['a_30'].get('tflops', 0):.1f} / 70% {p['b_70'].get('tflops', 0):.1f} TFLOP/s, "
                        f"ratio {p['ratio']} (3:7 = 0.4286)")
    o = RESULTS.get("overhead", {})
    for k, v in o.items():
        val = v.get("launches_per_s") or v.get("step_ms_median")
        rows.append(f"overhead {k:22s} {val}")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hook-bench"))
    ap.add_argument("--phases", default="memory,compute,pair,overhead")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    global UUID
    UUID = gpu_uuid()
    RESULTS["gpu_uuid"] = UUID
    RESULTS["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    phases = {"memory": phase_memory, "compute": phase_compute, "pair": phase_pair, "overhead": phase_overhead}
    for name in args.phases.split(","):
        t0 = time.time()
        try:
            phases[name]()
        except Exception as e:  # keep what the other phases measured
            RESULTS[f"{name}_error"] = repr(e)
        RESULTS[f"{name}_seconds"] = round(time.time() - t0, 1)
        save(out)
        print(f"[{time.strftime('%H:%M:%S')}] phase {name} done in {time.time() - t0:.0f}s", flush=True)
    print(summary(), flush=True)
    (out / "hook-summary.txt").write_text(summary() + "\n")


UUID = ""

if __name__ == "__main__":
    main()
