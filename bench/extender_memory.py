"""The extender's resident memory at 5,000 nodes x 8 cards with 40,000 bound pods, and under churn.

In one process, on the in-memory backend (whose copies of the 40,000 pods count in the
RSS too): fill the cluster through the path ``flexai-sched serve`` answers kube-scheduler on
(``fastpath.Hot``: filter's JSON body in, the reply's bytes out, the best node alone, the
answer tables and the refresh run to its end between calls), then bind, each pod offered
``--offer`` random nodes (kube-scheduler's adaptive share: 10% of 5,000), report the RSS, then for
``--minutes`` delete a random bound pod and schedule a new one (new name, new UID, one of
the 12 shapes of bench/extender_latency.py), printing the RSS every ``--every`` seconds.
The first ``--warmup`` minutes fill the bounded caches (pending requests, interned shapes,
per-node verdicts); the RSS after them must not grow.

    .venv/bin/python bench/extender_memory.py [--nodes 5000] [--pods 40000] [--minutes 30]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import time

from extender_latency import SHAPES, pod

from flexai_sched import demo
from flexai_sched.app import MAX_BODY
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import BindError, Extender
from flexai_sched.fastpath import Hot
from flexai_sched.metrics import Metrics
from flexai_sched.state import ClusterState


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods", type=int, default=40_000)
    ap.add_argument("--offer", type=int, default=500, help="nodes offered per pod")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--every", type=float, default=60.0)
    args = ap.parse_args()
    t0 = time.time()
    print(f"start: RSS {rss_mib():.0f} MiB")
    inv = demo.inventory(
        {
            "nodes": [
                {"name": f"n{i:05d}", "cards": [{"model": "NVIDIA H200", "memoryMiB": 143771, "count": 8}]}
                for i in range(args.nodes)
            ]
        }
    )
    state = ClusterState()
    backend = MemoryBackend(inv)  # heartbeats every 10 s, as in the demo
    backend.start(state)
    ext = Extender(state, backend, Settings())
    hot = Hot(ext, Metrics(state), MAX_BODY)  # the served app's body limit
    names = [n.name for n in inv]
    offer = min(args.offer, len(names))  # kube-scheduler never sends more names than nodes
    rng = random.Random(5)
    print(f"{args.nodes} nodes: RSS {rss_mib():.0f} MiB")
    bound: list[tuple[str, str]] = []  # (name, uid) of bound pods
    serial = 0

    def schedule() -> bool:
        nonlocal serial
        serial += 1
        name = f"m{serial}"
        p = pod(name, rng.choice(SHAPES))
        p["metadata"]["uid"] = f"uid-{name}"
        backend.create_pod(p)
        body = json.dumps({"Pod": p, "Nodes": None, "NodeNames": rng.sample(names, offer)}).encode()
        reply = hot("/filter", body)
        assert reply is not None
        fits = json.loads(reply)["NodeNames"]
        while not ext.refresh_step():  # what the loop does between kube-scheduler's calls
            pass
        if not fits:
            backend.delete_pod("bench", name)
            return False
        # One node answered: kube-scheduler skips prioritize. More (the answer of every fit): ask.
        best = fits[0] if len(fits) == 1 else max(ext.prioritize(p, fits), key=lambda hs: hs[1])[0]
        try:
            ext.bind("bench", name, f"uid-{name}", best)
        except BindError:
            backend.delete_pod("bench", name)
            return False
        bound.append((name, f"uid-{name}"))
        return True

    while len(bound) < args.pods:
        schedule()
    gc.collect()
    gc.freeze()  # as the app does after its initial sync
    used = sum(sum(u.cores for u in n.usage) for n in state.nodes()) / (len(state) * 8)
    print(
        f"{len(bound)} bound pods ({serial} tried, cores allocated {used:.1f}%) after {time.time() - t0:.0f}s: "
        f"RSS {rss_mib():.0f} MiB (max {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)"
    )
    start = time.time()
    next_print = start
    warm_rss = None
    churned = 0
    while (now := time.time()) - start < args.minutes * 60:
        if now >= next_print:
            minute = (now - start) / 60
            rss = rss_mib()
            if warm_rss is None and minute >= args.warmup:
                warm_rss = rss
            print(
                f"churn {minute:5.1f} min: {churned} deletes+creates, {len(bound)} bound, RSS {rss:.0f} MiB"
                + (f" ({rss - warm_rss:+.0f} MiB since warm-up)" if warm_rss is not None else " (warm-up)"),
                flush=True,
            )
            next_print += args.every
        name, uid = bound.pop(rng.randrange(len(bound)))
        backend.delete_pod("bench", name)
        while not schedule():
            pass
        churned += 1
    rss = rss_mib()
    print(
        f"end: {churned} deletes+creates in {args.minutes:.0f} min, RSS {rss:.0f} MiB"
        + (f", {rss - warm_rss:+.0f} MiB since the end of warm-up ({args.warmup:.0f} min)" if warm_rss else "")
    )
    backend.stop()


if __name__ == "__main__":
    main()
