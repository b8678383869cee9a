"""What the cluster holds, what is free, and what is stranded. Pure: no I/O.

Stranded capacity is free capacity no shape can use, judged card by card the way the
trace replay's measure does (``fragmentation.node_fragmentation``: a class cannot use a
card whose free part is smaller than its per-card demand, nor any card of a node with
fewer cards with room than it needs), over the shapes that matter now: those of the
pods waiting (filter saw them, none bound) and the typical ones of the workload the
policies plan for. Where the replay weighs the classes, a card here is stranded only if
*no* shape fits it, so the figure is a floor. A typical shape asks for memory in
proportion to its cores (the trace gives none); a waiting pod's shape asks for exactly
what the pod asks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flexai_core.model import FULL_CORES, Card, CardSelector, CardUsage, PodRequest

from .allocator import free_memory, slice_fits
from .workload import Workload

TYPICAL_SHARE = 0.95  # typical shapes: the most frequent classes covering this share of tasks


@dataclass(frozen=True, slots=True)
class Shape:
    """``vgpus`` slices on distinct cards of one node, each ``cores`` % and ``memory_mib``
    MiB (None: ``cores`` % of the card's memory, all of it for a whole card)."""

    vgpus: int
    cores: int
    memory_mib: int | None = None
    selector: CardSelector = CardSelector()

    def memory_on(self, card: Card) -> int:
        if self.memory_mib is not None:
            return self.memory_mib
        usable = card.memory_mib - card.used_outside_mib
        return usable if self.cores >= FULL_CORES else -(-usable * self.cores // FULL_CORES)


@dataclass(frozen=True, slots=True)
class Capacity:
    cards: int = 0
    unhealthy_cards: int = 0
    cores_total: int = 0  # percent of a card, summed: 800 for 8 cards
    cores_allocated: int = 0
    cores_free: int = 0  # on healthy cards
    cores_stranded: int = 0
    memory_mib_total: int = 0
    memory_mib_allocated: int = 0
    memory_mib_free: int = 0
    memory_mib_stranded: int = 0

    @staticmethod
    def sum(parts: Iterable[Capacity]) -> Capacity:
        totals = [0] * 10
        for p in parts:
            for i, v in enumerate(
                (
                    p.cards,
                    p.unhealthy_cards,
                    p.cores_total,
                    p.cores_allocated,
                    p.cores_free,
                    p.cores_stranded,
                    p.memory_mib_total,
                    p.memory_mib_allocated,
                    p.memory_mib_free,
                    p.memory_mib_stranded,
                )
            ):
                totals[i] += v
        return Capacity(*totals)


def typical_shapes(workload: Workload) -> list[Shape]:
    return [
        Shape(c.vgpus, c.cores, None, CardSelector(models=c.models))
        for c in workload.typical(TYPICAL_SHARE).classes
        if c.vgpus
    ]


def pending_shapes(requests: Iterable[PodRequest]) -> list[Shape]:
    """One shape per GPU container of the waiting pods (init containers included)."""
    out: dict[Shape, None] = {}
    for r in requests:
        for c in (*r.containers, *r.init_containers):
            if c.vgpus:
                out[Shape(c.vgpus, c.cores, c.memory_mib, r.selector)] = None
    return list(out)


def essential(shapes: Iterable[Shape]) -> list[Shape]:
    """``shapes`` less those another one covers: a shape that asks for no more vGPUs, cores or
    memory per card, on any card the other may use, fits wherever the other fits, so the
    other never makes a card usable that it does not. Same verdicts, fewer checks."""
    uniq = list(dict.fromkeys(shapes))

    def covers(t: Shape, s: Shape) -> bool:
        same_memory_kind = (t.memory_mib is None) == (s.memory_mib is None)  # in proportion: by cores
        return (
            t != s
            and t.vgpus <= s.vgpus
            and t.cores <= s.cores
            and same_memory_kind
            and (t.memory_mib or 0) <= (s.memory_mib or 0)
            and (t.selector.empty or t.selector == s.selector)
        )

    # Two distinct shapes never cover each other (that would make them equal), so one pass keeps
    # exactly the uncovered ones.
    return [s for s in uniq if not any(covers(t, s) for t in uniq)]


def node_capacity(
    cards: Sequence[Card], usage: Sequence[CardUsage], shapes: Sequence[Shape], stranding: bool = True
) -> Capacity:
    """The node's totals; ``stranding`` False (a node that takes no pods) strands nothing."""
    usable = [False] * len(cards)
    if stranding:
        for s in shapes:
            fit = [
                pos
                for pos, (card, u) in enumerate(zip(cards, usage, strict=True))
                if s.selector.allows(card) and slice_fits(card, u, s.cores, s.memory_on(card))
            ]
            if len(fit) >= s.vgpus:
                for pos in fit:
                    usable[pos] = True
            if all(usable):
                break
    unhealthy = cores_free = mem_free = cores_str = mem_str = 0
    for pos, (card, u) in enumerate(zip(cards, usage, strict=True)):
        if not card.healthy:
            unhealthy += 1
            continue
        fc = max(0, FULL_CORES - u.cores)
        fm = max(0, free_memory(card, u))
        cores_free += fc
        mem_free += fm
        if stranding and not usable[pos]:
            cores_str += fc
            mem_str += fm
    return Capacity(
        cards=len(cards),
        unhealthy_cards=unhealthy,
        cores_total=FULL_CORES * len(cards),
        cores_allocated=sum(u.cores for u in usage),
        cores_free=cores_free,
        cores_stranded=cores_str,
        memory_mib_total=sum(c.memory_mib for c in cards),
        memory_mib_allocated=sum(u.memory_mib for u in usage),
        memory_mib_free=mem_free,
        memory_mib_stranded=mem_str,
    )
