"""The first pod of each new shape (in-process): filter then prioritize over every node's name.

For the 12 shapes of bench/extender_latency.py, each the first of its shape (no cached
verdicts). By default on an empty cluster (every node alike); ``--fill`` fills it to half its
cores first, as bench/extender_latency.py does (every node different), and ``--hot`` sends the
calls through ``fastpath.Hot``, as the service answers kube-scheduler (its filter calls are the
bounded ones, where the tree has them). Wall and CPU time (``time.process_time``: less moved
by other processes on a shared machine) per filter + prioritize. Run it with
``PYTHONPATH=<tree>`` for two trees, alternating, to compare them on one machine state.

    PYTHONPATH=.:bench .venv/bin/python bench/extender_cold.py [--nodes 5000] [--fill] [--hot]
"""

from __future__ import annotations

import argparse
import statistics
import time

import msgspec
from extender_latency import SHAPES, fill, pod

from flexai_sched import demo
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.fastpath import Hot
from flexai_sched.metrics import Metrics
from flexai_sched.state import ClusterState


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--fill", action="store_true", help="half the cores allocated first")
    ap.add_argument("--hot", action="store_true", help="through fastpath.Hot, as the service answers")
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
    if args.fill:
        fill(ext, backend, names)
    hot = Hot(ext, Metrics(state), 64 << 20)
    took, cpu = [], []
    for j, shape in enumerate(SHAPES):
        p = pod(f"w{j}", shape)
        t, c = time.perf_counter(), time.process_time()
        if args.hot:
            reply = hot("/filter", msgspec.json.encode({"Pod": p, "NodeNames": names}))
            assert reply is not None
            hot("/prioritize", msgspec.json.encode({"Pod": p, "NodeNames": msgspec.json.decode(reply)["NodeNames"]}))
        else:
            ext.prioritize(p, ext.filter(p, names).fits)
        took.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    what = "half-full" if args.fill else "empty"
    print(
        f"{what} {args.nodes}-node cluster, first pod of each shape{' (Hot)' if args.hot else ''}: filter+prioritize "
        f"mean {statistics.mean(took):.1f} ms, max {max(took):.1f} ms; CPU mean {statistics.mean(cpu):.1f} ms "
        f"(without the first shape {statistics.mean(cpu[1:]):.1f} ms)"
    )
    backend.stop()


if __name__ == "__main__":
    main()
