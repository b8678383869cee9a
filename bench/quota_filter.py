"""Filter cost with and without vGPU quotas, in process, side by side with a baseline checkout.

A cluster of ``--nodes`` nodes of 8 H200 cards, half full (filled through ``Extender.bind``),
and ``Extender.filter`` called with ``--names`` node names per call for pods of 8 recurring
shapes (warm fit cache, as in a live cluster), timed per call:

- ``no quotas``       no quota declared (the common case: must cost what the baseline costs);
- ``quota, other ns`` quotas declared, none for the pod's namespace (one dict lookup more);
- ``quota, own ns``   a quota on the pod's namespace that it fits (the check, once per call).

With ``--baseline DIR`` the ``no quotas`` case also runs in a child process importing
``flexai_sched`` from DIR (e.g. /work/main); every round runs the four cases in a shuffled
order, and the ratios are printed against the baseline.

    .venv/bin/python bench/quota_filter.py [--nodes 2000] [--names 500] [--calls 2000] [--rounds 5]
        [--baseline /work/main]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

SHAPES = [(1, 20, 3), (1, 10, 8), (1, 50, 40), (2, 30, 16), (1, 0, 4), (1, 5, 1), (1, 35, 10), (4, 25, 20)]
QUOTAS = """
quotas:
  - name: own
    namespace: bench
    hard: {huawei.com/vgpu-number: 1000000, huawei.com/vgpu-cores: 100000000, huawei.com/vgpu-memory-1Gi: 1000000}
  - name: other
    namespace: elsewhere
    hard: {huawei.com/vgpu-number: 1}
"""


def pod(name: str, shape: tuple[int, int, int], namespace: str = "bench") -> dict[str, Any]:
    n, cores, mem = shape
    lim = {
        "huawei.com/vgpu-number": str(n),
        "huawei.com/vgpu-cores": str(cores),
        "huawei.com/vgpu-memory-1Gi": str(mem),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
        "spec": {"containers": [{"name": "main", "image": "x", "resources": {"limits": lim}}]},
    }


def build(nodes: int) -> tuple[Any, Any, list[str]]:
    from flexai_sched import demo
    from flexai_sched.backend import MemoryBackend
    from flexai_sched.config import Settings
    from flexai_sched.extender import BindError, Extender
    from flexai_sched.state import ClusterState

    inv = demo.inventory(
        {
            "nodes": [
                {"name": f"n{i:05d}", "cards": [{"model": "NVIDIA H200", "memoryMiB": 143771, "count": 8}]}
                for i in range(nodes)
            ]
        }
    )
    state = ClusterState()
    backend = MemoryBackend(inv, heartbeat_every=None)
    backend.start(state)
    ext = Extender(state, backend, Settings(heartbeat_ttl_s=1e9))
    rng = random.Random(7)
    names = [n.name for n in inv]
    filled, target, i = 0, nodes * 8 * 100 // 2, 0
    while filled < target:
        p = pod(f"fill{i}", rng.choice(SHAPES[:7]), namespace="fill")
        backend.create_pod(p)
        ext.parse(p)
        try:
            a = ext.bind("fill", f"fill{i}", f"uid-fill{i}", rng.choice(names))
            filled += sum(s.cores for s in a.slices)
        except BindError:
            pass
        i += 1
    return ext, backend, names


def timed(ext: Any, names: list[str], calls: int, namespace: str) -> list[float]:
    rng = random.Random(11)
    pods = [pod(f"p{k}", s, namespace) for k, s in enumerate(SHAPES)]
    for p in pods:  # warm the fit cache: the steady state of a live cluster
        ext.filter(p, names)
    out = []
    for _ in range(calls):
        p = rng.choice(pods)
        sample = rng.sample(names, len(names))
        t0 = time.perf_counter()
        ext.filter(p, sample)
        out.append(time.perf_counter() - t0)
    return out


def child(args: argparse.Namespace) -> None:
    """Baseline side: one round of ``no quotas`` per line read from stdin."""
    ext, _, names = build(args.nodes)
    names = names[: args.names]
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(timed(ext, names, args.calls, "bench")), flush=True)


def summary(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs) * 1e6, xs[int(0.99 * (len(xs) - 1))] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--names", type=int, default=500)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", help="a checkout whose flexai_sched is the baseline")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    base = None
    if args.baseline:
        env = {**os.environ, "PYTHONPATH": os.path.abspath(args.baseline)}
        base = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                "--nodes",
                str(args.nodes),
                "--names",
                str(args.names),
                "--calls",
                str(args.calls),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=os.path.abspath(args.baseline),
        )
        assert base.stdout is not None and base.stdin is not None
        assert base.stdout.readline().strip() == "ready"
    ext, backend, names = build(args.nodes)
    names = names[: args.names]
    results: dict[str, list[float]] = {
        "baseline, no quotas": [],
        "no quotas": [],
        "quota, other ns": [],
        "quota, own ns": [],
    }
    order = random.Random(3)
    for _ in range(args.rounds):
        # A shuffled order each round: on a shared machine, load drifts between runs.
        for label in order.sample(list(results), len(results)):
            if label.startswith("baseline"):
                if base is not None:
                    assert base.stdin is not None and base.stdout is not None
                    base.stdin.write("go\n")
                    base.stdin.flush()
                    results[label] += json.loads(base.stdout.readline())
                continue
            backend.declare_quotas("" if label == "no quotas" else QUOTAS)
            results[label] += timed(ext, names, args.calls, "third" if label == "quota, other ns" else "bench")
    if base is not None:
        base.terminate()
    print(
        f"filter, {args.nodes} nodes x 8 cards half full, {args.names} names per call, "
        f"{args.rounds} rounds x {args.calls} calls"
    )
    ref = results["baseline, no quotas"] or results["no quotas"]
    ref_p50, ref_p99 = summary(ref)
    for label, xs in results.items():
        if not xs:
            continue
        p50, p99 = summary(xs)
        print(
            f"{label:22s} p50={p50:8.1f} us  p99={p99:8.1f} us   ratio p50={p50 / ref_p50:5.3f} "
            f"p99={p99 / ref_p99:5.3f}"
        )


if __name__ == "__main__":
    main()
