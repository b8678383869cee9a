"""``flexai-sched sim``: replay the Alibaba GPU trace under policies, print and write the results.

    flexai-sched sim                                   # default trace, default policy, seeds 42-51
    flexai-sched sim --variants all --policies fragmentation,fgd,bestfit,gpupacking,random \\
        --jobs 2 --out bench/results
    flexai-sched sim --trace my_pods.csv --nodes my_nodes.csv --policies fragmentation,fgd

The trace: ``--trace`` a folder (its ``openb_node_list_gpu_node.csv`` and pod lists
``openb_pod_list_NAME.csv``, chosen with ``--variants NAME,...``; ``all`` is the nine
shipped ones, ``generated`` the stress variants of ``variants.GENERATED``, built from the
folder's default pod list), or a pod list file (with ``--nodes``, or the node list beside
it). ``--variants`` also takes pod list paths. Without ``--trace``: ``$FLEXAI_TRACE``, else
``shared/traces/alibaba-gpu-v2023`` in the working folder, the package's folder or any
folder above them. A row is named by its pod file; the paper's figures are shown only
for its own files on its own cluster.

A policy written ``NAME:cards`` is scored without host CPU and memory (what the
extender does for a node whose host it does not know); plain ``NAME`` gets them where
the policy reads them, as the extender does on the Kubernetes backend. ``NAME:learned``
starts from the policy's built-in prior and learns the workload from the pods it placed
(``workload.LEARN_FIRST``, ``LEARN_EVERY``), as the extender learns it from bound pods;
plain ``NAME`` plans for the trace's workload from the start, as the paper does.
``NAME:prior=VARIANT`` plans for another variant's workload throughout (a deliberately
wrong plan: e.g. ``fragmentation:prior=default`` on a variant with model constraints).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from .. import policies
from . import report
from .replay import replay
from .trace import NODE_FILE, POD_PREFIX, VARIANTS, Trace, TraceError, load_files
from .variants import GENERATED, generate
from .workload import SEEDS, arrivals, target_workload

TRACE_DIR = Path("shared") / "traces" / "alibaba-gpu-v2023"
TRACE_ENV = "FLEXAI_TRACE"
CARDS_ONLY = ":cards"
LEARNED = ":learned"  # the workload learned from placed pods, as the extender does
PRIOR = ":prior="  # plans for another variant's workload

# node list, pod list, generated variant ("": the pod list itself), policy spec, seed
Job = tuple[str, str, str, str, int]
Source = tuple[str, str, str]  # node list, pod list, generated variant


def add_parser(sub: Any) -> None:
    from ..config import Settings

    p = sub.add_parser("sim", help="replay the Alibaba GPU trace and compare policies with the FGD paper")
    p.add_argument(
        "--trace",
        type=Path,
        help=f"trace folder or pod list (default: ${TRACE_ENV}, else {TRACE_DIR} "
        "in this folder, the package's, or one above)",
    )
    p.add_argument("--nodes", type=Path, help=f"node list (default: {NODE_FILE} of the trace folder)")
    p.add_argument(
        "--variants",
        default="default",
        help=f"comma-separated names or pod list paths; 'all' "
        f"({', '.join(VARIANTS)}), 'generated' ({', '.join(GENERATED)})",
    )
    p.add_argument(
        "--policies",
        default=Settings().node_policy,
        help=f"comma-separated, NAME, NAME{CARDS_ONLY}, NAME{LEARNED} or NAME{PRIOR}VARIANT ({', '.join(policies.names())}; "
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
            runs = [
                report.Run(**{**r, "allocated_on_grid": tuple(r["allocated_on_grid"])})
                for r in json.loads(args.load.read_text())
            ]
        else:
            jobs = plan(args.trace, args.variants, args.policies, args.seeds, args.nodes)
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


def default_trace() -> Path:
    """Where the trace is when no ``--trace`` says: see the module docstring."""
    env = os.environ.get(TRACE_ENV)
    if env:
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for base in (start, *start.parents):
            if (base / TRACE_DIR / NODE_FILE).is_file():
                return base / TRACE_DIR
    raise TraceError(
        f"no trace found ({TRACE_DIR} in no folder above {Path.cwd()} or the package): pass --trace or set {TRACE_ENV}"
    )


def sources(trace: Path | None, variants: str, nodes: Path | None = None) -> list[Source]:
    """The (node list, pod list, generated variant) of every trace ``--variants`` names."""
    trace = default_trace() if trace is None else trace
    if trace.is_file():
        folder, names = trace.parent, [str(trace), *([] if variants == "default" else _split(variants))]
    elif trace.is_dir():
        folder, names = trace, _split(variants)
    else:
        raise TraceError(
            f"{trace}: no such folder or pod list (a trace folder holds {NODE_FILE} and {POD_PREFIX}NAME.csv)"
        )
    node_file = str(nodes or folder / NODE_FILE)
    default = str(folder / f"{POD_PREFIX}default.csv")
    out: list[Source] = []
    for v in names:
        if v == "all":
            out += [(node_file, str(folder / f"{POD_PREFIX}{x}.csv"), "") for x in VARIANTS]
        elif v == "generated":
            out += [(node_file, default, g) for g in GENERATED]
        elif v in GENERATED:
            out.append((node_file, default, v))
        elif v.endswith(".csv") or os.sep in v:
            out.append((node_file, v, ""))
        elif (folder / f"{POD_PREFIX}{v}.csv").is_file():
            out.append((node_file, str(folder / f"{POD_PREFIX}{v}.csv"), ""))
        else:
            known = sorted(p.stem.removeprefix(POD_PREFIX) for p in folder.glob(f"{POD_PREFIX}*.csv"))
            raise ValueError(
                f"variant {v!r}: unknown (pod lists in {folder}: {', '.join(known) or 'none'}; "
                f"generated: {', '.join(GENERATED)}; or a pod list path)"
            )
    for src in out:
        _trace(src)  # a missing or broken file fails before any replay
    return out


def plan(trace: Path | None, variants: str, names: str, seeds: str, nodes: Path | None = None) -> list[Job]:
    """Every (trace, policy, seed) to replay; checks names and files first."""
    srcs = sources(trace, variants, nodes)
    specs = _split(names)
    for spec in specs:
        name, _, prior = spec.partition(PRIOR)
        policies.get(name.removesuffix(CARDS_ONLY).removesuffix(LEARNED))
        if prior:
            sources(trace, prior, nodes)  # the prior's pod list exists and loads
    return [(*src, spec, s) for src in srcs for spec in specs for s in _seeds(seeds)]


def one(job: Job) -> report.Run:
    node_file, pod_file, generated, spec, seed = job
    trace = _trace((node_file, pod_file, generated))
    started = time.perf_counter()
    policy, _, prior_name = spec.partition(PRIOR)
    prior = None
    if prior_name:
        folder = Path(pod_file).parent
        prior = target_workload(_trace(sources(folder, prior_name, Path(node_file))[0]))
    name = policy.removesuffix(CARDS_ONLY).removesuffix(LEARNED)
    curve = replay(
        trace,
        arrivals(trace, seed),
        name,
        seed,
        not policy.endswith(CARDS_ONLY),
        learned=policy.endswith(LEARNED),
        prior=prior,
    )
    return report.Run.of(trace.variant, spec, seed, curve, time.perf_counter() - started, trace.published)


def execute(jobs: list[Job], workers: int) -> Iterator[report.Run]:
    if workers <= 1:
        yield from map(one, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(one, jobs)


_TRACES: dict[Source, Trace] = {}


def _trace(src: Source) -> Trace:
    if src not in _TRACES:
        node_file, pod_file, generated = src
        base = load_files(node_file, pod_file)
        _TRACES[src] = generate(base, generated) if generated else base
    return _TRACES[src]


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
