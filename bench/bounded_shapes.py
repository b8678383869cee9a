"""How many pods of a trace a bounded filter call could place from a partial answer table.

A filter call from kube-scheduler decides new verdicts for at most ``filter_budget_ms``
(``Extender.filter_request``): only a pod whose shape's table is not full yet is placed
from a sample of the nodes. A table is keyed by the pod's GPU shape and, for the default
host-aware policy, its CPU and memory request (``Extender._key``, ``_host_key``). Per trace
variant this counts the pods that are the first of their key (the table is empty: always
bounded) and, as a worst case where the background fill never runs between calls, the pods
among the first ``k`` of their key, ``k`` = the calls whose budgets add up to deciding every
node (``--per-node-us`` each).

With ``--replay POLICY`` the trace is replayed (``sim.replay``, seed 42, the workload learned
as the extender learns it) and a key counts again after every re-pricing or learning that
dropped the cached scores: the extender's tables go with them, so the next pod of every
shape is cold again.

    PYTHONPATH=. .venv/bin/python bench/bounded_shapes.py [--trace DIR] [--budget-ms 10] [--per-node-us 26]
    PYTHONPATH=. .venv/bin/python bench/bounded_shapes.py --replay fragmentation --variants default
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from flexai_sched.sim import cli
from flexai_sched.sim import replay as sim
from flexai_sched.sim.trace import Trace, TracePod, load, request, smallest_card_mib

MARK = ("dropped?",)
VARIANTS = ("default", "cpu050", "cpu200", "gpushare40", "gpushare100")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", type=Path, default=None)
    ap.add_argument("--budget-ms", type=float, default=10.0)
    ap.add_argument("--per-node-us", type=float, default=26.0, help="measured: a new shape's verdict per node")
    ap.add_argument("--replay", metavar="POLICY", help="replay with this policy; keys restart when scores drop")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    folder = args.trace or cli.default_trace()
    print("variant | nodes | GPU pods | table keys | first of key | worst case k | within first k | their GPU")
    for variant in args.variants.split(","):
        trace = load(folder, variant)
        models = sorted({n.model for n in trace.nodes})
        k = max(1, math.ceil(len(trace.nodes) * args.per_node_us / 1000 / args.budget_ms))
        order: list[tuple[TracePod, int]] = [(p, 0) for p in trace.pods]
        if args.replay:
            order = replayed(trace, args.replay)
        seen: dict[tuple[object, ...], int] = {}
        gpu = first = within = 0
        gpu_milli = within_milli = 0
        for i, (pod, epoch) in enumerate(order):
            req = request(pod, f"u{i}", smallest_card_mib(pod.gpu_spec, models))
            if not req.wants_gpu:
                continue  # filter passes every node for it at once
            gpu += 1
            gpu_milli += pod.gpu_demand_milli
            key = (epoch, req.shape(), pod.cpu_milli, pod.memory_mib)
            n = seen[key] = seen.get(key, 0) + 1
            first += n == 1
            if n <= k:
                within += 1
                within_milli += pod.gpu_demand_milli
        print(
            f"{variant} | {len(trace.nodes)} | {gpu} | {len(seen)} | {first} ({100 * first / gpu:.1f}%) | {k} | "
            f"{within} ({100 * within / gpu:.1f}%) | {100 * within_milli / gpu_milli:.1f}%"
        )


def replayed(trace: Trace, policy: str) -> list[tuple[TracePod, int]]:
    """The trace's pods in replay order, each with how many times the cached scores had been
    dropped (re-pricing, learning) before it came."""
    out: list[tuple[TracePod, int]] = []
    drops = [0]

    class Counting(sim.Cluster):
        def schedule(self, pod: TracePod) -> bool:
            placed = super().schedule(pod)  # may re-price first, as the extender's filter does
            out.append((pod, drops[0]))
            return placed

        def reprice(self) -> None:
            self._boards[MARK] = None  # type: ignore[assignment]  # gone if the boards were dropped
            super().reprice()
            if self._boards.pop(MARK, "dropped") == "dropped":
                drops[0] += 1

        def learn(self, placed: object) -> None:
            super().learn(placed)  # type: ignore[arg-type]
            drops[0] += 1

    real = sim.Cluster
    sim.Cluster = Counting  # type: ignore[misc]
    try:
        curve = sim.replay(trace, trace.pods, policy, 42, learned=True)
    finally:
        sim.Cluster = real  # type: ignore[misc]
    print(f"replay {policy}: {drops[0]} drops of every cached score, {curve.allocated[-1] / curve.capacity_milli:.3f}")
    return out


if __name__ == "__main__":
    main()
