"""Trace replay bench: every trace variant x policy, beside the FGD paper's figures; the generated stress variants too.

Writes bench/results/trace-replay.md (table, command, timings; the hand-written analysis after
the table is kept), trace-replay.csv
(allocated GPU % against arrived demand, mean and range over seeds), trace-replay.png
and trace-replay-runs.json (every replay's numbers, for --from).

    .venv/bin/python bench/trace_replay.py [--jobs 2] [--seeds 42-51] [--other-seeds 42-44]
        [--generated-seeds 42-44] [--generated-policies fragmentation,fgd] [--only NAMES --merge]
    .venv/bin/python bench/trace_replay.py --from bench/results/trace-replay-runs.json

The default trace runs every seed of the published method (42-51); the other eight
variants run --other-seeds (3 by default, to keep the bench under half an hour on
two cores; pass 42-51 for the full method). The generated variants
(``flexai_sched.sim.variants``: model constraints, multi-GPU pods) run
--generated-policies on --generated-seeds. ``--only`` replays those variants alone;
with ``--merge`` the saved runs of every (variant, policy) not replayed are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flexai_sched.sim import cli, report  # noqa: E402
from flexai_sched.sim.trace import VARIANTS  # noqa: E402
from flexai_sched.sim.variants import GENERATED  # noqa: E402

POLICIES = "fragmentation,fragmentation:cards,fgd,bestfit,gpupacking,random"
OUT = ROOT / "bench" / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, help="trace folder (default: as flexai-sched sim finds it)")
    ap.add_argument("--policies", default=POLICIES)
    ap.add_argument("--seeds", default="42-51", help="seeds of the default trace")
    ap.add_argument("--other-seeds", default="42-44", help="seeds of the other variants")
    ap.add_argument("--generated-seeds", default="42-44", help="seeds of the generated variants")
    ap.add_argument("--generated-policies", default="fragmentation,fgd", help="policies on the generated variants")
    ap.add_argument("--only", help="comma-separated variants to replay (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--from", dest="load", type=Path, help="re-report saved runs")
    ap.add_argument(
        "--merge", action="store_true", help="keep the saved runs of every (variant, policy) not replayed now"
    )
    args = ap.parse_args()
    started = time.perf_counter()
    if args.load:
        runs = _load(args.load)
        wall = 0.0
    else:
        only = set(args.only.split(",")) if args.only else set(VARIANTS) | set(GENERATED)
        jobs = []
        if "default" in only:
            jobs += cli.plan(args.trace, "default", args.policies, args.seeds)
        others = [v for v in VARIANTS if v != "default" and v in only]
        if others:
            jobs += cli.plan(args.trace, ",".join(others), args.policies, args.other_seeds)
        generated = [v for v in GENERATED if v in only]
        if generated:
            jobs += cli.plan(args.trace, ",".join(generated), args.generated_policies, args.generated_seeds)
        runs = list(cli._progress(cli.execute(jobs, args.jobs), len(jobs), True))
        wall = time.perf_counter() - started
        if args.merge:
            fresh = {(r.variant, r.policy) for r in runs}
            kept = [r for r in _load(OUT / "trace-replay-runs.json") if (r.variant, r.policy) not in fresh]
            runs = kept + runs
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "trace-replay-runs.json").write_text(json.dumps([dataclasses.asdict(r) for r in runs]))
    order = {p: i for i, p in enumerate(POLICIES.split(","))}
    variants = {v: i for i, v in enumerate([*VARIANTS, *GENERATED])}
    runs.sort(
        key=lambda r: (variants.get(r.variant, len(variants)), r.variant, order.get(r.policy, len(order)), r.seed)
    )
    rows = report.summarize(runs)
    report.write_csv(runs, OUT / "trace-replay.csv")
    report.write_png(runs, OUT / "trace-replay.png")
    command = " ".join(["python", "bench/trace_replay.py", *sys.argv[1:]])
    if args.load:
        how = "rendered from saved runs"
    else:
        how = f"wall {wall:.0f} s with {args.jobs} processes" + (
            "; other policies kept from saved runs" if args.merge else ""
        )
    text = [
        "# Trace replay: unallocated GPU % on the Alibaba GPU trace (cluster-trace-gpu-v2023)",
        "",
        f"Command: `{command}` ({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; {how}).",
        "Seeds: default trace 42-51 (the published method); other variants as in the seeds column.",
        "`gen-*`: stress variants generated from the default pod list (`flexai_sched/sim/variants.py`): "
        "`gen-gpuspecNN` NN% of GPU pods confined to some GPU models, `gen-multigpuNN` multi-GPU pods NN% of GPU demand.",
        "Published figures: the FGD paper's simulator results (mean of 10 seeds), see the trace README.",
        "`replay s` adds up the replays' own times (CPU seconds of one process each).",
        "`NAME:cards`: the policy sees the cards only (no host CPU/memory), as the extender does for a node whose host it does not know.",
        "",
        report.table(rows),
        "",
        "Curves: `trace-replay.csv` (allocated GPU % vs arrived demand, mean/min/max over seeds), "
        "plot: `bench/results/trace-replay.png`.",
        "",
    ]
    md = OUT / "trace-replay.md"
    # The analysis below the table is written by hand (from its first "## " heading on): kept.
    old = md.read_text() if md.exists() else ""
    analysis = old[old.index("\n## ") + 1 :] if "\n## " in old else ""
    md.write_text("\n".join(text) + ("\n" + analysis if analysis else ""))
    print("\n".join(text))
    return 0


def _load(path: Path) -> list[report.Run]:
    return [
        report.Run(**{**r, "allocated_on_grid": tuple(r["allocated_on_grid"])}) for r in json.loads(path.read_text())
    ]


if __name__ == "__main__":
    raise SystemExit(main())
