"""What the Kubernetes backend spends on one bound vGPU pod's watch event, side by side
for two source trees (e.g. main and a branch): the backend's pod handler (``_pod_event``:
host requests, decoding the allocation, and in trees that have it, checking it against
the pod's request and the node's cards) applied to the same pods, in one process per tree.

Pods: ``--pods`` bound vGPU pods over 100 nodes of 8 H200 cards, as the extender leaves
them (one or two containers, a sidecar on every fourth, their allocation annotation). Each
pod's event is applied ``--rounds`` times (the first adds the allocation; later ones are
the status updates a running pod's kubelet makes). The figures are medians over
``--repeat`` runs (the two trees alternate) of the time per event, the first event and
the later ones apart.

    .venv/bin/python bench/pod_event_cost.py --baseline /work/main [--pods 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_WORKER = r"""
import json, sys, tempfile, time
from pathlib import Path
from flexai_core import annotations as ann
from flexai_core import resources as res
from flexai_sched.kube import KubeBackend
from flexai_core.model import Allocation, Card, NodeInventory, Slice
from flexai_sched.state import ClusterState

pods_n, rounds, repeat = (int(x) for x in sys.argv[1:4])
H200 = 143771

def limits(n, cores, gib):
    return {res.VGPU_NUMBER: str(n), res.VGPU_CORES: str(cores), res.VGPU_MEMORY: str(gib)}

def make(i):
    node = f"gpu-{i % 100}"
    containers = [("main", 1 + i % 2, 20, 4)] + ([("side", 1, 10, 1)] if i % 4 == 0 else [])
    slices = [Slice(c, k, f"GPU-{node}-{k}", cores, gib * 1024)
              for c, n, cores, gib in containers for k in range(n)]
    alloc = Allocation.build("default", f"p{i}", f"uid-{i}", node, tuple(slices))
    return {"metadata": {"name": f"p{i}", "namespace": "default", "uid": f"uid-{i}", "resourceVersion": "1",
                         "annotations": {ann.POD_ALLOCATION: ann.encode_allocation(alloc)}},
            "spec": {"nodeName": node, "containers": [
                {"name": c, "image": "x", "resources": {"limits": limits(n, cores, gib),
                                                        "requests": {"cpu": "500m", "memory": "1Gi"}}}
                for c, n, cores, gib in containers]},
            "status": {"phase": "Running"}}

pods = [make(i) for i in range(pods_n)]
times = []
with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig") as cfg:
    cfg.write("{}"); cfg.flush()
    for _ in range(repeat):
        state = ClusterState()
        for n in range(100):
            state.upsert_node(NodeInventory(f"gpu-{n}", tuple(Card(k, f"GPU-gpu-{n}-{k}", "NVIDIA H200", H200)
                                                                  for k in range(8))))
        backend = KubeBackend(kubeconfig=cfg.name)
        backend._state = state
        t0 = time.perf_counter()
        for p in pods:
            backend._pod_event("ADDED", p)
        t1 = time.perf_counter()
        for r in range(1, rounds):
            for p in pods:
                backend._pod_event("MODIFIED", p)
        t2 = time.perf_counter()
        times.append(((t1 - t0) / pods_n, (t2 - t1) / ((rounds - 1) * pods_n)))
        assert len(state.keys()) == pods_n, "every pod counted"
print(json.dumps(times))
"""


def run(tree: Path, pods: int, rounds: int, repeat: int) -> list[tuple[float, float]]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, str(pods), str(rounds), str(repeat)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    return [(a, b) for a, b in json.loads(out.stdout)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, required=True, help="the other source tree (e.g. /work/main)")
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (the first event, then updates)")
    print(f"{args.pods} bound vGPU pods x {args.rounds} events each, median of {args.repeat} runs (us/event)")
    medians: dict[str, tuple[float, float]] = {}
    # Alternated, so that a change in the machine's load touches both trees alike.
    order = [("baseline", args.baseline.resolve()), ("this tree", REPO)]
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in order}
    for _ in range(args.repeat):
        for label, tree in order:
            runs[label] += run(tree, args.pods, args.rounds, 1)
    for label, tree in order:
        first = statistics.median(t[0] for t in runs[label])
        later = statistics.median(t[1] for t in runs[label])
        medians[label] = (first, later)
        print(f"  {label:9} first event {first * 1e6:6.1f}, later events {later * 1e6:6.1f}   ({tree})")
    (b1, b2), (t1, t2) = medians["baseline"], medians["this tree"]
    print(f"  ratio this tree / baseline: first event {t1 / b1:.2f}, later events {t2 / b2:.2f}")


if __name__ == "__main__":
    main()
