"""What kube-scheduler's ``percentageOfNodesToScore`` costs in packing, on the trace replay.

kube-scheduler stops its search once it has found ``numFeasibleNodesToFind`` nodes that
pass its own filters (adaptive by default: 50 - nodes/125 percent, at least 5%, at least
100 nodes) and hands only those to the extender. Fewer names per call make filter and
prioritize cheaper (bench/extender_latency.py, bench/sched_throughput.py --score-percent),
but a pod then takes the best node of a window, not of the cluster, and fails when no
node of the window has room for its GPUs. The replay (``flexai_sched.sim.replay`` with
``score_percent``) places every pod of the default trace once that way; printed per
setting: unallocated GPU % at 100% and 130% arrived (the published metric; lower is
better).

    .venv/bin/python bench/score_percent.py [--seeds 42-44] [--percents all,0,50,20,10] [--jobs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flexai_sched.sim.cli import TRACE_DIR  # noqa: E402
from flexai_sched.sim.replay import feasible_to_find, replay  # noqa: E402
from flexai_sched.sim.trace import load  # noqa: E402
from flexai_sched.sim.workload import arrivals  # noqa: E402


def one(job: tuple[str, int | None, int]) -> tuple[int | None, int, float, float, float]:
    folder, percent, seed = job
    trace = load(folder)
    started = time.process_time()
    curve = replay(trace, arrivals(trace, seed), "fragmentation", seed, score_percent=percent)
    return percent, seed, curve.unallocated_at(100), curve.unallocated_at(130), time.process_time() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trace", default=str(ROOT / TRACE_DIR))
    p.add_argument("--seeds", default="42-44")
    p.add_argument("--percents", default="all,0,50,20,10", help="'all': every node; 0: kube-scheduler's adaptive")
    p.add_argument("--jobs", type=int, default=1)
    args = p.parse_args()
    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    percents = [None if x == "all" else int(x) for x in args.percents.split(",")]
    nodes = len(load(args.trace).nodes)
    jobs = [(args.trace, pc, s) for pc in percents for s in seeds]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(one, jobs))
    print(f"default trace, {nodes} nodes, fragmentation, seeds {args.seeds}")
    print("| percentageOfNodesToScore | nodes looked for | unallocated @100% | unallocated @130% | replay s |")
    print("|---|---:|---:|---:|---:|")
    for pc in percents:
        mine = [r for r in runs if r[0] == pc]
        un = [r[2] for r in mine]
        late = [r[3] for r in mine]
        label = "every node" if pc is None else "adaptive (0)" if pc == 0 else f"{pc}%"
        window = nodes if pc is None else feasible_to_find(nodes, pc)
        print(
            f"| {label} | {window} | {statistics.mean(un):.2f} ± {statistics.pstdev(un):.2f} | "
            f"{statistics.mean(late):.2f} ± {statistics.pstdev(late):.2f} | {statistics.mean(r[4] for r in mine):.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
