"""The learned leftover table's settings, judged on the trace without nodes.

    .venv/bin/python bench/leftover_settings.py [--variant default] [--seeds 1000-1029]

For each setting of the replayed cluster (cards, rounds, replays per round, seed of the
table's own draws) it learns ``flexai_sched.policies.leftover``'s table for the trace's workload, then
places the trace's own arrivals up to 100% of the GPU capacity (``flexai_sched.sim``'s
arrivals for each seed) on the trace's cards with that table alone, no nodes and no hosts,
and prints the GPU left unallocated (percent of the cluster) with the time to learn. The
seeds default to 1000-1029, apart from the reported seeds 42-51, so the settings are not
chosen on the numbers they are then judged by.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flexai_core.model import FULL_CORES  # noqa: E402
from flexai_sched.policies import leftover  # noqa: E402
from flexai_sched.sim.cli import default_trace  # noqa: E402
from flexai_sched.sim.trace import TracePod, load  # noqa: E402
from flexai_sched.sim.workload import arrivals, target_workload  # noqa: E402

SETTINGS = ((1000, 12, 20), (1000, 16, 40), (2000, 12, 20), (2000, 16, 30), (500, 16, 40))


def tasks_until_full(trace_pods: list[TracePod], capacity_milli: int) -> list[int]:
    """The GPU tasks that arrive until 100% of the capacity: a share as its percent, n whole
    cards as -n (tasks without GPUs change nothing on the cards)."""
    out, arrived = [], 0
    for pod in trace_pods:
        arrived += pod.gpu_demand_milli
        if arrived > capacity_milli:
            break
        if pod.num_gpu and pod.gpu_milli < 1000:
            out.extend([pod.gpu_milli // 10] * pod.num_gpu)
        elif pod.num_gpu:
            out.append(-pod.num_gpu)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="default")
    ap.add_argument("--seeds", default="1000-1029")
    ap.add_argument("--table-seeds", type=int, default=1, help="learn each table with seeds 0..N-1 of its own draws")
    args = ap.parse_args()
    lo, _, hi = args.seeds.partition("-")
    seeds = range(int(lo), int(hi or lo) + 1)
    trace = load(default_trace(), args.variant)
    cards = trace.gpu_capacity_milli // 1000
    runs = {s: tasks_until_full(arrivals(trace, s), trace.gpu_capacity_milli) for s in seeds}
    workload = target_workload(trace)
    draws = leftover.normalized((c.vgpus, c.cores, c.weight) for c in workload.classes)
    print(f"{args.variant}: {cards} cards, seeds {args.seeds}, card-only replay, unallocated @100% arrived")
    print("| cards | rounds | replays | table seed | learn s | unallocated % |")
    print("|---|---|---|---|---|---|")
    for n_cards, rounds, replays in SETTINGS:
        for table_seed in range(args.table_seeds):
            leftover.learn.cache_clear()
            started = time.perf_counter()
            table = leftover.learn(draws, n_cards, rounds, replays, table_seed)
            took = time.perf_counter() - started
            sink_s, sink_c = [0.0] * (FULL_CORES + 1), [0] * (FULL_CORES + 1)
            free = [leftover.replay_cards(t, table, cards, sink_s, sink_c) for t in runs.values()]
            pct = statistics.mean(100 * f / (cards * FULL_CORES) for f in free)
            print(f"| {n_cards} | {rounds} | {replays} | {table_seed} | {took:.2f} | {pct:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
