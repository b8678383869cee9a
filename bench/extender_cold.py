"""The first pod of each new shape on an empty cluster: every node alike (in-process).

Filter then prioritize over every node's name, for the 12 shapes of
bench/extender_latency.py, each the first of its shape (no cached verdicts). Run it with
``PYTHONPATH=<tree>`` for two trees, alternating, to compare them on one machine state.

    PYTHONPATH=. .venv/bin/python bench/extender_cold.py [--nodes 5000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from extender_latency import SHAPES, pod

from flexai_sched import demo
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.state import ClusterState


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    args = ap.parse_args()
    inv = demo.inventory(
        {
            "nodes": [
                {"name": f"n{i:05d}", "cards": [{"model": "NVIDIA H200", "memoryMiB": 143771, "count": 8}]}
                for i in range(args.nodes)
            ]
        }
    )
    state = ClusterState()
    backend = MemoryBackend(inv)
    backend.start(state)
    ext = Extender(state, backend, Settings())
    names = [n.name for n in inv]
    took = []
    for j, shape in enumerate(SHAPES):
        p = pod(f"w{j}", shape)
        t = time.perf_counter()
        ext.prioritize(p, ext.filter(p, names).fits)
        took.append((time.perf_counter() - t) * 1e3)
    print(
        f"empty {args.nodes}-node cluster, first pod of each shape: filter+prioritize "
        f"mean {statistics.mean(took):.1f} ms, max {max(took):.1f} ms"
    )
    backend.stop()


if __name__ == "__main__":
    main()
