"""What arrives in one replay, and the target workload a fragmentation-aware policy plans for.

The published method (FGD paper and its simulator): for each seed, pods are drawn
with replacement from the trace until their requested GPU reaches ``until`` (130%)
of the cluster's GPU capacity, then shuffled. Every pod is tried once, in that order.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

from flexai_core.model import FULL_CORES

from ..workload import TaskClass, Workload
from .trace import Trace, TracePod

SEEDS = tuple(range(42, 52))
UNTIL = 1.3
# ``:learned`` replays (what the extender does, Extender.learn_workload): the built-in
# prior until this many pods are placed, then the placed pods' workload, relearned every
# LEARN_EVERY placements.
LEARN_FIRST = 100
LEARN_EVERY = 1000


def arrivals(trace: Trace, seed: int, until: float = UNTIL) -> list[TracePod]:
    """The pods of one replay, in arrival order (deterministic per seed)."""
    rng = random.Random(seed)
    target = until * trace.gpu_capacity_milli
    out: list[TracePod] = []
    requested = 0
    while requested < target:
        pod = trace.pods[rng.randrange(len(trace.pods))]
        out.append(pod)
        requested += pod.gpu_demand_milli
    rng.shuffle(out)
    return out


def target_workload(trace: Trace) -> Workload:
    """The trace's task classes weighted by how often they occur (as the paper does),
    tasks without GPUs included (FGD counts them; ``Workload`` keeps them apart)."""
    return workload_of(trace.pods)


def workload_of(pods: Iterable[TracePod], models: bool = True) -> Workload:
    """Task classes of ``pods`` by count; ``models=False`` drops the GPU-model constraint
    (what a planner that never saw the pods' selectors would learn; the extender records
    the selector of each pod it binds, ``Extender.learn_workload``)."""
    counts = Counter(
        (
            p.num_gpu,
            FULL_CORES if p.gpu_milli >= 1000 else p.cores,
            p.cpu_milli,
            p.memory_mib,
            p.gpu_spec if models else frozenset(),
        )
        for p in pods
    )
    return Workload.of(
        TaskClass(n, cores, float(k), cpu, mem, spec) for (n, cores, cpu, mem, spec), k in counts.items()
    )
