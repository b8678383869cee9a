"""``flexai-sched sim``: replay the Alibaba GPU trace under policies, print and write the results.

    flexai-sched sim                                   # default trace, default policy, seeds 42-51
    flexai-sched sim --variants all --policies fragmentation,fgd,bestfit,gpupacking,random \\
        --jobs 2 --out bench/results

A policy written ``NAME:cards`` is scored without host CPU and memory (what the
extender does for a node whose host it does not know); plain ``NAME`` gets them where
the policy reads them, as the extender does on the Kubernetes backend. ``NAME:learned``
starts from the policy's built-in prior and learns the workload from the pods it placed
(``workload.LEARN_FIRST``, ``LEARN_EVERY``), as the extender learns it from bound pods;
plain ``NAME`` plans for the trace's workload from the start, as the paper does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from .. import policies
from . import report
from .replay import replay
from .trace import VARIANTS, Trace, TraceError, load
from .workload import SEEDS, arrivals

# The trace sits beside the repository (CI lays shared/ there too).
DEFAULT_TRACE = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "alibaba-gpu-v2023"
CARDS_ONLY = ":cards"
LEARNED = ":learned"  # the workload learned from placed pods, as the extender does

Job = tuple[str, str, str, int]  # trace folder, variant, policy spec, seed


def add_parser(sub: Any) -> None:
    from ..config import Settings

    p = sub.add_parser("sim", help="replay the Alibaba GPU trace and compare policies with the FGD paper")
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="trace folder (default: ../shared/traces/alibaba-gpu-v2023)")
    p.add_argument("--variants", default="default", help=f"comma-separated, or 'all' ({', '.join(VARIANTS)})")
    p.add_argument(
        "--policies",
        default=Settings().node_policy,
        help=f"comma-separated, NAME, NAME{CARDS_ONLY} or NAME{LEARNED} ({', '.join(policies.names())}; "
        "default: the service's)",
    )
    p.add_argument("--seeds", default=f"{SEEDS[0]}-{SEEDS[-1]}", help="e.g. 42-51 or 42,43 (default 42-51)")
    p.add_argument("--out", type=Path, help="write trace-replay.csv and trace-replay.png into this folder")
    p.add_argument("--raw", type=Path, help="also save every replay's result as JSON here")
    p.add_argument("--from", dest="load", type=Path, help="report saved results (--raw) instead of replaying")
    p.add_argument("--jobs", type=int, default=1, help="replays run in this many processes (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        if args.load:
            runs = [report.Run(**{**r, "allocated_on_grid": tuple(r["allocated_on_grid"])}) for r in json.loads(args.load.read_text())]
        else:
            jobs = plan(args.trace, args.variants, args.policies, args.seeds)
            runs = list(_progress(execute(jobs, args.jobs), len(jobs), not args.no_progress))
    except (ValueError, TraceError, OSError) as e:
        print(f"flexai-sched sim: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - started
    print(report.table(report.summarize(runs)))
    if not args.load:
        print(f"\n{len(runs)} replays in {wall:.1f} s wall ({args.jobs} process(es))")
    if args.raw:
        args.raw.parent.mkdir(parents=True, exist_ok=True)
        args.raw.write_text(json.dumps([dataclasses.asdict(r) for r in runs]))
    if args.out:
        report.write_csv(runs, args.out / "trace-replay.csv")
        report.write_png(runs, args.out / "trace-replay.png")
        print(f"wrote {args.out / 'trace-replay.csv'} and {args.out / 'trace-replay.png'}")
    return 0


def plan(folder: Path, variants: str, names: str, seeds: str) -> list[Job]:
    """Every (variant, policy, seed) to replay; checks names and files first."""
    vs = list(VARIANTS) if variants == "all" else _split(variants)
    for v in vs:
        if v not in VARIANTS:
            raise ValueError(f"variant {v!r}: unknown (known: {', '.join(VARIANTS)})")
        load(folder, v)  # a missing or broken file fails before any replay
    specs = _split(names)
    for spec in specs:
        policies.get(spec.removesuffix(CARDS_ONLY).removesuffix(LEARNED))
    return [(str(folder), v, spec, s) for v in vs for spec in specs for s in _seeds(seeds)]


def one(job: Job) -> report.Run:
    folder, variant, spec, seed = job
    trace = _trace(folder, variant)
    started = time.perf_counter()
    name = spec.removesuffix(CARDS_ONLY).removesuffix(LEARNED)
    curve = replay(trace, arrivals(trace, seed), name, seed, not spec.endswith(CARDS_ONLY),
                   learned=spec.endswith(LEARNED))
    return report.Run.of(variant, spec, seed, curve, time.perf_counter() - started)


def execute(jobs: list[Job], workers: int) -> Iterator[report.Run]:
    if workers <= 1:
        yield from map(one, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(one, jobs)


_TRACES: dict[tuple[str, str], Trace] = {}


def _trace(folder: str, variant: str) -> Trace:
    key = (folder, variant)
    if key not in _TRACES:
        _TRACES[key] = load(folder, variant)
    return _TRACES[key]


def _progress(it: Iterable[report.Run], total: int, show: bool) -> Iterable[report.Run]:
    if not show:
        return it
    from tqdm import tqdm

    bar: Iterable[report.Run] = tqdm(it, total=total, unit="replay", file=sys.stderr)
    return bar


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
