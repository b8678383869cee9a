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

from bisect import bisect_right
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
    """Ours: FGD's measure, weighted by GPU demand, plus the GPUs a short host strands.

    Phi_n = sum_m p_m F_n(m)                       (FGD's measure, classes weighted by
                                                    count x GPU demand)
          + STRAND x max(0, free_n - cpu_free_n / r)  (free GPU the host CPU cannot feed)

    where r is the workload's CPU per percent of GPU. FGD asks only whether *one* more
    task of each class fits the host, so a host can be eaten by CPU-only tasks while
    it still looks fine; the second term counts what the remaining CPU can feed in
    total. The score is Phi before - Phi after (the pod's own CPU taken from the host),
    then the least free GPU left among equal growth (best fit). With no host
    information (``node_score``, the extender today) only the cards count.

    Evaluated as sums over the workload's GPU shapes: per shape, whether it fits the
    cards and what it leaves, times the weight of its classes whose CPU fits the host
    (a prefix sum over the classes sorted by CPU); card summaries are memoised.
    """

    name = "fragmentation"
    pod_host_dependent = True
    # A larger host request never raises the score (so a score computed without the
    # request bounds it from above; flexai_sched.sim relies on that).
    request_lowers_score = True
    STRAND = 1.0
    TIE = 1e-6

    def __init__(self, workload: Workload = DEFAULT_WORKLOAD) -> None:
        self.use_workload(workload)

    def use_workload(self, workload: Workload) -> None:
        weighted = workload.by_gpu_demand()
        groups: dict[tuple[int, int, frozenset[str]], list[tuple[int, float]]] = {}
        for c in weighted.classes:
            groups.setdefault((c.vgpus, c.cores, c.models), []).append((c.cpu_milli, c.weight))
        self._shapes = tuple(groups)
        self._cpus: list[list[int]] = []
        self._prefix: list[list[float]] = []
        for shape in self._shapes:
            rows = sorted(groups[shape])
            self._cpus.append([cpu for cpu, _ in rows])
            acc, prefix = 0.0, [0.0]
            for _, w in rows:
                acc += w
                prefix.append(acc)
            self._prefix.append(prefix)
        gpu = sum(c.weight * c.vgpus * c.cores for c in workload.classes)
        self._cpu_per_pct = sum(c.weight * c.cpu_milli for c in workload.classes) / gpu if gpu else 0.0
        self._cards: dict[tuple[object, ...], tuple[int, tuple[tuple[int, int], ...]]] = {}
        self._card_costs: dict[tuple[int, int], float] = {}
        self._scores: dict[int, tuple[object, object, float]] = {}

    # ---- Policy ----

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        free = card_free(card, used)
        key = (free, cores)
        cost = self._card_costs.get(key)
        if cost is None:
            after = max(0, free - cores)
            cost = self._card_waste(after) - self._card_waste(free) + self.TIE * free  # fullest first among equals
            self._card_costs[key] = cost
        return cost

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        # The extender scores every node for every pod, and a node's usage tuples are the
        # same objects until it changes: remember scores by identity (holding the objects,
        # so an id is never reused while its entry lives).
        hit = self._scores.get(id(after))
        if hit is not None and hit[0] is after and hit[1] is before:
            return hit[2]
        total_b, shapes_b = self._summary(cards, before)
        total_a, shapes_a = self._summary(cards, after)
        score = self._phi(total_b, shapes_b, None) - self._phi(total_a, shapes_a, None) - self.TIE * total_a
        if len(self._scores) > 200_000:
            self._scores.clear()
        self._scores[id(after)] = (after, before, score)
        return score

    def host_node_score(
        self,
        cards: Sequence[Card],
        before: Sequence[CardUsage],
        after: Sequence[CardUsage],
        host: Host,
        pod_cpu_milli: int,
        pod_memory_mib: int,
    ) -> float:
        total_b, shapes_b = self._summary(cards, before)
        total_a, shapes_a = self._summary(cards, after)
        phi_b = self._phi(total_b, shapes_b, host.cpu_free)
        phi_a = self._phi(total_a, shapes_a, host.cpu_free - pod_cpu_milli)
        return phi_b - phi_a - self.TIE * total_a

    # ---- arithmetic ----

    def _phi(self, total: int, shapes: tuple[tuple[int, int], ...], cpu_free: int | None) -> float:
        if total == 0:
            return 0.0
        usable = 0.0
        for g, (fits, keeps) in enumerate(shapes):
            if not fits:
                continue
            if cpu_free is None:
                usable += keeps * self._prefix[g][-1]
            else:
                usable += keeps * self._prefix[g][bisect_right(self._cpus[g], cpu_free)]
        phi = total - usable
        if cpu_free is not None and self._cpu_per_pct:
            phi += self.STRAND * max(0.0, total - max(0, cpu_free) / self._cpu_per_pct)
        return phi

    def _summary(self, cards: Sequence[Card], usage: Sequence[CardUsage]) -> tuple[int, tuple[tuple[int, int], ...]]:
        """Free percent, and per shape: does one task fit the cards, and how much free it could use."""
        frees = tuple(card_free(c, u) for c, u in zip(cards, usage, strict=True))
        whole = tuple(_whole_free(c, u) for c, u in zip(cards, usage, strict=True))
        models = tuple(c.model for c in cards)
        key = (frees, whole, models)
        hit = self._cards.get(key)
        if hit is not None:
            return hit
        total = sum(frees)
        out = []
        for vgpus, cores, allowed in self._shapes:
            ok = [not allowed or m in allowed for m in models]
            if cores >= FULL_CORES:
                fits = sum(1 for w, o in zip(whole, ok, strict=True) if w and o) >= vgpus
                keeps = sum(f for f, w, o in zip(frees, whole, ok, strict=True) if w and o)
            else:
                fits = any(f >= cores and o for f, o in zip(frees, ok, strict=True))
                keeps = sum(f for f, o in zip(frees, ok, strict=True) if f >= cores and o)
            out.append((int(fits), keeps))
        hit = (total, tuple(out))
        if len(self._cards) > 200_000:
            self._cards.clear()
        self._cards[key] = hit
        return hit

    def _card_waste(self, free: int) -> float:
        waste = 0.0
        for g, (_vgpus, cores, _models) in enumerate(self._shapes):
            usable = free if (free >= cores if cores < FULL_CORES else free == FULL_CORES) else 0
            waste += self._prefix[g][-1] * (free - usable)
        return waste
