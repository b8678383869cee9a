"""What bounded filter calls cost in packing: the trace replay with kube-scheduler's sampled
search (``score_percent`` 0, its adaptive default), where the pods whose shape's answer table
is not full yet are placed from the nodes a bounded call decides.

A bounded call (``Extender.filter_request``) decides at most ``--decided`` of the names it is
sent (the budget's worth: 10 ms at ~26 us a node), from a rotating start, and goes on past
that until one fits; the pod takes the best of those. Which pods: the first of each table key
(GPU shape, CPU and memory request) since the cached scores were last dropped (re-pricing
drops them, and the tables with them), or, as a worst case where the table is never filled
between calls, the first ``--first`` of each.

    PYTHONPATH=. .venv/bin/python bench/bounded_replay.py [--seeds 42-44] [--decided 385] [--first 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from flexai_sched.sim import cli
from flexai_sched.sim import replay as sim
from flexai_sched.sim.board import Board
from flexai_sched.sim.trace import TracePod, load
from flexai_sched.sim.workload import arrivals

MARK = ("dropped?",)


class Bounded(sim.Cluster):
    """The replay's cluster, with the first pods of each table key placed from a bounded sample."""

    decided = 0  # names a bounded call decides (0: never bounded)
    first = 1  # the first this many pods of a key (since the last drop) are bounded
    bounded_pods = 0

    def setup(self) -> None:
        self._drops = 0
        self._seen: dict[tuple[object, ...], int] = {}
        self._limit: int | None = None
        self._from = 0  # the extender's rotating start

    def schedule(self, pod: TracePod) -> bool:
        req = self.request(pod)
        self._uid -= 1  # ``request`` above only reads the shape: the real one names the pod
        key = (self._drops, req.shape(), pod.cpu_milli, pod.memory_mib)
        n = self._seen[key] = self._seen.get(key, 0) + 1
        self._limit = self.decided if req.wants_gpu and self.decided and n <= self.first else None
        self.bounded_pods += self._limit is not None
        return super().schedule(pod)

    def reprice(self) -> None:
        self._boards[MARK] = None  # type: ignore[assignment]  # gone if the boards were dropped
        super().reprice()
        if self._boards.pop(MARK, "dropped") == "dropped":
            self._drops += 1

    def _choose_in_window(
        self, board: Board, exact: Callable[[int], float] | None, passes: Callable[[int], bool]
    ) -> int | None:
        if self._limit is None:
            return super()._choose_in_window(board, exact, passes)
        sent = self._window_nodes(passes)  # what kube-scheduler sends the extender
        if not sent:
            return None
        r = self._from % len(sent)
        limit = self._limit

        def names_decided() -> Iterator[int]:
            """The names a bounded call decides: from the extender's rotating start, until it has
            decided ``limit`` and one of them fits."""
            fits = False
            for k, n in enumerate(sent[r:] + sent[:r]):
                if k >= limit and fits:
                    self._from += k
                    return
                fits = fits or board.score(n) is not None
                yield n
            self._from += len(sent)

        return self._best_of(board, exact, names_decided())


def one(job: tuple[str, int, int, int]) -> tuple[int, int, int, float, float, int, float]:
    folder, decided, first, seed = job
    trace = load(folder)
    Bounded.decided, Bounded.first = decided, first
    made: list[Bounded] = []

    class Made(Bounded):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.setup()
            made.append(self)

    real = sim.Cluster
    sim.Cluster = Made  # type: ignore[misc]
    started = time.process_time()
    try:
        curve = sim.replay(trace, arrivals(trace, seed), "fragmentation", seed, score_percent=0)
    finally:
        sim.Cluster = real  # type: ignore[misc]
    took = time.process_time() - started
    return decided, first, seed, curve.unallocated_at(100), curve.unallocated_at(130), made[0].bounded_pods, took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=None)
    ap.add_argument("--seeds", default="42-44")
    ap.add_argument("--decided", type=int, default=385, help="names a bounded call decides")
    ap.add_argument("--first", type=int, default=4, help="the worst case: pods of a key bounded")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    folder = args.trace or str(cli.default_trace())
    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    configs = [(0, 1), (args.decided, 1), (args.decided, args.first)]
    jobs = [(folder, d, f, s) for d, f in configs for s in seeds]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(one, jobs))
    nodes = len(load(folder).nodes)
    print(f"default trace, {nodes} nodes, fragmentation, score_percent 0 (adaptive), seeds {args.seeds}")
    print("| filter calls | pods bounded | unallocated @100% | unallocated @130% | replay s |")
    print("|---|---:|---:|---:|---:|")
    for d, f in configs:
        mine = [r for r in runs if (r[0], r[1]) == (d, f)]
        label = "every name decided" if not d else f"first {f} of a key decide {d} names"
        un, late = [r[3] for r in mine], [r[4] for r in mine]
        print(
            f"| {label} | {statistics.mean(r[5] for r in mine):.0f} | {statistics.mean(un):.2f} ± "
            f"{statistics.pstdev(un):.2f} | {statistics.mean(late):.2f} ± {statistics.pstdev(late):.2f} | "
            f"{statistics.mean(r[6] for r in mine):.1f} |"
        )


if __name__ == "__main__":
    main()
