"""Placement policies: which card a slice goes to, and how good a node is for a pod.

A policy answers two questions with plain arithmetic:

- ``card_cost``: among the cards a slice fits on, lower cost is preferred;
- ``node_score``: given a node's card usage before and after placing the pod,
  higher is better (the extender rescales scores to kube-scheduler's 0-10).

``binpack`` fills the fullest cards and nodes first (fewer half-used cards, room
left for whole-card pods); ``spread`` does the opposite (less interference).
Fragmentation-aware policies plug in through ``register``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from .model import FULL_CORES, Card, CardUsage


class Policy(Protocol):
    name: str

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float: ...

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float: ...


def load(card: Card, used: CardUsage) -> float:
    """How full a card is, 0..1: the mean of its compute and memory shares."""
    mem = used.memory_mib / card.memory_mib if card.memory_mib else 1.0
    return (min(used.cores, FULL_CORES) / FULL_CORES + min(mem, 1.0)) / 2


def node_load(cards: Sequence[Card], usage: Sequence[CardUsage]) -> float:
    if not cards:
        return 0.0
    return sum(load(c, u) for c, u in zip(cards, usage, strict=True)) / len(cards)


class Binpack:
    name = "binpack"

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        # The fuller the card already is, the cheaper: fill it before opening another.
        return -load(card, used)

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return node_load(cards, after)


class Spread:
    name = "spread"

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        return load(card, used)

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return 1.0 - node_load(cards, after)


_REGISTRY: dict[str, Callable[[], Policy]] = {"binpack": Binpack, "spread": Spread}


def _register_builtin() -> None:
    # Fragmentation-aware policies and the FGD paper's baselines (flexai_sched.sim compares them).
    from .fragmentation import Fgd, Fragmentation
    from .sim.baselines import BestFit, GpuPacking, RandomFit

    for factory in (Fgd, Fragmentation, RandomFit, BestFit, GpuPacking):
        register(factory.name, factory)


def register(name: str, factory: Callable[[], Policy]) -> None:
    """Add a policy (e.g. a fragmentation-aware one) under ``name``."""
    _REGISTRY[name] = factory


def get(name: str) -> Policy:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"policy {name!r}: unknown (known: {', '.join(names())})") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


_register_builtin()
