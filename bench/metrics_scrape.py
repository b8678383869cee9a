"""CPU time of one /metrics page at cluster scale: the per-card gauges through prometheus_client
(every sample rendered on every scrape, as before ``metrics.CardText``) against ``CardText``
(cold: the first scrape; warm: nothing changed; after one bind: one node's lines again).

    PYTHONPATH=.:bench .venv/bin/python bench/metrics_scrape.py --nodes 5000

The cluster: 5,000 nodes of 8 H200 cards filled to half their cores through ``Extender.bind``,
as bench/extender_latency.py builds it. The scrape runs on a worker thread of the server but
holds the GIL throughout, so filter and prioritize wait for it.
"""

from __future__ import annotations

import argparse
import random
import time

from extender_latency import SHAPES, pod

from flexai_sched import demo
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import BindError, Extender
from flexai_sched.metrics import CardSamples, Metrics
from flexai_sched.state import ClusterState


def cpu_ms(f: object) -> tuple[float, bytes]:
    t = time.process_time()
    out = f()  # type: ignore[operator]
    return (time.process_time() - t) * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    args = ap.parse_args()
    spec = {"model": "NVIDIA H200", "memoryMiB": 143771, "count": 8}
    inv = demo.inventory({"nodes": [{"name": f"n{i:05d}", "cards": [spec]} for i in range(args.nodes)]})
    state = ClusterState()
    backend = MemoryBackend(inv, heartbeat_every=None)
    backend.start(state)
    ext = Extender(state, backend, Settings())
    rng = random.Random(7)
    names = [n.name for n in inv]
    filled, target, i = 0, args.nodes * 8 * 100 // 2, 0
    while filled < target:
        p = pod(f"fill{i}", rng.choice(SHAPES[:4] + SHAPES[5:8]))
        backend.create_pod(p)
        ext.parse(p)
        try:
            filled += sum(s.cores for s in ext.bind("bench", f"fill{i}", f"uid-fill{i}", rng.choice(names)).slices)
        except BindError:
            pass
        i += 1
    metrics = Metrics(state)
    old_ms, old = cpu_ms(CardSamples(state).render)
    cold_ms, page = cpu_ms(metrics.exposition)
    warm_ms, _ = cpu_ms(metrics.exposition)
    p = pod("one-more", SHAPES[0])
    backend.create_pod(p)
    ext.parse(p)
    ext.bind("bench", "one-more", "uid-one-more", names[17])
    one_ms, _ = cpu_ms(metrics.exposition)
    print(f"{args.nodes} nodes x 8 cards, page {len(page) / 1e6:.1f} MB (card gauges as before: {page.endswith(old)})")
    print(f"card gauges through prometheus_client: {old_ms:.0f} ms CPU per scrape")
    print(f"CardText page: cold {cold_ms:.0f} ms, warm {warm_ms:.0f} ms, after one bind {one_ms:.0f} ms")


if __name__ == "__main__":
    main()
