"""Fragmentation-aware placement: ``fgd`` (FGD, re-derived from its paper) and ``fragmentation`` (ours).

Units: a card's free capacity is in percent (100 - allocated cores); host CPU in
millicores; memory in MiB. Pure arithmetic, no I/O.

The measure (Weng et al., "Beware of Fragmentation", USENIX ATC'23, section 4). A
target workload M is a set of task classes m with weights p_m. For a node n, the
free GPU capacity that class m cannot use is the node's fragmentation for m:

- m cannot run on n at all (host CPU or memory short, fewer cards with room than it
  needs, no card of an allowed model): F_n(m) = all free capacity of n;
- otherwise: F_n(m) = free capacity of the cards whose free part is less than m's
  per-card demand, min(d_m, 100).

F_n(M) = sum_m p_m F_n(m). FGD puts a task on the node, and the card, where F_n(M)
grows least: a step along the steepest descent of cluster fragmentation.

``fragmentation`` (ours) keeps that measure with three changes, each aimed at what
the published metric counts, GPU capacity left unallocated:

1. classes are weighted by their GPU demand, not their count: an 8-card task that
   fails strands 8 GPUs, a 10% share strands a tenth of one;
2. a host whose CPU or memory runs out strands its free GPUs: the host-short part is
   measured against the *expected* host request of the class, so the score depends
   on the node and the pod's GPU shape only (the extender caches it per node version);
3. among nodes of equal growth, the one with the least free capacity left wins
   (best fit), so empty nodes stay empty for the large tasks.

Two optional abilities extend ``policies.Policy`` (kube-scheduler style: small,
separate interfaces): ``WorkloadAware`` (take the target workload) and ``HostAware``
(score with the host's CPU and memory as kube-scheduler counts pod requests).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .model import FULL_CORES, Card, CardUsage


@dataclass(frozen=True, slots=True)
class Host:
    """A node's host resources: allocatable and what bound pods request."""

    cpu_milli: int
    memory_mib: int
    cpu_used: int = 0
    memory_used: int = 0

    @property
    def cpu_free(self) -> int:
        return self.cpu_milli - self.cpu_used

    @property
    def memory_free(self) -> int:
        return self.memory_mib - self.memory_used

    def plus(self, cpu_milli: int, memory_mib: int) -> Host:
        return Host(self.cpu_milli, self.memory_mib, self.cpu_used + cpu_milli, self.memory_used + memory_mib)


@dataclass(frozen=True, slots=True)
class TaskClass:
    """One kind of task in the target workload; ``cores`` 100 means whole cards."""

    vgpus: int
    cores: int
    weight: float
    cpu_milli: int = 0
    memory_mib: int = 0
    models: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Workload:
    """The target workload: task classes whose weights sum to 1 (GPU tasks only:
    a task without GPUs finds every free GPU a fragment wherever it goes, the same
    constant for every placement)."""

    classes: tuple[TaskClass, ...]

    @staticmethod
    def of(classes: Iterable[TaskClass]) -> Workload:
        merged: dict[tuple[object, ...], float] = {}
        for c in classes:
            if c.vgpus and c.weight > 0:
                key = (c.vgpus, c.cores, c.cpu_milli, c.memory_mib, c.models)
                merged[key] = merged.get(key, 0.0) + c.weight
        total = sum(merged.values()) or 1.0
        return Workload(
            tuple(
                TaskClass(v, cores, w / total, cpu, mem, models)  # type: ignore[arg-type]
                for (v, cores, cpu, mem, models), w in sorted(merged.items(), key=lambda kv: repr(kv[0]))
            )
        )

    def by_gpu_demand(self) -> Workload:
        """The same classes weighted by count x GPU demand (what a failure strands)."""
        return Workload.of(
            TaskClass(c.vgpus, c.cores, c.weight * c.vgpus * c.cores, c.cpu_milli, c.memory_mib, c.models)
            for c in self.classes
        )

    def gpu_shapes(self) -> Workload:
        """Host requests folded into per-shape means (for scores that ignore the pod's host request)."""
        acc: dict[tuple[int, int, frozenset[str]], list[float]] = {}
        for c in self.classes:
            a = acc.setdefault((c.vgpus, c.cores, c.models), [0.0, 0.0, 0.0])
            a[0] += c.weight
            a[1] += c.weight * c.cpu_milli
            a[2] += c.weight * c.memory_mib
        return Workload.of(
            TaskClass(v, cores, w, round(cpu / w), round(mem / w), models)
            for (v, cores, models), (w, cpu, mem) in acc.items()
        )


# A generic prior for the extender, where no trace says what is coming: whole cards
# (1, 2, 4, 8) and shares of common sizes, equally likely. The simulator replaces it
# with the trace's own distribution, as the paper does.
DEFAULT_WORKLOAD = Workload.of(
    [TaskClass(n, FULL_CORES, 1.0) for n in (1, 2, 4, 8)] + [TaskClass(1, c, 1.0) for c in (10, 25, 30, 50, 75)]
)


@runtime_checkable
class WorkloadAware(Protocol):
    def use_workload(self, workload: Workload) -> None: ...


@runtime_checkable
class HostAware(Protocol):
    """A policy whose node score also reads the node's host CPU and memory.

    ``pod_host_dependent``: the score reads the pod's own host request. When False,
    callers may cache scores per pod GPU shape (the extender's fit-cache key) and pass
    any request; the policy plans with its workload's expected request instead.
    """

    pod_host_dependent: bool

    def host_node_score(
        self,
        cards: Sequence[Card],
        before: Sequence[CardUsage],
        after: Sequence[CardUsage],
        host: Host,
        pod_cpu_milli: int,
        pod_memory_mib: int,
    ) -> float: ...


# ---- the measure ----


def card_free(card: Card, used: CardUsage) -> int:
    """Percent of the card's compute not given out (0 for a card that takes nothing)."""
    if not card.healthy or used.vgpus >= card.max_vgpus:
        return 0
    return max(0, FULL_CORES - used.cores)


def _whole_free(card: Card, used: CardUsage) -> bool:
    return card.healthy and used.vgpus == 0 and used.cores == 0 and used.memory_mib == 0


def node_fragmentation(
    cards: Sequence[Card], usage: Sequence[CardUsage], workload: Workload, host: Host | None = None
) -> float:
    """F_n(M) in percent of one card: the free capacity the workload is expected not to use."""
    frees = [card_free(c, u) for c, u in zip(cards, usage, strict=True)]
    total = sum(frees)
    if total == 0:
        return 0.0
    whole = [_whole_free(c, u) for c, u in zip(cards, usage, strict=True)]
    mixed_models = len({c.model for c in cards}) > 1
    frag = 0.0
    for m in workload.classes:
        if host is not None and (m.cpu_milli > host.cpu_free or m.memory_mib > host.memory_free):
            frag += m.weight * total
            continue
        if m.models or mixed_models:
            frag += m.weight * _class_fragment(m, cards, frees, whole, total)
            continue
        frag += m.weight * _same_model_fragment(m, frees, whole, total)
    return frag


def _same_model_fragment(m: TaskClass, frees: list[int], whole: list[bool], total: int) -> float:
    if m.cores >= FULL_CORES:
        if sum(whole) < m.vgpus:
            return total
        return sum(f for f, w in zip(frees, whole, strict=True) if not w)
    if max(frees) < m.cores:
        return total
    return sum(f for f in frees if f < m.cores)


def _class_fragment(m: TaskClass, cards: Sequence[Card], frees: list[int], whole: list[bool], total: int) -> float:
    ok = [not m.models or c.model in m.models for c in cards]
    if m.cores >= FULL_CORES:
        if sum(1 for w, k in zip(whole, ok, strict=True) if w and k) < m.vgpus:
            return total
        return sum(f for f, w, k in zip(frees, whole, ok, strict=True) if not (w and k))
    if not any(f >= m.cores and k for f, k in zip(frees, ok, strict=True)):
        return total
    return sum(f for f, k in zip(frees, ok, strict=True) if f < m.cores or not k)


def card_fragment_growth(free_before: int, free_after: int, workload: Workload) -> float:
    """How much one card's expected fragment grows when its free part shrinks (card level of FGD)."""
    return _card_fragment(free_after, workload) - _card_fragment(free_before, workload)


def _card_fragment(free: int, workload: Workload) -> float:
    return sum(m.weight * free for m in workload.classes if free < min(m.cores, FULL_CORES))


# ---- the policies ----


class Fgd:
    """FGD as published: least growth of F_n(M) with the target workload weighted by
    task count, host CPU and memory in the "cannot run" case, cards chosen the same way."""

    name = "fgd"
    pod_host_dependent = True

    def __init__(self, workload: Workload = DEFAULT_WORKLOAD) -> None:
        self.use_workload(workload)

    def use_workload(self, workload: Workload) -> None:
        import os
        if os.environ.get("FGD_W") == "demand":
            workload = workload.by_gpu_demand()
        if os.environ.get("FGD_SHAPES") == "1":
            workload = workload.gpu_shapes()
        self._tie = float(os.environ.get("FGD_TIE", "0"))
        self._strand = float(os.environ.get("FGD_STRAND", "0"))
        gpu = sum(c.weight * c.vgpus * c.cores for c in workload.classes) or 1.0
        self._r = sum(c.weight * c.cpu_milli for c in workload.classes) / gpu
        self.workload = workload
        self._card_memo: dict[tuple[int, int], float] = {}

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        free = card_free(card, used)
        key = (free, cores)
        cost = self._card_memo.get(key)
        if cost is None:
            cost = card_fragment_growth(free, max(0, free - cores), self.workload)
            self._card_memo[key] = cost
        return cost

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return node_fragmentation(cards, before, self.workload) - node_fragmentation(cards, after, self.workload)

    def host_node_score(
        self,
        cards: Sequence[Card],
        before: Sequence[CardUsage],
        after: Sequence[CardUsage],
        host: Host,
        pod_cpu_milli: int,
        pod_memory_mib: int,
    ) -> float:
        import os
        if os.environ.get("FGD_EXPECTED") == "1":
            took = sum(card_free(c, u) for c, u in zip(cards, before)) - sum(card_free(c, u) for c, u in zip(cards, after))
            pod_cpu_milli = round(self._r * took) if took else 17600
            pod_memory_mib = 0
        host_after = host.plus(pod_cpu_milli, pod_memory_mib)
        left = sum(card_free(c, u) for c, u in zip(cards, after)) if self._tie else 0
        strand = 0.0
        if self._strand:
            fb = sum(card_free(c, u) for c, u in zip(cards, before))
            fa = sum(card_free(c, u) for c, u in zip(cards, after))
            strand = max(0.0, fb - max(0, host.cpu_free) / self._r) - max(0.0, fa - max(0, host_after.cpu_free) / self._r)
        return node_fragmentation(cards, before, self.workload, host) - node_fragmentation(
            cards, after, self.workload, host_after
        ) - self._tie * left + self._strand * strand


class Fragmentation:
    """Ours: least growth of the free GPU capacity the workload could not use, GPU demand
    weighted, counting capacity a short host cannot feed; best fit among equals.

    For each class m the node could take k_m = min(k_gpu, k_cpu, k_mem) more tasks of m
    alone: k_gpu from its cards (shares: sum of floor(free / d) over cards; whole cards:
    whole-free cards // vgpus), k_cpu and k_mem from the host's free CPU and memory over
    m's expected request. The unusable part for m is free - k_m x demand_m, so it counts
    the remainder a share leaves on a card (a 60% hole holds one 47% task and 13% of
    waste), not only cards with no room at all. Without host information (the extender
    today) only the cards count.
    """

    name = "fragmentation"
    pod_host_dependent = False
    # Weight of the best-fit tie-break: far below one percent of a card of growth.
    TIE = 1e-6

    def __init__(self, workload: Workload = DEFAULT_WORKLOAD) -> None:
        self.use_workload(workload)

    def use_workload(self, workload: Workload) -> None:
        import os
        shapes = workload.gpu_shapes().by_gpu_demand() if os.environ.get("FW", "demand") == "demand" else workload.gpu_shapes()
        self._nohost = os.environ.get("NOHOST") == "1"
        self._def = os.environ.get("FRAG_DEF", "k")
        self._classes = tuple(
            (c.vgpus, c.cores, c.vgpus * c.cores, c.cpu_milli, c.memory_mib, c.models, c.weight) for c in shapes.classes
        )
        # Expected host request of one task of the workload, per percent of GPU it brings.
        demand = sum(c.weight for c in shapes.classes) or 1.0
        self._cpu_per_pct = sum(c.weight * c.cpu_milli / (c.vgpus * c.cores) for c in shapes.classes) / demand
        self._card_memo: dict[tuple[int, int], float] = {}
        self._gpu_memo: dict[tuple[object, ...], tuple[int, tuple[int, ...], tuple[int, ...]]] = {}

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        free = card_free(card, used)
        key = (free, cores)
        cost = self._card_memo.get(key)
        if cost is None:
            after = max(0, free - cores)
            cost = self._card_waste(after, after == FULL_CORES) - self._card_waste(free, free == FULL_CORES)
            cost += self.TIE * free  # fullest card first among equals
            self._card_memo[key] = cost
        return cost

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return self._score(cards, before, after, None, 0, 0)

    def host_node_score(
        self,
        cards: Sequence[Card],
        before: Sequence[CardUsage],
        after: Sequence[CardUsage],
        host: Host,
        pod_cpu_milli: int,
        pod_memory_mib: int,
    ) -> float:
        return self._score(cards, before, after, None if self._nohost else host, 0, 0)

    def _score(
        self,
        cards: Sequence[Card],
        before: Sequence[CardUsage],
        after: Sequence[CardUsage],
        host: Host | None,
        cpu: int,
        mem: int,
    ) -> float:
        free_before, waste_before = self._waste(cards, before, host)
        if host is not None:
            # The pod's own host request is planned as the workload's expected one for its GPU.
            took = sum(card_free(c, u) for c, u in zip(cards, before, strict=True)) - sum(
                card_free(c, u) for c, u in zip(cards, after, strict=True)
            )
            expected_cpu = round(self._cpu_per_pct * took) if took else self._cpu_only_request
            host = host.plus(expected_cpu, 0)
        free_after, waste_after = self._waste(cards, after, host)
        # Best fit among equal growth: the least free capacity left (GPU, then host CPU).
        left = free_after + (host.cpu_free / self._cpu_per_pct / 1000 if host is not None and self._cpu_per_pct else 0)
        return waste_before - waste_after - self.TIE * left

    _cpu_only_request = 12000  # millicores a task without GPUs is planned to take

    def _waste(self, cards: Sequence[Card], usage: Sequence[CardUsage], host: Host | None) -> tuple[int, float]:
        total, ks, holes = self._gpu_capacity(cards, usage)
        if total == 0:
            return 0, 0.0
        waste = 0.0
        fgd = self._def == "fgd"
        for (vgpus, cores, demand, cpu, mem, _models, weight), k, hole in zip(self._classes, ks, holes, strict=True):
            if host is not None and k and (cpu > host.cpu_free or mem > host.memory_free):
                k = 0
            if fgd:
                waste += weight * (hole if k else total)
                continue
            if host is not None and k:
                if cpu:
                    k = min(k, max(0, host.cpu_free) // cpu)
                if mem:
                    k = min(k, max(0, host.memory_free) // mem)
            waste += weight * (total - min(total, k * demand))
        return total, waste

    def _gpu_capacity(
        self, cards: Sequence[Card], usage: Sequence[CardUsage]
    ) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """Total free percent, and per class how many tasks of it the cards could still take."""
        frees = tuple(card_free(c, u) for c, u in zip(cards, usage, strict=True))
        whole = tuple(_whole_free(c, u) for c, u in zip(cards, usage, strict=True))
        models = tuple(c.model for c in cards)
        key = (frees, whole, models)
        hit = self._gpu_memo.get(key)
        if hit is not None:
            return hit
        ks, holes = [], []
        for vgpus, cores, _demand, _cpu, _mem, allowed, _w in self._classes:
            ok = [not allowed or m in allowed for m in models]
            if cores >= FULL_CORES:
                ks.append(sum(1 for w, o in zip(whole, ok, strict=True) if w and o) // vgpus)
                holes.append(sum(f for f, w, o in zip(frees, whole, ok, strict=True) if not (w and o)))
            else:
                ks.append(sum(f // cores for f, o in zip(frees, ok, strict=True) if o))
                holes.append(sum(f for f, o in zip(frees, ok, strict=True) if f < cores or not o))
        hit = (sum(frees), tuple(ks), tuple(holes))
        self._gpu_memo[key] = hit
        return hit

    def _card_waste(self, free: int, whole: bool) -> float:
        waste = 0.0
        for vgpus, cores, _demand, _cpu, _mem, _models, weight in self._classes:
            usable = (FULL_CORES if whole else 0) if cores >= FULL_CORES else free // cores * cores
            waste += weight * (free - usable)
        return waste
