"""Issue 23 on a real GPU: the hook under PyTorch, Triton, JAX, CuPy and transformers, with the
configs exactly as the node agent writes them by default (``--ref-clock-mhz auto``: the agent
measures the card's full-load clock itself through the shim).

    python3 tests/gpu/frameworks.py --out $OUT [--phases calibrate,memory,workers,fork,compute,pair,
        frameworks,mixed,overhead] [--seconds 2.5] [--deadline 570]

Every measurement is a child process (tests/gpu/fw_workload.py), preloaded with the hook and a
config from flexai_node.hook.files.HookConfigFiles (the device plugin's own writer) or without
the hook for the unlimited rates. NVML is sampled beside each run (utilisation, SM clock,
power). Writes <out>/frameworks.json (every figure), <out>/frameworks.md (the verdicts) and
prints the verdicts last. Phases past --deadline seconds are skipped, and say so.
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
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from flexai_core.model import Slice  # noqa: E402
from flexai_node.hook import config as hc  # noqa: E402
from flexai_node.hook.calibration import RefClocks, parse_mode  # noqa: E402
from flexai_node.hook.files import CONFIG_NAME, HookConfigFiles  # noqa: E402
from flexai_node.hook.shim import Calibration, CalibrationError, HookShim  # noqa: E402

WORKLOAD = str(REPO / "tests" / "gpu" / "fw_workload.py")
BUILD = Path(os.environ.get("FLEXAI_HOOK_BUILD", str(REPO / "build" / "hook-gpu")))
HOOK = str(BUILD / "libflexai_hook.so")
SHIM = str(BUILD / "libflexai_shim.so")
TMP = Path(tempfile.mkdtemp(prefix="flexai-fw-"))
GiB_MIB = 1024
R: dict[str, Any] = {}
T0 = time.time()


# ---- configs as the agent writes them ---------------------------------------------------


class Agent:
    """The node agent's config writer with its default ref-clock mode, on this card."""

    def __init__(self, uuid: str, mode: str, calibration: Calibration | None) -> None:
        self.uuid = uuid
        measure = (lambda _u: calibration) if calibration is not None else None
        self.clocks = RefClocks(parse_mode(mode), TMP / "ref-clocks.json", measure)
        self.clocks.calibrate_missing([uuid])

    def config(self, name: str, cores: int, memory_gib: float, pod: str | None = None) -> Path:
        """vgpu.conf of container `name` (in pod dir `pod`: containers of one root share a card's
        windows, as on a node). The region path is rewritten from the container's view to this
        host's, the only change."""
        root = TMP / "agent" / (pod or name)
        files = HookConfigFiles(root, Path(HOOK), self.clocks.figures)
        host_dir = root / f"uid-{name}" / "main"
        host_dir.mkdir(parents=True, exist_ok=True)
        files.prepare(host_dir, (Slice("main", 0, self.uuid, cores, int(memory_gib * GiB_MIB)),))
        path = host_dir / CONFIG_NAME
        cfg = hc.parse(path.read_text())
        hc.write_config(path, replace(cfg, region_path=str(files.region_file(host_dir))))
        return path


def region_of(conf: Path) -> str:
    return hc.parse(conf.read_text()).region_path


# ---- children and NVML -------------------------------------------------------------------


class Sampler(threading.Thread):
    """NVML every 0.1 s: utilisation %, SM clock MHz, power W (NVML's average, and instant where
    the driver has it)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int, int, float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        while not self.stop.wait(0.1):
            try:
                inst = pynvml.nvmlDeviceGetFieldValues(h, [186])[0]  # NVML_FI_DEV_POWER_INSTANT
                p_inst = inst.value.uiVal / 1e3 if inst.nvmlReturn == 0 else -1.0
            except Exception:
                p_inst = -1.0
            self.samples.append(
                (
                    time.time(),
                    pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
                    pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                    pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
                    p_inst,
                )
            )
        pynvml.nvmlShutdown()

    def during(self, t0: float, t1: float) -> dict[str, float]:
        inside = [s for s in self.samples if t0 + 0.2 <= s[0] <= t1]
        if not inside:
            return {}

        def med(xs: list[float]) -> float:
            xs = sorted(xs)
            return round(xs[len(xs) // 2], 1)

        return {
            "util": round(sum(s[1] for s in inside) / len(inside), 1),
            "clock": med([s[2] for s in inside]),
            "power_w": med([s[3] for s in inside]),
            "power_inst_w": med([s[4] for s in inside]),
            "nvml_n": len(inside),
        }


def pinned(cpus: list[int]) -> Callable[[], None]:
    """preexec_fn: the child on these CPUs only (host-bound workloads such as the Llama decode
    otherwise differ from one process to the next with where the scheduler puts them)."""
    return lambda: os.sched_setaffinity(0, cpus) if cpus else None


def env_for(conf: Path | None, hook: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", hc.ENV_CONFIG)}
    if hook:
        e["LD_PRELOAD"] = HOOK
        if conf is not None:
            e[hc.ENV_CONFIG] = str(conf)
    e.update(extra or {})
    return e


def child(
    kind: str,
    *args: str,
    conf: Path | None = None,
    hook: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    sample: bool = True,
) -> dict[str, Any]:
    """Run one workload; its JSON, its wall time, the tail of its stderr, NVML over its timed part."""
    sampler = Sampler() if sample else None
    if sampler:
        sampler.start()
    t0 = time.time()
    try:
        r = subprocess.run(
            [sys.executable, WORKLOAD, kind, *args],
            env=env_for(conf, hook, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=pinned(CPUS[0] + CPUS[1]),
        )
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        out: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": f"no result, rc={r.returncode}"}
        out["rc"] = r.returncode
        err = [ln for ln in r.stderr.strip().splitlines() if "flexai" in ln.lower() or "error" in ln.lower()]
        if err:
            out["stderr"] = err[-5:]
    except subprocess.TimeoutExpired:
        out = {"error": f"timeout after {timeout}s (hang?)", "rc": None}
    out["wall_s"] = round(time.time() - t0, 1)
    if sampler:
        sampler.stop.set()
        sampler.join()
        if "t_start" in out:
            out["nvml"] = sampler.during(out["t_start"], out["t_end"])
    return out


def started(
    kind: str, *args: str, conf: Path, cpus: list[int], env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKLOAD, kind, *args],
        env=env_for(conf, True, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(cpus),
    )


def collect(p: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        o, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        o, _ = p.communicate()
    lines = [ln for ln in o.splitlines() if ln.startswith("{")]
    return dict(json.loads(lines[-1])) if lines else {"error": f"no result, rc={p.returncode}"}


def save(out: Path) -> None:
    (out / "frameworks.json").write_text(json.dumps(R, indent=1, default=str))


# ---- phases ------------------------------------------------------------------------------


def phase_calibrate(a: argparse.Namespace) -> None:
    shim = HookShim(SHIM)
    R["compute_apps_before"] = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,name,used_memory", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    cal: Calibration | None = None
    for attempt in range(3):
        try:
            cal = shim.calibrate(UUID, burst_ms=a.burst_ms)
            R["calibration"] = cal.__dict__
            break
        except CalibrationError as e:
            R[f"calibration_try{attempt}"] = str(e)
            time.sleep(2)
    if cal is not None:
        try:
            R["calibration_repeat"] = shim.calibrate(UUID, burst_ms=a.burst_ms).__dict__  # how repeatable
        except CalibrationError as e:
            R["calibration_repeat"] = {"error": str(e)}
    global AGENT
    AGENT = Agent(UUID, a.ref_mode, cal)
    R["ref_clock_mhz"] = AGENT.clocks.get(UUID)
    R["figures_written"] = AGENT.clocks.figures(UUID).__dict__
    R["ref_mode"] = a.ref_mode


def seconds_for(kind: str, a: argparse.Namespace) -> float:
    """A Llama generate() call takes 0.2-0.8 s: a longer run holds more of them."""
    return float(max(a.seconds, a.llama_seconds) if kind == "llama" else a.seconds)


def baseline(kind: str, a: argparse.Namespace, timeout: float = 180) -> float:
    """The unlimited rate: one process, or for the Llama the mean of two (one process differed
    from the next by 8-11% in earlier runs)."""
    key = f"base_{kind}"
    env = {"TORCHINDUCTOR_CACHE_DIR": str(TMP / "inductor")}
    if key not in R:
        R[key] = child(kind, "--seconds", str(seconds_for(kind, a)), hook=False, timeout=timeout, env=env)
        if kind == "llama":
            R[f"{key}_again"] = child(
                kind, "--seconds", str(seconds_for(kind, a)), hook=False, timeout=timeout, env=env
            )
    rates = [float(R[k].get("rate", 0) or 0) for k in (key, f"{key}_again") if k in R]
    rates = [r for r in rates if r > 0]
    return sum(rates) / len(rates) if rates else 0.0


def limited(kind: str, pct: int, a: argparse.Namespace, mode: str = "", timeout: float = 180) -> dict[str, Any]:
    agent = AGENT if not mode else Agent(UUID, mode, None)
    conf = agent.config(f"{kind}{pct}{mode}", cores=pct, memory_gib=24)
    trace = TMP / f"{kind}{pct}{mode}.trace"
    r = child(
        kind,
        "--seconds",
        str(seconds_for(kind, a)),
        conf=conf,
        timeout=timeout,
        env={"FLEXAI_TRACE": str(trace), "FLEXAI_DEBUG": "1", "TORCHINDUCTOR_CACHE_DIR": str(TMP / "inductor")},
    )
    base = baseline(kind, a)
    r["relative_pct"] = round(100 * float(r.get("rate", 0) or 0) / base, 1) if base else None
    if trace.exists():  # duty, busy power and speed-up the hook booked (D, P, C), the tail only
        lines = trace.read_text().splitlines()
        r["trace_dpc"] = [ln for ln in lines if " D " in ln or " C " in ln or " P " in ln][-15:]
        if kind == "llama":
            r["trace_tail"] = lines[-60:]
    r.pop("trace", None)
    return r


def phase_compute(a: argparse.Namespace) -> None:
    res: dict[str, Any] = R.setdefault("compute", {})
    for kind in a.kinds.split(","):
        baseline(kind, a)
        for pct in a.limits:
            res[f"{kind}_{pct}"] = limited(kind, pct, a)
            save(OUTDIR)
    for spec in filter(None, a.time_mode.split(",")):  # share-of-time runs beside, for comparison
        kind, pct = spec.split(":")
        res[f"{kind}_{pct}_off"] = limited(kind, int(pct), a, mode="off")


def pair(kind_a: str, kind_b: str, a: argparse.Namespace, name: str) -> dict[str, Any]:
    """kind_a at 30% and kind_b at 70% on the card at once, windows from the agent's writer."""
    ca = AGENT.config(f"{name}-a", cores=30, memory_gib=24, pod=name)
    cb = AGENT.config(f"{name}-b", cores=70, memory_gib=24, pod=name)
    start = time.time() + a.pair_lead
    sampler = Sampler()
    sampler.start()
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".5"}
    pa = started(kind_a, "--seconds", "4", "--start-at", str(start), conf=ca, cpus=CPUS[0], env=env)
    pb = started(kind_b, "--seconds", "4", "--start-at", str(start), conf=cb, cpus=CPUS[1], env=env)
    oa, ob = collect(pa, 120), collect(pb, 120)
    sampler.stop.set()
    sampler.join()
    ba, bb = baseline(kind_a, a), baseline(kind_b, a)
    rel_a = float(oa.get("rate", 0) or 0) / ba if ba else 0.0
    rel_b = float(ob.get("rate", 0) or 0) / bb if bb else 0.0
    return {
        "a": {k: oa.get(k) for k in ("rate", "unit", "t_start", "t_end", "error")},
        "b": {k: ob.get(k) for k in ("rate", "unit", "t_start", "t_end", "error")},
        "offsets": [hc.parse(ca.read_text()).vgpus[0].core_offset, hc.parse(cb.read_text()).vgpus[0].core_offset],
        "rel_a_pct": round(100 * rel_a, 1),
        "rel_b_pct": round(100 * rel_b, 1),
        "ratio": round(rel_a / rel_b, 4) if rel_b else None,
        "nvml": sampler.during(float(oa.get("t_start", 0) or 0), float(oa.get("t_end", 0) or 0)),
    }


def phase_pair(a: argparse.Namespace) -> None:
    R["pair_torch"] = pair("matmul", "matmul", a, "pair")


def phase_mixed(a: argparse.Namespace) -> None:
    R["pair_mixed"] = pair("jax", "matmul", a, "mixed")


def phase_frameworks(a: argparse.Namespace) -> None:
    res: dict[str, Any] = R.setdefault("frameworks", {})
    for kind in a.fw_kinds.split(","):
        t = 400 if kind == "llama" else 180
        baseline(kind, a, timeout=t)
        for pct in a.fw_limits:
            res[f"{kind}_{pct}"] = limited(kind, pct, a, timeout=t)
            save(OUTDIR)


def phase_memory(a: argparse.Namespace) -> None:
    res: dict[str, Any] = R.setdefault("memory", {"slice_mib": a.slice_gib * GiB_MIB})

    def conf(name: str) -> Path:
        return AGENT.config(name, cores=0, memory_gib=a.slice_gib)

    res["torch"] = child("mem_torch", conf=conf("mem-torch"), timeout=90, sample=False)
    res["jax_prealloc"] = child("mem_jax", conf=conf("mem-jax"), timeout=90, sample=False)
    res["jax_no_prealloc"] = child(
        "mem_jax", conf=conf("mem-jax-np"), timeout=90, sample=False, env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    )
    # XLA's own limit (75%) out of the way: the hook must refuse on JAX's allocation path.
    res["jax_fraction_1"] = child(
        "mem_jax",
        conf=conf("mem-jax-f1"),
        timeout=90,
        sample=False,
        env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": "1.0"},
    )
    res["cupy"] = child("mem_cupy", conf=conf("mem-cupy"), timeout=90, sample=False)


def phase_workers(a: argparse.Namespace) -> None:
    conf = AGENT.config("workers", cores=0, memory_gib=a.workers_gib)
    R["workers"] = child(
        "workers",
        conf=conf,
        timeout=180,
        sample=False,
        env={"FW_REGION": region_of(conf), "FW_REPO": str(REPO), "FLEXAI_SHIM_LIBRARY": SHIM},
    )
    R["workers"]["slice_mib"] = a.workers_gib * GiB_MIB


def phase_fork(a: argparse.Namespace) -> None:
    conf = AGENT.config("fork", cores=0, memory_gib=a.slice_gib)
    R["fork"] = child(
        "fork", "--hold-mib", "1024", "--slice-mib", str(a.slice_gib * GiB_MIB), conf=conf, timeout=180, sample=False
    )
    R["fork"]["slice_mib"] = a.slice_gib * GiB_MIB


def phase_overhead(a: argparse.Namespace) -> None:
    import hook_gpu as hg

    hg.WORKLOAD = WORKLOAD
    hg.HOOK = HOOK
    hg.UUID, hg.GPU, hg.TMP = UUID, 0, TMP
    hg.ROUNDS, hg.CONFIGS, hg.FIXED_LAYOUT = a.overhead_rounds, (), True
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # many JAX workers share the card
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(TMP / "inductor")
    res: dict[str, Any] = R.setdefault("overhead", {})
    for name in a.overhead_kinds.split(","):
        if time.time() - T0 > a.deadline:
            res[name] = {"skipped": "deadline"}
            continue
        args: tuple[str, ...] = ("--repeat", "3") if name in ("jax", "cupy", "triton") else ()
        configs: hg.Configs = {
            "nohook": (args, {}, False),
            "nohook_again": (args, {}, False),
            "hook_noconfig": (args, {}, True),
        }
        # Processes alive at once: 3 configurations x WAVE. A training transformer holds ~5 GiB,
        # a Llama ~4 GiB: 18 of them did not fit an H100's 80 GiB (the workers died, run 1).
        hg.WAVE = min(a.overhead_procs, HEAVY_WAVE) if name in ("transformer", "llama") else a.overhead_procs
        try:
            res[name] = hg.interleaved(configs, name, a.overhead_procs)
        except Exception as e:
            res[name] = {"error": repr(e)[:300]}
        save(OUTDIR)


# ---- verdicts ----------------------------------------------------------------------------


def verdicts() -> list[str]:
    card = R.get("card", "?")
    rows = [
        f"# Issue 23 on {card} ({R.get('driver', '')}), ref clock mode {R.get('ref_mode')}",
        "",
        f"calibration: {json.dumps(R.get('calibration'))}; repeat: {json.dumps(R.get('calibration_repeat'))}",
        "",
        f"written to every limited vGPU's config: {R.get('figures_written')}",
        "",
        "| check | figure | verdict |",
        "| --- | --- | --- |",
    ]

    def row(check: str, figure: str, ok: bool | None) -> None:
        rows.append(f"| {check} | {figure} | {'met' if ok else ('MISS' if ok is not None else 'shown')} |")

    def within_3(section: str, kind: str, limits: Sequence[int]) -> tuple[list[str], bool]:
        """Each limit's delivered share of the unlimited rate, and whether all are within 3 points."""
        cells, ok = [], True
        for pct in limits:
            r = R.get(section, {}).get(f"{kind}_{pct}")
            if r is None:
                continue
            v = r.get("relative_pct")
            cells.append(f"{pct}:{v}")
            ok = ok and v is not None and abs(v - pct) <= 3
        return cells, ok

    for kind in ("matmul", "graph", "elementwise"):
        cells, ok = within_3("compute", kind, LIMITS)
        if cells:
            base = R.get(f"base_{kind}", {})
            row(
                f"compute {kind} (base {base.get('rate', 0):.1f} {base.get('unit', '')}, clock "
                f"{base.get('nvml', {}).get('clock')})",
                " ".join(cells),
                ok,
            )
    for key, r in R.get("compute", {}).items():
        if key.endswith("_off"):
            row(f"compute {key} (share of time, for comparison)", str(r.get("relative_pct")), None)
    for name in ("pair_torch", "pair_mixed"):
        p = R.get(name)
        if p:
            row(
                f"{name} 30%+70% ratio (0.386-0.471)",
                f"{p['ratio']} ({p['rel_a_pct']}% / {p['rel_b_pct']}%, offsets {p['offsets']})",
                p["ratio"] is not None and abs(p["ratio"] / (3 / 7) - 1) <= 0.10,
            )
    for kind in ("triton", "jax", "llama"):
        cells, ok = within_3("frameworks", kind, FW_LIMITS)
        if cells:
            base = R.get(f"base_{kind}", {})
            again = R.get(f"base_{kind}_again", {}).get("rate")
            row(
                f"{kind} (base {base.get('rate', 0):.1f} {base.get('unit', '')}"
                f"{f'; a second unlimited process {again:.1f}' if again else ''})",
                " ".join(cells),
                ok,
            )
    m = R.get("memory", {})
    s = m.get("slice_mib", 0)
    for fw in ("torch", "jax_prealloc", "jax_no_prealloc", "jax_fraction_1", "cupy"):
        r = m.get(fw)
        if not r:
            continue
        seen = r.get("mem_get_info_mib") or r.get("memGetInfo_mib") or r.get("stats_before_mib")
        refused = bool(r.get("error")) and r.get("rc") == 0 and r.get("allocated_mib", 10**9) <= s
        extra = ""
        if fw == "jax_prealloc":
            lim = (r.get("stats_before_mib") or {}).get("bytes_limit", 0)
            extra = f"; JAX pool {lim} MiB = {100 * lim / s:.0f}% of the slice" if s else ""
            refused = refused and abs(lim - 0.75 * s) <= 0.05 * s
        row(
            f"memory {fw}",
            f"sees {seen}; allocated {r.get('allocated_mib')} MiB of {s}; "
            f"{r.get('error', '')[:80]}; smi '{r.get('nvidia_smi')}'; pynvml {r.get('pynvml_mib')}{extra}",
            refused,
        )
    w = R.get("workers")
    if w:
        got = sum(v[0] for v in w.get("workers", {}).values())
        cap = w.get("slice_mib", 0)
        used = w.get("region_used_mib")
        # A worker refused at its context (no room left for it) fails at CUDA init: "out of memory" too.
        ok = (
            len(w.get("workers", {})) == 4
            and all(v[1] == "OutOfMemoryError" or "out of memory" in v[1].lower() for v in w["workers"].values())
            and all(c == 0 for c in w.get("exitcodes", []))
            and used is not None
            and used <= cap
        )
        row(
            "4 spawned workers + parent share one slice",
            f"workers {got} MiB + parent 1024 MiB + contexts; region "
            f"{used}/{w.get('region_limit_mib')} MiB over {w.get('region_processes')} processes; per worker "
            f"{w.get('workers')}",
            ok,
        )
    f = R.get("fork")
    if f:
        c = f.get("child", {})
        ex = f.get("exec_allocator", {})
        cap = f.get("slice_mib", 0)
        ok = (
            f.get("child_exit") == 0
            and "allocated" != c.get("torch_in_child")
            and isinstance(c.get("driver_in_child"), dict)
            and c["driver_in_child"].get("alloc_whole_slice") != 0
            and (ex.get("allocated_mib") or 0) + 1024 <= cap
            and bool(ex.get("error"))
        )
        row(
            "fork after CUDA init",
            f"child exit {f.get('child_exit')}; torch: {c.get('torch_in_child')}; driver: "
            f"{c.get('driver_in_child')}; exec'd allocator {ex}",
            ok,
        )
    for name, o in R.get("overhead", {}).items():
        h = o.get("hook_noconfig") if isinstance(o, dict) else None
        if h:
            aa = o.get("nohook_again", {})
            row(
                f"overhead {name} (time per block, hook/no hook)",
                f"{h['ratio_mean']} (95% {h['ratio_mean_ci95']}); "
                f"A/A {aa.get('ratio_mean')} ({aa.get('ratio_mean_ci95')}); {o.get('processes_per_config')} "
                "processes each (met: mean within 1%)",
                h["ratio_mean"] <= 1.01,
            )
        else:
            row(f"overhead {name}", json.dumps(o)[:200], False)
    for k, v in R.items():
        if k.endswith("_error") or k.endswith("_skipped"):
            rows.append(f"- {k}: {v}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/fw-out"))
    ap.add_argument("--phases", default="calibrate,compute,pair,mixed,frameworks,memory,workers,fork,overhead")
    ap.add_argument("--ref-mode", default="auto", help="the agent's --ref-clock-mhz (the chart's default: auto)")
    ap.add_argument("--burst-ms", type=int, default=4000, help="calibration burst")
    ap.add_argument("--seconds", type=float, default=2.5, help="timed part of each compute run")
    ap.add_argument("--kinds", default="matmul,graph,elementwise")
    ap.add_argument("--limits", default="10,30,50,70,90")
    ap.add_argument("--time-mode", default="", help="kind:pct,... also run with shares of time (ref off)")
    ap.add_argument("--fw-kinds", default="triton,jax,llama")
    ap.add_argument("--fw-limits", default="30,60")
    ap.add_argument("--llama-seconds", type=float, default=4.0, help="timed part of each Llama run")
    ap.add_argument("--pair-lead", type=float, default=12.0, help="seconds for both tenants to start up")
    ap.add_argument("--slice-gib", type=int, default=4)
    ap.add_argument("--workers-gib", type=int, default=6)
    ap.add_argument("--overhead-kinds", default="transformer,triton,jax,cupy,llama")
    ap.add_argument("--overhead-procs", type=int, default=4, help="processes per configuration")
    ap.add_argument("--overhead-rounds", type=int, default=4)
    ap.add_argument("--deadline", type=float, default=520, help="seconds after which phases are skipped")
    a = ap.parse_args()
    global OUTDIR, UUID, LIMITS, FW_LIMITS, CPUS
    a.limits = [int(x) for x in a.limits.split(",")]
    a.fw_limits = [int(x) for x in a.fw_limits.split(",")]
    LIMITS, FW_LIMITS = a.limits, a.fw_limits
    OUTDIR = Path(a.out)
    OUTDIR.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        CUDA_VISIBLE_DEVICES="0", CUDA_DEVICE_ORDER="PCI_BUS_ID", PYTHONUNBUFFERED="1", FLEXAI_SHIM_LIBRARY=SHIM
    )
    q = subprocess.run(
        [
            "nvidia-smi",
            "-i",
            "0",
            "--query-gpu=uuid,name,driver_version,memory.total,power.limit,clocks.max.sm",
            "--format=csv,noheader",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    parts = [p.strip() for p in q.split(",")]
    UUID = parts[0]
    import hook_gpu as hg

    hg.GPU = 0
    local = hg.gpu_local_cpus(8)
    CPUS = (local[:4], local[4:])
    R.update(
        card=parts[1],
        driver=parts[2],
        memory_total=parts[3],
        power_limit=parts[4],
        max_sm_clock=parts[5],
        uuid=UUID,
        args={k: v for k, v in vars(a).items()},
    )
    phases = {
        "calibrate": phase_calibrate,
        "memory": phase_memory,
        "workers": phase_workers,
        "fork": phase_fork,
        "compute": phase_compute,
        "pair": phase_pair,
        "frameworks": phase_frameworks,
        "mixed": phase_mixed,
        "overhead": phase_overhead,
    }
    wanted = a.phases.split(",")
    if "calibrate" not in wanted:
        wanted.insert(0, "calibrate")  # every config needs the agent's figure
    for name in wanted:
        if time.time() - T0 > a.deadline:
            R[f"{name}_skipped"] = f"deadline {a.deadline}s"
            continue
        t = time.time()
        try:
            phases[name](a)
        except Exception as e:  # keep what the other phases measured
            import traceback

            R[f"{name}_error"] = traceback.format_exc()[-800:]
            print(f"phase {name} failed: {e!r}", flush=True)
        R[f"{name}_seconds"] = round(time.time() - t, 1)
        save(OUTDIR)
        print(f"[{time.time() - T0:5.0f}s] phase {name} done in {time.time() - t:.0f}s", flush=True)
    text = "\n".join(verdicts()) + "\n"
    (OUTDIR / "frameworks.md").write_text(text)
    print(text, flush=True)


AGENT: Agent
OUTDIR = Path(".")
UUID = ""
LIMITS: list[int] = []
FW_LIMITS: list[int] = []
CPUS: tuple[list[int], list[int]] = ([], [])  # one tenant's CPUs, the other's; a lone child gets both
HEAVY_WAVE = 2  # overhead: processes per configuration alive at once for the transformer and Llama

if __name__ == "__main__":
    main()
