"""``binpack`` and ``spread``: choose by how full cards and nodes already are.

``binpack`` fills the fullest cards and nodes first (fewer half-used cards, room left
for whole-card pods); ``spread`` does the opposite (less interference).
"""

from __future__ import annotations

from collections.abc import Sequence

from flexai_core.model import FULL_CORES, Card, CardUsage


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
    card_cost_by_state = True  # ``allocator.CardMemo``: the cost reads only the card's state

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        # The fuller the card already is, the cheaper: fill it before opening another.
        return -load(card, used)

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return node_load(cards, after)


class Spread:
    name = "spread"
    card_cost_by_state = True

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        return load(card, used)

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return 1.0 - node_load(cards, after)
