"""gpu-monitor: what a container's vGPUs use, read from the hook's shared region.

    gpu-monitor -p 1            # usage over 1 s, per vGPU and per process
    gpu-monitor -p 1 -o json
    gpu-monitor -p 1 -n 0       # a line per second until interrupted

Per vGPU: ``usage NN%, limit NN%, memory usage used/quota MB``; per process: pid, core
usage, memory. Usage of a compute-limited vGPU is the GPU time the hook measured with CUDA
events over the window; of an unlimited one (the hook measures nothing then) NVML's card
utilisation, when NVML is there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .config import ENV_CONFIG, parse
from .shim import HookShim, RegionSnapshot, ShimError

__all__ = ["build_report", "format_text", "main"]

MB = 1 << 20


def build_report(
    before: RegionSnapshot, after: RegionSnapshot, elapsed_s: float, nvml_util: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Usage between two snapshots taken ``elapsed_s`` apart, as plain values."""
    window_ns = max(elapsed_s, 1e-9) * 1e9
    old_procs = {p.pid: p for p in before.processes}
    report: list[dict[str, Any]] = []
    for v in after.vgpus:
        prev = before.vgpus[v.index] if v.index < len(before.vgpus) else v
        limited = 0 < v.cores < 100
        usage: float | None
        if limited:
            usage = min(100.0, 100.0 * max(0, v.busy_ns - prev.busy_ns) / window_ns)
        else:
            usage = (nvml_util or {}).get(v.uuid)
        procs = []
        for p in after.processes:
            if not p.alive or v.index >= len(p.memory_used):
                continue
            old = old_procs.get(p.pid)
            busy0 = old.busy_ns[v.index] if old is not None and v.index < len(old.busy_ns) else p.busy_ns[v.index]
            if p.memory_used[v.index] == 0 and p.busy_ns[v.index] == 0:
                continue
            procs.append(
                {
                    "pid": p.pid,
                    "core_usage_percent": round(min(100.0, 100.0 * max(0, p.busy_ns[v.index] - busy0) / window_ns), 1)
                    if limited
                    else None,
                    "memory_mb": p.memory_used[v.index] // MB,
                }
            )
        report.append(
            {
                "index": v.index,
                "uuid": v.uuid or None,
                "usage_percent": None if usage is None else round(usage, 1),
                "limit_percent": v.cores if limited else 100,
                "memory_used_mb": v.memory_used // MB,
                "memory_quota_mb": v.memory_limit // MB if v.memory_limit else None,
                "processes": procs,
            }
        )
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}%"


def format_text(report: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for v in report:
        quota = "unlimited" if v["memory_quota_mb"] is None else str(v["memory_quota_mb"])
        name = v["uuid"] or f"cuda:{v['index']}"
        lines.append(
            f"vGPU {v['index']} ({name}): usage {_pct(v['usage_percent'])}, limit {v['limit_percent']}%, "
            f"memory usage {v['memory_used_mb']}/{quota} MB"
        )
        for p in v["processes"]:
            lines.append(f"  pid {p['pid']}: core usage {_pct(p['core_usage_percent'])}, memory {p['memory_mb']} MB")
    return "\n".join(lines)


def _region_from_config(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        try:
            region = parse(f.read()).region_path
        except ValueError as e:
            raise ShimError(f"{path}: {e}") from e
    if not region:
        raise ShimError(f"{path} names no region")
    return region


def _nvml_utilisation(uuids: Sequence[str]) -> dict[str, float]:
    """Card utilisation per UUID from NVML; empty when NVML is absent (the one place its errors end)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}
    out: dict[str, float] = {}
    try:
        for u in uuids:
            try:
                h = pynvml.nvmlDeviceGetHandleByUUID(u)
                out[u] = float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
            except Exception:
                continue
    finally:
        pynvml.nvmlShutdown()
    return out


def _snapshot_or_empty(shim: HookShim, region: str) -> RegionSnapshot:
    """No region file yet means no process of the container has used CUDA: nothing to show."""
    if not os.path.lexists(region):
        return RegionSnapshot(vgpus=(), processes=())
    return shim.snapshot(region)


def _own_view(region: str) -> str:
    """The region's directory as this container resolves it (images link /var/run to /run): the
    shim follows no link on its way, and in its own container gpu-monitor trusts its own paths.
    The file itself is still opened without following a link."""
    head, tail = os.path.split(region)
    return os.path.join(os.path.realpath(head or "."), tail)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu-monitor", description="vGPU usage of this container")
    ap.add_argument("-p", "--period", type=float, default=1.0, help="seconds to measure usage over (default 1)")
    ap.add_argument("-o", "--output", choices=("text", "json"), default="text")
    ap.add_argument("-n", "--count", type=int, default=1, help="samples to print, 0 = until interrupted")
    ap.add_argument("--region", help="region file (default: the one named by $FLEXAI_VGPU_CONFIG)")
    ap.add_argument("--shim", help="path of libflexai_shim.so")
    args = ap.parse_args(argv)
    try:
        region = args.region
        if region is None:
            cfg = os.environ.get(ENV_CONFIG)
            if not cfg:
                raise ShimError(f"no --region and no ${ENV_CONFIG}")
            region = _region_from_config(cfg)
        region = _own_view(region)
        shim = HookShim(args.shim)
        n = 0
        before, t0 = _snapshot_or_empty(shim, region), time.monotonic()
        while args.count == 0 or n < args.count:
            time.sleep(args.period)
            after, t1 = _snapshot_or_empty(shim, region), time.monotonic()
            unlimited = [v.uuid for v in after.vgpus if v.uuid and not 0 < v.cores < 100]
            report = build_report(before, after, t1 - t0, _nvml_utilisation(unlimited) if unlimited else None)
            if args.output == "json":
                print(json.dumps({"time": time.time(), "vgpus": report}), flush=True)
            else:
                print(format_text(report), flush=True)
            before, t0 = after, t1
            n += 1
    except (ShimError, OSError) as e:
        print(f"gpu-monitor: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
