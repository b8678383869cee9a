"""What one re-pricing pass costs the extender: free cards per node kind over every node.

    .venv/bin/python bench/reprice_cost.py [--nodes 5000] [--passes 20]

Builds a demo cluster of 8-card nodes, half H200 and half T4 (two kinds, so the default policy
re-prices), then times ``Extender.reprice``: the first pass sums every node, later passes only
the nodes changed since (none here, the floor of a pass).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexai_sched.backend import MemoryBackend  # noqa: E402
from flexai_sched.config import Settings  # noqa: E402
from flexai_sched.extender import Extender  # noqa: E402
from flexai_sched.state import ClusterState  # noqa: E402
from flexai_sched.workload import NodeKind  # noqa: E402
from tests.sched.fixtures import node  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--passes", type=int, default=20)
    args = ap.parse_args()
    state = ClusterState()
    backend = MemoryBackend(
        [node(f"n{i}", cards=8, model="H200" if i % 2 else "T4") for i in range(args.nodes)], heartbeat_every=None
    )
    ext = Extender(state, backend, Settings(node_policy="fragmentation"))
    backend.start(state)
    half = args.nodes // 2
    ext._node_policy.use_capacity(  # type: ignore[attr-defined]
        {"H200": 8 * half, "T4": 8 * half},
        {NodeKind("H200", 8): half, NodeKind("T4", 8): half},
    )
    started = time.perf_counter()
    ext.reprice()
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.passes):
        ext.reprice()
    later = (time.perf_counter() - started) / args.passes
    print(
        f"{args.nodes} nodes x 8 cards, 2 kinds: first pass {1000 * first:.1f} ms, later passes {1000 * later:.1f} ms"
    )


if __name__ == "__main__":
    main()
