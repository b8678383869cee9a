"""Proof of the CUDA hook on a real GPU (issue 4): memory, compute accuracy, overhead.

    FLEXAI_HOOK_LIB=build/hook-gpu/libflexai_hook.so FLEXAI_SHIM_LIBRARY=build/hook-gpu/libflexai_shim.so \
        python bench/hook_gpu.py --out $OUT [--phases memory,compute,pair,launch_ab,tiny,transformer,transformer_under]

Each measurement is a child process (bench/hook_workload.py) under LD_PRELOAD of the hook
with a config written by flexai_node.hook.config, or without the hook for baselines. Overhead
keeps long-lived processes per configuration, pinned to GPU-local CPUs, that take turns
running blocks (interleaved()); launch_ab compares the driver and the hook in one process
(csrc/hook/bench/launch_ab.c).
Writes <out>/hook-results.json (every figure) and prints a summary table last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flexai_node.hook.config import ENV_CONFIG, HookConfig, VGPULimit, container_env, write_config  # noqa: E402

WORKLOAD = str(REPO / "bench" / "hook_workload.py")
HOOK = os.environ.get("FLEXAI_HOOK_LIB", str(REPO / "build" / "hook" / "libflexai_hook.so"))
SHIM = os.environ.get("FLEXAI_SHIM_LIBRARY", str(REPO / "build" / "hook" / "libflexai_shim.so"))
GiB = 1 << 30
TMP = Path(tempfile.mkdtemp(prefix="flexai-bench-"))
RESULTS: dict[str, Any] = {}


def gpu_uuid() -> str:
    return subprocess.run(
        ["nvidia-smi", "-i", str(GPU), "--query-gpu=uuid", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]


def config(name: str, **limit: Any) -> Path:
    """A config for one vGPU on this card; its region is private to `name`."""
    path = TMP / f"{name}.conf"
    write_config(path, HookConfig(vgpus=(VGPULimit(uuid=UUID, **limit),), region_path=str(TMP / f"{name}.region")))
    return path


def gpu_local_cpus(count: int = 4) -> list[int]:
    """`count` CPUs of the GPU's NUMA node (all of them if sysfs does not say)."""
    try:
        bus = subprocess.run(
            ["nvidia-smi", "-i", str(GPU), "--query-gpu=pci.bus_id", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.split()
    except OSError:
        bus = []
    cpus: list[int] = []
    if bus:
        # nvidia-smi prints 00000000:19:00.0; sysfs names it 0000:19:00.0.
        f = Path("/sys/bus/pci/devices") / bus[0].lower()[-12:] / "local_cpulist"
        if f.exists():
            for part in f.read_text().strip().split(","):
                lo, _, hi = part.partition("-")
                cpus.extend(range(int(lo), int(hi or lo) + 1))
    allowed = sorted(os.sched_getaffinity(0))
    picked = [c for c in cpus if c in allowed] or allowed
    return picked[1 : count + 1] if len(picked) > count else picked  # leave the first to the system


def workload_env(hook: bool, conf: Path | None = None) -> dict[str, str]:
    """This environment without any hook of ours; with ``hook``, the hook preloaded and
    pointed at ``conf`` (None: loaded without a config)."""
    e = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ENV_CONFIG)}
    if hook:
        e.update(container_env(str(conf), HOOK) if conf is not None else {"LD_PRELOAD": HOOK})
    return e


def child(
    kind: str,
    *args: str,
    conf: Path | None = None,
    hook: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cpus: list[int] | None = None,
) -> dict[str, Any]:
    e = workload_env(hook, conf)
    if hook:
        e["FLEXAI_DEBUG"] = "1"  # the hook prints its lookup and window statistics at exit
    e.update(env or {})
    t0 = time.time()
    try:
        r = subprocess.run(
            [sys.executable, WORKLOAD, kind, *args],
            env=e,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    out: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": f"rc={r.returncode}"}
    out["wall_s"] = round(time.time() - t0, 1)
    if r.stderr.strip():
        out["stderr_tail"] = r.stderr.strip().splitlines()[-4:]
    return out


def popen_child(kind: str, *args: str, conf: Path, trace: str) -> subprocess.Popen[str]:
    e = workload_env(True, conf)
    e.update(FLEXAI_DEBUG="1", FLEXAI_TRACE=trace)
    return subprocess.Popen(
        [sys.executable, WORKLOAD, kind, *args], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def monitor(region: Path, samples: int) -> subprocess.Popen[str]:
    e = dict(os.environ, PYTHONPATH=str(REPO))
    e.pop("LD_PRELOAD", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flexai_node.hook.monitor",
            "-p",
            "1",
            "-n",
            str(samples),
            "-o",
            "json",
            "--region",
            str(region),
            "--shim",
            SHIM,
        ],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class NvmlSampler(threading.Thread):
    """Card utilisation and SM clock (NVML), as nvidia-smi would show them, every `interval` s."""

    def __init__(self, interval: float = 1.0, index: int | None = None) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.index = GPU if index is None else index  # NVML's index of the card
        self.samples: list[tuple[float, int, int]] = []  # (unix time, util %, SM MHz)
        self.stop = threading.Event()

    def run(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        while not self.stop.wait(self.interval):
            self.samples.append(
                (
                    round(time.time(), 2),
                    pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
                    pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                )
            )
        pynvml.nvmlShutdown()

    def during(self, t0: float, t1: float) -> dict[str, float]:
        """Mean utilisation and median busy clock over [t0, t1] (a run's measured part)."""
        inside = [s for s in self.samples if t0 + 0.3 <= s[0] <= t1]
        if not inside:
            return {}
        clocks = sorted(s[2] for s in inside if s[1] > 0) or [0]
        return {
            "nvml_util_mean": round(sum(s[1] for s in inside) / len(inside), 1),
            "sm_clock_median": clocks[len(clocks) // 2],
            "nvml_samples": len(inside),
        }


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
    for mode, env in [
        ("default", {}),
        ("expandable_segments", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
        ("cudaMallocAsync", {"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}),
    ]:
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
    for pct in LIMITS:
        for kind, base in (("matmul", base_m), ("graph", base_g)):
            if kind not in KINDS:
                continue
            for label, clock in (("time", 0), ("work", ref)):
                if label not in MODES or (kind == "graph" and label == "time" and not FULL):
                    continue
                trace = TMP / f"{kind}{pct}{label}.trace"
                r = measured(
                    kind,
                    "--seconds",
                    str(SECONDS),
                    env={"FLEXAI_TRACE": str(trace)},
                    conf=config(f"{kind}{pct}{label}", cores=pct, ref_clock_mhz=clock),
                )
                r["trace_tail"] = trace.read_text().splitlines()[-400:] if trace.exists() else []
                r["relative"] = round(r.get("tflops", 0) / base, 4) if base else None
                res[f"{kind}_{pct}_{label}"] = r
    RESULTS["compute"] = res
    if "matmul" not in KINDS:
        return
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
    procs = [
        popen_child("matmul", "--seconds", "4", "--start-at", str(start), conf=c, trace=str(TMP / f"{name}-{x}.trace"))
        for c, x in ((ca, "a"), (cb, "b"))
    ]
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
    return {
        "a_30": outs[0],
        "b_70": outs[1],
        "ratio": round(a / b, 4) if b else None,
        "monitor_a": [json.loads(ln) for ln in mon_out[0].splitlines() if ln.startswith("{")],
        "monitor_b": [json.loads(ln) for ln in mon_out[1].splitlines() if ln.startswith("{")],
        "nvml": sampler.samples,
        "trace": traces,
    }


def phase_pair() -> None:
    ref = int(RESULTS.get("ref_clock_mhz", 0))
    RESULTS["pair_work"] = run_pair("pairw", ref)
    if FULL:
        RESULTS["pair_time"] = run_pair("pairt", 0)


def no_aslr() -> None:
    """In the child before exec: no address-space randomisation (personality
    ADDR_NO_RANDOMIZE), so every worker gets the same layout and the same cache aliasing."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).personality(0x0040000)


class Worker:
    """One long-lived bench/hook_workload.py serve process: builds its workload once, then runs a
    block each time it is asked. It starts on any CPU (start-up is the slow part) and is pinned
    once ready."""

    def __init__(
        self, serve: str, args: tuple[str, ...], limits: dict[str, Any], hook: bool, name: str, fixed_layout: bool
    ) -> None:
        e = workload_env(hook, config(name, **limits) if hook and limits else None)
        if fixed_layout:
            e["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every worker
        self.err = TMP / f"{name}.err"  # read back only if the worker dies
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, WORKLOAD, "serve", "--serve", serve, *args],
                env=e,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                preexec_fn=no_aslr if fixed_layout else None,
            )

    def pin(self, cpus: list[int]) -> None:
        """The main thread (it launches) alone on the first CPU, the rest on the others."""
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus[:1] if int(tid) == self.proc.pid or len(cpus) == 1 else cpus[1:])
            except OSError:  # a thread that just ended
                pass

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return dict(json.loads(line))
        tail = self.err.read_text(errors="replace").strip().splitlines()[-3:] if self.err.exists() else []
        raise RuntimeError(f"worker {self.proc.pid} ended (rc {self.proc.wait()}): {' | '.join(tail)[-600:]}")

    def block(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("block\n")
        self.proc.stdin.flush()
        return float(self.read()["value"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


Configs = dict[str, tuple[tuple[str, ...], dict[str, Any], bool]]  # name: (workload args, limits, hook)


Wave = tuple[dict[str, list[list[float]]], dict[str, list[float]]]


def wave(configs: Configs, serve: str, per_config: int, rounds: int, tag: str) -> Wave:
    """`per_config` live workers per configuration take turns, one block each per round, in an
    order rotated every round. Returns per configuration each worker's blocks divided by its
    round's mean over the first configuration's workers (time drift hits both sides of a
    ratio alike), and each worker's median raw figure."""
    cpus = gpu_local_cpus()
    names = list(configs)
    workers = {
        n: [
            Worker(serve, *configs[n], name=f"{serve}-{n}-{tag}-{i}", fixed_layout=FIXED_LAYOUT)
            for i in range(per_config)
        ]
        for n in names
    }
    try:
        for ws in workers.values():
            for w in ws:
                w.read()  # ready: built and warmed up
                w.pin(cpus)
        flat = [(n, i) for n in names for i in range(per_config)]
        raw: dict[tuple[str, int], list[float]] = {key: [] for key in flat}
        for r in range(rounds):
            k = (r * 7) % len(flat)
            for n, i in flat[k:] + flat[:k]:
                raw[(n, i)].append(workers[n][i].block())
    finally:
        for ws in workers.values():
            for w in ws:
                w.close()
    ref = [statistics.mean(raw[(names[0], i)][r] for i in range(per_config)) for r in range(rounds)]
    relative = {n: [[v / b for v, b in zip(raw[(n, i)], ref, strict=True)] for i in range(per_config)] for n in names}
    return relative, {n: [statistics.median(raw[(n, i)]) for i in range(per_config)] for n in names}


def interleaved(configs: Configs, serve: str, procs: int = 2) -> dict[str, Any]:
    """Hook against no hook, with time drift and the process effect taken into account.

    A process keeps its own speed for life (on the H200 VM two processes of one configuration
    differed by 4-17%), so the unit of comparison is the process: `procs` processes per
    configuration, run in waves of at most WAVE per configuration (GPU memory). A process's
    figure is the median of its blocks relative to its rounds' first configuration; a
    configuration's ratio is the mean of its processes' figures over that of the first
    configuration's, with a bootstrap 95% interval resampling processes on both sides. A
    second no-hook configuration (an A/A test) shows what the method calls a difference
    when there is none."""
    import random

    configs = {n: c for n, c in configs.items() if not CONFIGS or n in CONFIGS or n == "nohook"}
    names = list(configs)
    per_proc: dict[str, list[float]] = {n: [] for n in names}
    medians: dict[str, list[float]] = {n: [] for n in names}
    left, w = procs, 0
    while left > 0:
        k = min(WAVE, left)
        relative, raw = wave(configs, serve, k, ROUNDS, f"w{w}")
        for n in names:
            per_proc[n] += [statistics.median(vals) for vals in relative[n]]
            medians[n] += raw[n]
        left, w = left - k, w + 1
    rng = random.Random(0)
    base = per_proc[names[0]]
    res: dict[str, Any] = {
        "cpus": gpu_local_cpus(),
        "rounds_per_wave": ROUNDS,
        "processes_per_config": procs,
        "wave": WAVE,
        "fixed_layout": FIXED_LAYOUT,
    }
    for n in names:
        mine = per_proc[n]
        boot = sorted(
            statistics.mean(rng.choices(mine, k=len(mine))) / statistics.mean(rng.choices(base, k=len(base)))
            for _ in range(4000)
        )
        res[n] = {
            "median": round(statistics.median(medians[n]), 3),
            "ratio_mean": round(statistics.mean(mine) / statistics.mean(base), 4),
            "ratio_mean_ci95": [round(boot[100], 4), round(boot[3899], 4)],
            "process_sd": round(statistics.stdev(mine), 4) if len(mine) > 1 else 0.0,
            "process_medians": [round(x, 3) for x in medians[n]],
        }
    return res


def phase_tiny() -> None:
    """Launch rate of tiny PyTorch kernels, hook vs none (higher is better)."""
    memcfg = dict(memory_bytes=64 * GiB)
    blocks = ("--launches", "10000")
    configs: Configs = {
        "nohook": (blocks, {}, False),
        "nohook_again": (blocks, {}, False),
        "hook_noconfig": (blocks, {}, True),
        "hook_cores90": (blocks, dict(cores=90, **memcfg), True),
    }
    if FULL:
        configs["hook_memlimit"] = (blocks, memcfg, True)
    RESULTS["overhead_tiny"] = interleaved(configs, "tiny", PROCS)


def phase_transformer() -> None:
    """Training step time alone and unlimited (lower is better)."""
    steps = ("--steps", "8")
    configs: Configs = {
        "nohook": (steps, {}, False),
        "nohook_again": (steps, {}, False),
        "hook_noconfig": (steps, {}, True),
    }
    if FULL:
        configs["hook_memlimit"] = (steps, dict(memory_bytes=64 * GiB), True)
    RESULTS["overhead_transformer"] = interleaved(configs, "transformer", PROCS)


def phase_transformer_under() -> None:
    """Step time ~50% busy (sleeping one step time after each step) under a 70% limit."""
    ref = int(RESULTS.get("ref_clock_mhz", 0))
    duty = ("--steps", "8", "--duty", "1.0")
    configs: Configs = {
        "nohook": (duty, {}, False),
        "hook_cores70": (duty, dict(cores=70, ref_clock_mhz=ref, memory_bytes=64 * GiB), True),
    }
    RESULTS["overhead_transformer_under_limit"] = interleaved(configs, "transformer", PROCS)


def phase_launch_ab() -> None:
    """The hook's cost per launch in one process (csrc/hook/bench/launch_ab.c): driver vs hook."""
    exe = str(Path(HOOK).parent / "hook_launch_ab")
    cpus = gpu_local_cpus()
    memcfg = dict(memory_bytes=64 * GiB)
    res: dict[str, Any] = {"cpus": cpus}
    # gap 0: launches back to back (the GPU's queue sets the pace); gap 5 us: a framework's
    # per-launch work, the GPU well under the 90% limit.
    for name, limits, gap in (
        ("noconfig", {}, 0),
        ("memlimit", memcfg, 0),
        ("cores90", dict(cores=90, **memcfg), 0),
        ("noconfig_gap5us", {}, 5000),
        ("cores90_gap5us", dict(cores=90, **memcfg), 5000),
    ):
        e = workload_env(False)  # launch_ab dlopens the hook itself
        if limits:
            e[ENV_CONFIG] = str(config(f"ab-{name}", **limits))
        r = subprocess.run(
            [exe, HOOK, "20000", "60", str(gap)],
            env=e,
            capture_output=True,
            text=True,
            timeout=200,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        res[name] = json.loads(lines[-1]) if lines else {"error": f"rc={r.returncode}", "stderr": r.stderr[-400:]}
    RESULTS["launch_ab"] = res


def summary() -> str:
    rows = []
    m = RESULTS.get("memory", {})
    for mode in ("default", "expandable_segments", "cudaMallocAsync") if m else ():
        r = m.get(mode, {})
        rows.append(
            f"memory {mode:20s} err={r.get('error')} allocated={r.get('allocated_mib')}MiB "
            f"mem_get_info={r.get('mem_get_info_before_mib')} smi='{r.get('nvidia_smi')}' nvml={r.get('nvml')}"
        )
    c = RESULTS.get("compute", {})
    if c:
        rows.append(
            f"matmul base {c.get('matmul_nohook', {}).get('tflops', 0):.1f} TFLOP/s "
            f"(clock {c.get('matmul_nohook', {}).get('sm_clock_median')}), hook no config "
            f"{c.get('matmul_hook_noconfig', {}).get('tflops', 0):.1f}, graph base "
            f"{c.get('graph_nohook', {}).get('tflops', 0):.1f}; ref clock {RESULTS.get('ref_clock_mhz')}"
        )
        for pct in LIMITS:
            cells = []
            for kind in ("matmul", "graph"):
                for label in ("time", "work"):
                    r = c.get(f"{kind}_{pct}_{label}", {})
                    cells.append(
                        f"{kind}/{label} {100 * (r.get('relative') or 0):5.1f}% "
                        f"(util {r.get('nvml_util_mean')}, {r.get('sm_clock_median')} MHz)"
                    )
            rows.append(f"limit {pct:2d}%: " + "  ".join(cells))
    for key in ("pair_work", "pair_time"):
        p = RESULTS.get(key)
        if p:
            rows.append(
                f"{key}: 30% {p['a_30'].get('tflops', 0):.1f} / 70% {p['b_70'].get('tflops', 0):.1f} TFLOP/s, "
                f"ratio {p['ratio']} (3:7 = 0.4286)"
            )
    for key in ("overhead_tiny", "overhead_transformer", "overhead_transformer_under_limit"):
        for name, v in RESULTS.get(key, {}).items():
            if isinstance(v, dict):
                rows.append(
                    f"{key} {name:14s} median {v['median']:.2f} ratio to no hook {v['ratio_mean']} "
                    f"(95% {v['ratio_mean_ci95']}), process sd {v['process_sd']}; "
                    f"per process {v['process_medians']}"
                )
    for name, v in RESULTS.get("launch_ab", {}).items():
        if isinstance(v, dict):
            rows.append(f"launch_ab {name:16s} {json.dumps(v)}")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hook-bench"))
    ap.add_argument(
        "--phases",
        default="memory,compute,pair,overhead",
        help="comma-separated: memory, compute, pair, launch_ab, tiny, transformer, "
        "transformer_under (overhead = the last four)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer variants (graphs in work mode only, 2 reps)")
    ap.add_argument(
        "--ref-clock",
        type=int,
        default=0,
        help="full-load SM clock (MHz) for phases run without the compute phase that measures it",
    )
    ap.add_argument("--kinds", default="matmul,graph", help="compute phase: workloads")
    ap.add_argument("--limits", default="10,20,30,50,70,90", help="compute phase: core limits, percent")
    ap.add_argument(
        "--modes",
        default="time,work",
        help="compute phase: time (share of time) and/or work (share of throughput, ref_clock_mhz)",
    )
    ap.add_argument("--seconds", type=float, default=2.5, help="compute phase: timed part of each run")
    ap.add_argument("--gpu", type=int, default=0, help="the card to use (nvidia-smi's index)")
    ap.add_argument(
        "--procs",
        type=int,
        default=2,
        help="overhead phases: long-lived processes per configuration (each keeps its own speed "
        "for life: the process effect shrinks only as 1/sqrt(procs))",
    )
    ap.add_argument("--rounds", type=int, default=8, help="overhead phases: blocks per process")
    ap.add_argument(
        "--configs", default="", help="overhead phases: only these configurations (comma-separated; nohook always runs)"
    )
    ap.add_argument("--wave", type=int, default=8, help="overhead phases: processes per configuration alive at once")
    ap.add_argument(
        "--random-layout",
        action="store_true",
        help="overhead phases: keep address-space and hash randomisation (default: fixed in every worker)",
    )
    args = ap.parse_args()
    global GPU, PROCS, WAVE, FIXED_LAYOUT, ROUNDS, CONFIGS
    ROUNDS = args.rounds
    CONFIGS = tuple(c for c in args.configs.split(",") if c)
    GPU = args.gpu
    PROCS = args.procs
    WAVE = args.wave
    FIXED_LAYOUT = not args.random_layout
    os.environ.update(CUDA_VISIBLE_DEVICES=str(GPU), CUDA_DEVICE_ORDER="PCI_BUS_ID")  # children see only it
    global KINDS, LIMITS, MODES, SECONDS
    MODES = tuple(args.modes.split(","))
    SECONDS = args.seconds
    KINDS = tuple(args.kinds.split(","))
    LIMITS = tuple(int(x) for x in args.limits.split(","))
    if args.ref_clock:
        RESULTS["ref_clock_mhz"] = args.ref_clock
    global FULL
    FULL = not args.quick
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    global UUID
    UUID = gpu_uuid()
    RESULTS["gpu_uuid"] = UUID
    RESULTS["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "-i", str(GPU), "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    phases = {
        "memory": phase_memory,
        "compute": phase_compute,
        "pair": phase_pair,
        "launch_ab": phase_launch_ab,
        "tiny": phase_tiny,
        "transformer": phase_transformer,
        "transformer_under": phase_transformer_under,
    }
    wanted = args.phases.replace("overhead", "launch_ab,tiny,transformer,transformer_under").split(",")
    for name in wanted:
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
GPU = 0
PROCS = 2
WAVE = 8
ROUNDS = 8
CONFIGS: tuple[str, ...] = ()
FIXED_LAYOUT = True
FULL = True
KINDS: tuple[str, ...] = ("matmul", "graph")
LIMITS: tuple[int, ...] = (10, 20, 30, 50, 70, 90)
MODES: tuple[str, ...] = ("time", "work")
SECONDS = 2.5

if __name__ == "__main__":
    main()
