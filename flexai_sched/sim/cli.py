"""``flexai-sched sim``: replay the Alibaba GPU trace under each policy, print and write the results.

    flexai-sched sim                                  # default trace, default policy, 10 seeds
    flexai-sched sim --variants all --policies fragmentation,fgd,bestfit,gpupacking,random --out bench/results
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from .. import policies
from ..config import Settings
from . import report
from .replay import replay
from .trace import VARIANTS, TraceError, load
from .workload import SEEDS, arrivals

# The trace sits beside the repository (CI lays shared/ there too).
DEFAULT_TRACE = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "alibaba-gpu-v2023"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sim", help="replay the Alibaba GPU trace and compare policies with the FGD paper")
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help=f"trace folder (default {DEFAULT_TRACE})")
    p.add_argument("--variants", default="default", help=f"comma-separated, or 'all' ({', '.join(VARIANTS)})")
    p.add_argument(
        "--policies", default=Settings().node_policy, help=f"comma-separated ({', '.join(policies.names())})"
    )
    p.add_argument("--seeds", default=f"{SEEDS[0]}-{SEEDS[-1]}", help="e.g. 42-51 or 42,43 (default 42-51)")
    p.add_argument("--out", type=Path, help="write trace-replay.csv and trace-replay.png here")
    p.add_argument("--jobs", type=int, default=1, help="replays run in this many processes (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        variants = list(VARIANTS) if args.variants == "all" else _split(args.variants)
        names = _split(args.policies)
        seeds = _seeds(args.seeds)
        for v in variants:
            if v not in VARIANTS:
                raise ValueError(f"variant {v!r}: unknown (known: {', '.join(VARIANTS)})")
        for n in names:
            policies.get(n)
        for v in variants:
            load(args.trace, v)  # fail early on a missing or broken file
    except (ValueError, TraceError) as e:
        print(f"flexai-sched sim: {e}", file=sys.stderr)
        return 2
    jobs = [(str(args.trace), v, n, s) for v in variants for n in names for s in seeds]
    started = time.perf_counter()
    runs = list(_progress(_execute(jobs, args.jobs), len(jobs), not args.no_progress))
    wall = time.perf_counter() - started
    order = {(v, n, s): i for i, (_, v, n, s) in enumerate(jobs)}
    runs.sort(key=lambda r: order[(r.variant, r.policy, r.seed)])
    print(report.table(report.summarize(runs)))
    print(f"\n{len(runs)} replays in {wall:.1f} s wall ({args.jobs} process(es))")
    if args.out:
        report.write_csv(runs, args.out / "trace-replay.csv")
        report.write_png(runs, args.out / "trace-replay.png")
        print(f"wrote {args.out / 'trace-replay.csv'} and {args.out / 'trace-replay.png'}")
    return 0


def one(job: tuple[str, str, str, int]) -> report.Run:
    folder, variant, policy, seed = job
    trace = _trace(folder, variant)
    started = time.perf_counter()
    curve = replay(trace, arrivals(trace, seed), policy, seed)
    return report.Run(variant, policy, seed, curve, time.perf_counter() - started)


_TRACES: dict[tuple[str, str], Any] = {}


def _trace(folder: str, variant: str) -> Any:
    key = (folder, variant)
    if key not in _TRACES:
        _TRACES[key] = load(folder, variant)
    return _TRACES[key]


def _execute(jobs: list[tuple[str, str, str, int]], workers: int) -> Iterator[report.Run]:
    if workers <= 1:
        yield from map(one, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(one, jobs)


def _progress(it: Iterator[report.Run], total: int, show: bool) -> Iterator[report.Run]:
    if not show:
        return it
    from tqdm import tqdm

    return iter(tqdm(it, total=total, unit="replay", file=sys.stderr))


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in _split(text):
        lo, _, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
        except ValueError:
            raise ValueError(f"seeds {text!r}: use e.g. 42-51 or 42,43") from None
    if not out:
        raise ValueError("seeds: none given")
    return out
