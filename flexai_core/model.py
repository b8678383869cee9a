"""Plain typed values of the scheduling core. No I/O, no framework imports.

Units: cores are percent of one card (0-100); memory is MiB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

FULL_CORES = 100


@dataclass(frozen=True, slots=True)
class Card:
    """One physical GPU as the node agent reports it."""

    index: int
    uuid: str
    model: str
    memory_mib: int
    max_vgpus: int = 5
    healthy: bool = True
    numa: int | None = None
    # Memory used on the card by processes outside our slices (NVML); never given out.
    used_outside_mib: int = 0


@dataclass(frozen=True, slots=True)
class NodeInventory:
    name: str
    cards: tuple[Card, ...]
    heartbeat: datetime | None = None


@dataclass(frozen=True, slots=True)
class CardSelector:
    """Which cards a pod may use. Empty sets mean "no constraint"."""

    models: frozenset[str] = frozenset()
    exclude_models: frozenset[str] = frozenset()
    uuids: frozenset[str] = frozenset()
    exclude_uuids: frozenset[str] = frozenset()

    def allows(self, card: Card) -> bool:
        if self.models and card.model not in self.models:
            return False
        if card.model in self.exclude_models:
            return False
        if self.uuids and card.uuid not in self.uuids:
            return False
        return card.uuid not in self.exclude_uuids

    @property
    def empty(self) -> bool:
        return not (self.models or self.exclude_models or self.uuids or self.exclude_uuids)


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    """What one container asks for: ``vgpus`` slices, each on a different card.

    ``memory_mib`` None means "all of the card's memory" (cores given without memory,
    or a whole card). ``cores`` 100 means an exclusive card; 0 means no compute limit.
    """

    name: str
    vgpus: int
    cores: int
    memory_mib: int | None
    init: bool = False

    def memory_on(self, card: Card) -> int:
        # "All of the memory" is what is left after processes outside our slices.
        return card.memory_mib - card.used_outside_mib if self.memory_mib is None else self.memory_mib


@dataclass(frozen=True, slots=True)
class PodRequest:
    namespace: str
    name: str
    uid: str
    containers: tuple[ContainerRequest, ...]  # app containers (and restartable init sidecars)
    init_containers: tuple[ContainerRequest, ...] = ()  # run to completion, one at a time
    selector: CardSelector = CardSelector()
    node_policy: str | None = None
    card_policy: str | None = None
    # What the pod asks of the node's host, as kube-scheduler counts it (effective requests:
    # init containers' peak, sidecars, overhead); not part of ``shape``.
    cpu_milli: int = 0
    memory_mib: int = 0
    # spec.priority (set from the pod's PriorityClass by the apiserver); not part of ``shape``.
    priority: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def wants_gpu(self) -> bool:
        return any(c.vgpus for c in self.containers) or any(c.vgpus for c in self.init_containers)

    def shape(self) -> tuple[object, ...]:
        """A hashable key: two pods with equal shapes fit the same nodes the same way."""
        return (self.containers_shape(), self.selector, self.node_policy, self.card_policy)

    def containers_shape(self) -> tuple[object, ...]:
        return (
            tuple((c.vgpus, c.cores, c.memory_mib) for c in self.containers),
            tuple((c.vgpus, c.cores, c.memory_mib) for c in self.init_containers),
        )


@dataclass(frozen=True, slots=True)
class Slice:
    """One vGPU: a share of one card given to one container."""

    container: str
    card_index: int
    card_uuid: str
    cores: int
    memory_mib: int
    init: bool = False


# Usage values repeat (slices come in a few sizes) while every bind rebuilds its node's usage:
# one object per value keeps a cluster's usage to a few hundred objects, none of them new for
# the garbage collector to walk after a bind. Bounded; cleared when full.
_SHARED_USAGE: dict[tuple[int, int, int], CardUsage] = {}
MAX_SHARED_USAGE = 65_536


@dataclass(frozen=True, slots=True)
class CardUsage:
    """What is given out of one card. ``CardUsage.of`` builds one; so do its arithmetic."""

    cores: int = 0
    memory_mib: int = 0
    vgpus: int = 0

    @staticmethod
    def of(cores: int = 0, memory_mib: int = 0, vgpus: int = 0) -> CardUsage:
        """The usage of these amounts: one object, shared with every other use of them."""
        key = (cores, memory_mib, vgpus)
        got = _SHARED_USAGE.get(key)
        if got is None:
            if len(_SHARED_USAGE) >= MAX_SHARED_USAGE:
                _SHARED_USAGE.clear()
            got = _SHARED_USAGE[key] = CardUsage(cores, memory_mib, vgpus)
        return got

    def plus(self, other: CardUsage) -> CardUsage:
        return CardUsage.of(self.cores + other.cores, self.memory_mib + other.memory_mib, self.vgpus + other.vgpus)

    def minus(self, other: CardUsage) -> CardUsage:
        # Clamped so a bookkeeping mistake can never show negative usage.
        return CardUsage.of(
            max(0, self.cores - other.cores),
            max(0, self.memory_mib - other.memory_mib),
            max(0, self.vgpus - other.vgpus),
        )

    def peak(self, other: CardUsage) -> CardUsage:
        return CardUsage.of(
            max(self.cores, other.cores), max(self.memory_mib, other.memory_mib), max(self.vgpus, other.vgpus)
        )


@dataclass(frozen=True, slots=True)
class Allocation:
    """Where a pod's slices are. ``card_usage`` is what it holds on each card.

    Init containers run one at a time before the app containers, so a pod holds
    per card the peak over its phases, not the sum (as kube-scheduler does for CPU).
    """

    namespace: str
    name: str
    uid: str
    node: str
    slices: tuple[Slice, ...]
    card_usage: dict[int, CardUsage] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @staticmethod
    def build(namespace: str, name: str, uid: str, node: str, slices: tuple[Slice, ...]) -> Allocation:
        return Allocation(namespace, name, uid, node, slices, peak_usage(slices))


def peak_usage(slices: tuple[Slice, ...]) -> dict[int, CardUsage]:
    """Per card, the peak over phases: each init container alone, then all app containers."""
    phases: dict[str, dict[int, CardUsage]] = {}
    for s in slices:
        phase = f"init:{s.container}" if s.init else "app"
        per_card = phases.setdefault(phase, {})
        per_card[s.card_index] = per_card.get(s.card_index, CardUsage()).plus(CardUsage(s.cores, s.memory_mib, 1))
    peak: dict[int, CardUsage] = {}
    for per_card in phases.values():
        for idx, usage in per_card.items():
            peak[idx] = peak.get(idx, CardUsage()).peak(usage)
    return peak


def card_free(card: Card, used: CardUsage) -> int:
    """Percent of the card's compute not given out (0 for a card that takes nothing)."""
    if not card.healthy or used.vgpus >= card.max_vgpus:
        return 0
    return max(0, FULL_CORES - used.cores)
