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


def popen_child(kind: str, *args: str, conf: Path, trace: str) -> subprocess.Popen[str]:
    e = dict(os.environ)
    e.update(container_env(str(conf), HOOK))
    e.update(FLEXAI_DEBUG="1", FLEXAI_TRACE=trace)
    return subprocess.Popen([sys.executable, WORKLOAD, kind, *args], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def monitor(region: Path, samples: int) -> subprocess.Popen[str]:
    e = dict(os.environ, PYTHONPATH=str(REPO))
    e.pop("LD_PRELOAD", None)
    return subprocess.Popen([sys.executable, "-m", "flexai_node.monitor", "-p", "1", "-n", str(samples), "-o", "json",
                             "--region", str(region), "--shim", SHIM], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class NvmlSampler(threading.Thread):
    """Card utilisation and SM clock (NVML), as nvidia-smi would show them, every `interval` s."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (unix time, util %, SM MHz)
        self.stop = threading.Event()

    def run(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        while not self.stop.wait(self.interval):
            self.samples.append((round(time.time(), 2), pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
                                 pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)))
        pynvml.nvmlShutdown()

    def during(self, t0: float, t1: float) -> dict[str, float]:
        """Mean utilisation and median busy clock over [t0, t1] (a run's measured part)."""
        inside = [s for s in self.samples if t0 + 0.3 <= s[0] <= t1]
        if not inside:
            return {}
        clocks = sorted(s[2] for s in inside if s[1] > 0) or [0]
        return {"nvml_util_mean": round(sum(s[1] for s in inside) / len(inside), 1),
                "sm_clock_median": clocks[len(clocks) // 2], "nvml_samples": len(inside)}


def measured(kind: str, *args: str, **kw: Any) -> dict[str, Any]:
    """child() with NVML sampled at 4 Hz over the run: time share and clock beside throughput."""
    sampler = NvmlSampler(0.25)
    sampler.start()
    r = child(kind, *args, **kw)
    sampler.stop.set()
    sampler.join()
    if "t_start" in r:
        r.update(sampler.during(r["t_start"], r["t_end"]))
    return r


def save(out: Path) -> None:
    (out / "hook-results.json").write_text(json.dumps(RESULTS, indent=1))


# ---- phases -----------------------------------------------------------------------

def phase_memory() -> None:
    limit = 16 * GiB
    res: dict[str, Any] = {}
    for mode, env in [("default", {}), ("expandable_segments", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
                      ("cudaMallocAsync", {"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"})]:
        res[mode] = child("fill", conf=config(f"mem-{mode}", memory_bytes=limit), env=env)
    res["limit_mib"] = limit >> 20
    RESULTS["memory"] = res


def phase_compute() -> None:
    res: dict[str, Any] = {}
    res["matmul_nohook"] = measured("matmul", hook=False)
    res["graph_nohook"] = measured("graph", hook=False)
    base_m, base_g = res["matmul_nohook"].get("tflops", 0), res["graph_nohook"].get("tflops", 0)
    ref = int(res["matmul_nohook"].get("sm_clock_median", 0))  # the card's full-load clock
    RESULTS["ref_clock_mhz"] = ref
    for pct in (10, 20, 30, 50, 70, 90):
        for kind, base in (("matmul", base_m), ("graph", base_g)):
            for label, clock in (("time", 0), ("work", ref)):
                if kind == "graph" and label == "time" and not FULL:
                    continue
                r = measured(kind, conf=config(f"{kind}{pct}{label}", cores=pct, ref_clock_mhz=clock))
                r["relative"] = round(r.get("tflops", 0) / base, 4) if base else None
                res[f"{kind}_{pct}_{label}"] = r
    # Utilisation over time, 1 s samples, as gpu-monitor and NVML see a 30% vGPU.
    conf = config("solo30", cores=30, ref_clock_mhz=ref)
    sampler = NvmlSampler()
    sampler.start()
    mon = monitor(TMP / "solo30.region", 9)
    res["solo30"] = child("matmul", "--seconds", "6", conf=conf)
    mon_out, _ = mon.communicate(timeout=30)
    sampler.stop.set()
    res["solo30_monitor"] = [json.loads(ln) for ln in mon_out.splitlines() if ln.startswith("{")]
    res["solo30_nvml"] = sampler.samples
    RESULTS["compute"] = res


def run_pair(name: str, ref: int) -> dict[str, Any]:
    ca = config(f"{name}-a", cores=30, core_offset=0, ref_clock_mhz=ref)
    cb = config(f"{name}-b", cores=70, core_offset=30, ref_clock_mhz=ref)
    start = time.time() + 10  # both import torch and warm up before the common start
    sampler = NvmlSampler()
    sampler.start()
    mons = [monitor(TMP / f"{name}-a.region", 14), monitor(TMP / f"{name}-b.region", 14)]
    procs = [popen_child("matmul", "--seconds", "4", "--start-at", str(start), conf=c,
                         trace=str(TMP / f"{name}-{x}.trace")) for c, x in ((ca, "a"), (cb, "b"))]
    outs = []
    for p in procs:
        try:
            o, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            o, err = p.communicate()
        lines = [ln for ln in o.splitlines() if ln.startswith("{")]
        out = json.loads(lines[-1]) if lines else {"error": "no result"}
        out["stderr_tail"] = err.strip().splitlines()[-4:]
        outs.append(out)
    mon_out = [m.communicate(timeout=60)[0] for m in mons]
    sampler.stop.set()
    a, b = float(outs[0].get("tflops", 0)), float(outs[1].get("tflops", 0))
    traces = {}
    for x in ("a", "b"):
        f = TMP / f"{name}-{x}.trace"
        traces[x] = f.read_text().splitlines()[-150:] if f.exists() else []
    return {"a_30": outs[0], "b_70": outs[1], "ratio": round(a / b, 4) if b else None,
            "monitor_a": [json.loads(ln) for ln in mon_out[0].splitlines() if ln.startswith("{")],
            "monitor_b": [json.loads(ln) for ln in mon_out[1].splitlines() if ln.startswith("{")],
            "nvml": sampler.samples, "trace": traces}


def phase_pair() -> None:
    ref = int(RESULTS.get("ref_clock_mhz", 0))
    RESULTS["pair_work"] = run_pair("pairw", ref)
    if FULL:
        RESULTS["pair_time"] = run_pair("pairt", 0)


def phase_overhead() -> None:
    res: dict[str, Any] = {}
    memcfg = dict(memory_bytes=64 * GiB)
    ref = int(RESULTS.get("ref_clock_mhz", 0))
    tiny = {"nohook": ({}, False), "hook_noconfig": ({}, True), "hook_memlimit": (memcfg, True),
            "hook_cores90": (dict(cores=90, **memcfg), True)}
    for rep in range(3 if FULL else 2):  # interleaved: host noise hits every configuration alike
        for name, (limits, hook) in tiny.items():
            conf = config(f"tiny-{name}", **limits) if limits else None
            res.setdefault(f"tiny_{name}", []).append(child("tiny", conf=conf, hook=hook).get("launches_per_s"))
    res["tf_nohook"] = child("transformer", hook=False)
    res["tf_hook_noconfig"] = child("transformer")
    res["tf_hook_memlimit"] = child("transformer", conf=config("tf-mem", **memcfg))
    # A workload that stays under its limit: about 50% busy (sleeps one step time per step), limit 70%.
    res["tf_duty_nohook"] = child("transformer", "--duty", "1.0", hook=False)
    res["tf_duty_hook_cores70"] = child("transformer", "--duty", "1.0",
                                        conf=config("tf-70", cores=70, ref_clock_mhz=ref, **memcfg))
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
        rows.append(f"matmul base {c.get('matmul_nohook', {}).get('tflops', 0):.1f} TFLOP/s "
                    f"(clock {c.get('matmul_nohook', {}).get('sm_clock_median')}), hook no config "
                    f"{c.get('matmul_hook_noconfig', {}).get('tflops', 0):.1f}, graph base "
                    f"{c.get('graph_nohook', {}).get('tflops', 0):.1f}; ref clock {RESULTS.get('ref_clock_mhz')}")
        for pct in (10, 20, 30, 50, 70, 90):
            cells = []
            for kind in ("matmul", "graph"):
                for label in ("time", "work"):
                    r = c.get(f"{kind}_{pct}_{label}", {})
                    cells.append(f"{kind}/{label} {100 * (r.get('relative') or 0):5.1f}% "
                                 f"(util {r.get('nvml_util_mean')}, {r.get('sm_clock_median')} MHz)")
            rows.append(f"limit {pct:2d}%: " + "  ".join(cells))
    for key in ("pair_work", "pair_time"):
        p = RESULTS.get(key)
        if p:
            rows.append(f"{key}: 30% {p['a_30'].get('tflops', 0):.1f} / 70% {p['b_70'].get('tflops', 0):.1f} TFLOP/s, "
                        f"ratio {p['ratio']} (3:7 = 0.4286)")
    o = RESULTS.get("overhead", {})
    for k, v in o.items():
        val = v if isinstance(v, list) else (v.get("launches_per_s") or v.get("step_ms_median"))
        rows.append(f"overhead {k:22s} {val}")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hook-bench"))
    ap.add_argument("--phases", default="memory,compute,overhead,pair")
    ap.add_argument("--quick", action="store_true", help="fewer variants (graphs in work mode only, 2 reps)")
    ap.add_argument("--ref-clock", type=int, default=0,
                    help="full-load SM clock (MHz) for phases run without the compute phase that measures it")
    args = ap.parse_args()
    if args.ref_clock:
        RESULTS["ref_clock_mhz"] = args.ref_clock
    global FULL
    FULL = not args.quick
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
FULL = True

if __name__ == "__main__":
    main()
