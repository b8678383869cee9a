"""What fails, and what is left, when a replay reaches 100% arrived GPU demand.

    python bench/trace_failures.py [--variant default] [--policy fragmentation] [--seeds 42-44]

Replays the trace as `flexai-sched sim` does (same arrivals, same Cluster) up to 100% of the
cluster's GPU arrived, then prints per pod class (cards x share) the pods that failed and the
GPU they asked, as a percent of the cluster, and what is free at that point: whole cards, and
partly used cards by their free part; the idle whole cards by what their host has left; the
holes the most placed large share leaves that no share that arrived fits. At 100% arrived the
failed demand equals the free GPU (what arrived and was placed fills capacity minus what is
free), so this splits the published metric into what failed and where the free capacity sits.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flexai_sched.sim import cli  # noqa: E402
from flexai_sched.sim.replay import Cluster  # noqa: E402
from flexai_sched.sim.workload import arrivals  # noqa: E402


def one(variant: str, policy: str, seed: int) -> None:
    trace = cli._trace(cli.sources(None, variant)[0])  # a shipped or a generated variant
    cluster = Cluster(trace, policy, seed)
    cap = trace.gpu_capacity_milli
    arrived = 0
    failed: collections.Counter[tuple[int, int]] = collections.Counter()
    placed: collections.Counter[tuple[int, int]] = collections.Counter()
    failed_by_spec: collections.Counter[str] = collections.Counter()
    arrived_shares: list[tuple[int, int]] = []
    for pod in arrivals(trace, seed):
        arrived += pod.gpu_demand_milli
        if arrived > cap:
            break
        if 0 < pod.gpu_milli < 1000:
            arrived_shares.append((pod.num_gpu, pod.gpu_milli))
        ok = cluster.schedule(pod)
        (placed if ok else failed)[(pod.num_gpu, pod.gpu_milli)] += 1
        if not ok:
            failed_by_spec["|".join(sorted(pod.gpu_spec)) or "any model"] += pod.gpu_demand_milli
    lost = sum(n * g * k for (n, g), k in failed.items())
    print(f"{variant} / {policy} / seed {seed}: failed GPU {100 * lost / cap:.2f}% of the cluster")
    for (n, g), k in sorted(failed.items(), key=lambda kv: -kv[0][0] * kv[0][1] * kv[1])[:8]:
        print(f"  {n} x {g / 10:.0f}%: {k} failed ({100 * n * g * k / cap:.2f}%), {placed[(n, g)]} placed")
    print(
        "  failed by GPU model allowed: "
        + ", ".join(f"{spec} {100 * d / cap:.2f}%" for spec, d in failed_by_spec.most_common())
    )
    whole, holes = 0, collections.Counter[int]()
    idle: collections.Counter[str] = collections.Counter()
    cards: collections.Counter[str] = collections.Counter()
    for node in cluster.state.nodes():
        for card, used in zip(node.cards, node.usage, strict=True):
            cards[card.model] += 1
            if used.vgpus == 0 and used.cores == 0:
                whole += 1
                idle[card.model] += 1
            elif used.cores < 100:
                holes[100 - used.cores] += 1
    hole_pct = sum(f * k for f, k in holes.items()) / (cap / 1000)
    top = ", ".join(f"{f}%: {k}" for f, k in holes.most_common(6))
    print(
        f"  free then: {whole} whole cards; partly used cards with room {hole_pct:.2f}% of the cluster "
        f"(most common free parts: {top})"
    )
    print("  idle cards by model: " + ", ".join(f"{m} {k}/{cards[m]}" for m, k in idle.most_common()))
    # Whole cards idle while whole-card pods fail: what their hosts have left.
    short: collections.Counter[str] = collections.Counter()
    for i, name in enumerate(cluster.names):
        state = cluster.state.node(name)
        assert state is not None
        n = sum(1 for u in state.usage if u.vgpus == 0 and u.cores == 0)
        if n:
            h = cluster.hosts[i]
            why = (
                "0-2 cores free" if h.cpu_free < 3000 else "< 4 GiB free" if h.memory_free < 4096 else "host room left"
            )
            short[why] += n
    print("  idle whole cards by their host: " + ", ".join(f"{w} {k}" for w, k in short.most_common()))
    # The largest share placed most leaves a hole only smaller shares fit: each beyond those
    # that arrived leaves it for good (a lower bound on that part of the free GPU).
    big = max(
        ((g, k) for (n, g), k in placed.items() if n == 1 and 500 < g < 1000),
        key=lambda gk: gk[0] * gk[1],
        default=None,
    )
    if big is not None:
        g, k = big
        small = sum(1 for n, share in arrived_shares if n == 1 and share <= 1000 - g)
        bound = (1000 - g) * max(0, k - small) / cap
        print(
            f"  {g / 10:.0f}% shares placed {k}, shares of <= {100 - g / 10:.0f}% arrived {small}: "
            f"holes nothing that arrived fits >= {100 * bound:.2f}% of the cluster"
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="default")
    ap.add_argument("--policy", default="fragmentation")
    ap.add_argument("--seeds", default="42-44")
    args = ap.parse_args()
    lo, _, hi = args.seeds.partition("-")
    for seed in range(int(lo), int(hi or lo) + 1):
        one(args.variant, args.policy, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
