"""The node inventory annotation: what the scheduler reads about this node.

``node_annotation`` is pure: cards as read, pods bound here -> the annotation text
(``flexai_core.annotations.encode_inventory``, the one encoding). Per card it carries
what our pods hold (from their allocation annotations; a pod holds the peak over its
phases, ``Allocation.card_usage``) and the memory used by others: NVML's reading less
what our containers use. When the hook's regions are not readable, what our slices
*may* use (their allocation) stands in for it, so "used outside" errs low, never
counting our own pods twice.

``Reporter`` writes it when it changes and at least every ``every_s`` (the heartbeat the
scheduler checks for staleness). Memory used by others moves all the time; a move smaller
than ``outside_step_mib`` waits for the heartbeat rather than patching the Node each tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from flexai_core import annotations as ann
from flexai_core.model import Card, CardUsage

from .inventory import CardReading
from .nodeapi import NodeApi
from .pods import BoundPod

__all__ = ["Reporter", "allocated_by_card", "node_annotation", "node_cards"]

log = logging.getLogger(__name__)


def allocated_by_card(pods: Sequence[BoundPod]) -> dict[int, CardUsage]:
    """What live pods hold on each card index (terminal pods hold nothing)."""
    out: dict[int, CardUsage] = {}
    for p in pods:
        if p.terminal or p.allocation is None:
            continue
        for idx, usage in p.allocation.card_usage.items():
            out[idx] = out.get(idx, CardUsage()).plus(usage)
    return out


def node_cards(
    readings: Sequence[CardReading],
    pods: Sequence[BoundPod],
    ours_used_mib: Mapping[str, int] | None = None,
) -> tuple[list[Card], dict[int, tuple[int, int]]]:
    """Cards with their memory used by others, and (cores, MiB) held per card index.
    ``ours_used_mib``: card UUID -> memory our containers use (hook regions), if known."""
    allocated = allocated_by_card(pods)
    cards: list[Card] = []
    for r in readings:
        held = allocated.get(r.card.index, CardUsage())
        ours = (ours_used_mib or {}).get(r.card.uuid, held.memory_mib)
        outside = max(0, (r.memory_used_mib or 0) - ours)
        cards.append(replace(r.card, used_outside_mib=outside))
    return cards, {i: (u.cores, u.memory_mib) for i, u in allocated.items()}


def node_annotation(
    readings: Sequence[CardReading],
    pods: Sequence[BoundPod],
    heartbeat: datetime,
    ours_used_mib: Mapping[str, int] | None = None,
) -> str:
    cards, allocated = node_cards(readings, pods, ours_used_mib)
    return ann.encode_inventory(cards, heartbeat, allocated)


class Reporter:
    def __init__(
        self,
        node: str,
        api: NodeApi,
        every_s: float = 30.0,
        outside_step_mib: int = 1024,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self._api = api
        self._every = every_s
        self._step = outside_step_mib
        self._clock = clock
        self._monotonic = monotonic
        self._last: tuple[list[Card], dict[int, tuple[int, int]]] | None = None
        self._last_at: float | None = None
        self.writes = 0

    def report(
        self,
        readings: Sequence[CardReading],
        pods: Sequence[BoundPod],
        ours_used_mib: Mapping[str, int] | None = None,
    ) -> bool:
        """Patch the Node if the content changed or the heartbeat is due; True if written.
        A failed patch (KubeError) propagates and is retried on the next call."""
        cards, allocated = node_cards(readings, pods, ours_used_mib)
        now = self._monotonic()
        due = self._last_at is None or now - self._last_at >= self._every
        if not due and not self._changed(cards, allocated):
            return False
        text = ann.encode_inventory(cards, self._clock(), allocated)
        self._api.patch_node_annotations(self.node, {ann.NODE_INVENTORY: text})
        self._last, self._last_at = (cards, allocated), now
        self.writes += 1
        return True

    def _changed(self, cards: list[Card], allocated: dict[int, tuple[int, int]]) -> bool:
        if self._last is None:
            return True
        last_cards, last_allocated = self._last
        if allocated != last_allocated or len(cards) != len(last_cards):
            return True
        for new, old in zip(cards, last_cards):
            if replace(new, used_outside_mib=0) != replace(old, used_outside_mib=0):
                return True
            if abs(new.used_outside_mib - old.used_outside_mib) >= self._step:
                return True
        return False
