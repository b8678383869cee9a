"""Stress workloads built from a pod list, as the FGD artifact's ``gpuspec`` and ``multigpu`` variants were.

The published trace (alibaba/clusterdata, cluster-trace-gpu-v2023) has variants the paper's
simulator was run on beyond the nine shipped here:

- ``gpuspecNN``: the default pods, row for row, with a GPU-model constraint (``gpu_spec``)
  added to NN% of the GPU pods ("about 33% of GPU tasks in our production cluster have GPU
  type constraints", its README). In the published ``gpuspec33`` the constraint depends on
  the pod's kind: shares ask mostly for T4 or P100 (small cards); whole cards for T4, the
  V100s or G2. ``SPEC_MIX`` is that mix, counted on 121 constrained pods of two stretches
  of the published file (rows 0-219 and 4172-4393);
- ``multigpuNN``: the default pods, then more multi-GPU pods (2, 4 or 8 whole cards) under
  new names until multi-GPU pods ask NN% of all GPU demand (the published ``multigpu50``
  keeps the 8,152 default rows and appends about 900 such pods, their demand about half
  of the total). Ours draws the added pods from the trace's own multi-GPU pods, host
  requests included; the published files also have multi-GPU pods of host sizes the
  default trace lacks.

The draws are seeded (``SEED``), so a generated variant is the same on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from .trace import Trace, TracePod

SEED: Final = 2023
# Constraint -> pods in the published gpuspec33 sample, by kind.
SPEC_MIX: Final[dict[str, tuple[tuple[str, int], ...]]] = {
    "share": (("T4", 37), ("P100", 14), ("G2|P100|T4|V100M16|V100M32", 2)),
    "whole": (
        ("T4", 26),
        ("V100M16|V100M32", 17),
        ("G2", 13),
        ("P100|V100M16|V100M32", 5),
        ("G3", 3),
        ("P100|T4|V100M16|V100M32", 2),
        ("G2|P100|T4|V100M16|V100M32", 1),
        ("V100M32", 1),
    ),
}
GPUSPEC: Final = (5, 10, 20, 25, 33)
MULTIGPU: Final = (20, 30, 40, 50)
# name -> (kind, percent); built from the folder's default pod list.
GENERATED: Final[dict[str, tuple[str, int]]] = {
    **{f"gen-gpuspec{p:02d}": ("gpuspec", p) for p in GPUSPEC},
    **{f"gen-multigpu{p}": ("multigpu", p) for p in MULTIGPU},
}


def generate(base: Trace, name: str, seed: int = SEED) -> Trace:
    """The generated variant ``name`` (see ``GENERATED``) of ``base``'s pods, on its nodes."""
    try:
        kind, pct = GENERATED[name]
    except KeyError:
        raise ValueError(f"variant {name!r}: not a generated one (known: {', '.join(GENERATED)})") from None
    rng = random.Random(f"{seed}/{name}")
    pods = gpuspec(base.pods, pct / 100, rng) if kind == "gpuspec" else multigpu(base.pods, pct / 100, rng)
    return Trace(name, base.nodes, pods)


def gpuspec(pods: Sequence[TracePod], share: float, rng: random.Random) -> tuple[TracePod, ...]:
    """``pods`` with a GPU-model constraint on round(share x GPU pods) of the GPU pods, drawn
    from ``SPEC_MIX`` by kind. Pods that already have one keep it and count."""
    gpu = [i for i, p in enumerate(pods) if p.num_gpu]
    want = round(share * len(gpu)) - sum(1 for i in gpu if pods[i].gpu_spec)
    free = [i for i in gpu if not pods[i].gpu_spec]
    out = list(pods)
    for i in rng.sample(free, max(0, min(want, len(free)))):
        mix = SPEC_MIX["share" if pods[i].gpu_milli < 1000 else "whole"]
        (spec,) = rng.choices([s for s, _ in mix], [n for _, n in mix])
        out[i] = replace(pods[i], gpu_spec=frozenset(spec.split("|")))
    return tuple(out)


def multigpu(pods: Sequence[TracePod], share: float, rng: random.Random) -> tuple[TracePod, ...]:
    """``pods``, then copies of its multi-GPU pods (new names) until multi-GPU pods ask at
    least ``share`` of all GPU demand."""
    multi = [p for p in pods if p.num_gpu >= 2]
    if not multi or not 0 <= share < 1:
        raise ValueError(f"multi-GPU share {share}: needs multi-GPU pods to copy and a share below 1")
    total = sum(p.gpu_demand_milli for p in pods)
    have = sum(p.gpu_demand_milli for p in multi)
    out = list(pods)
    while have < share * total:
        p = rng.choice(multi)
        out.append(replace(p, name=f"{p.name}-x{len(out)}"))
        have += p.gpu_demand_milli
        total += p.gpu_demand_milli
    return tuple(out)


def constrained_share(pods: Sequence[TracePod]) -> float:
    """The share of GPU pods with a GPU-model constraint."""
    gpu = [p for p in pods if p.num_gpu]
    return sum(1 for p in gpu if p.gpu_spec) / len(gpu) if gpu else 0.0


def multigpu_share(pods: Sequence[TracePod]) -> float:
    """The share of GPU demand asked by multi-GPU pods."""
    total = sum(p.gpu_demand_milli for p in pods)
    return sum(p.gpu_demand_milli for p in pods if p.num_gpu >= 2) / total if total else 0.0
