"""Why a pod is pending: per node the filter's reason, the card that comes closest, and a
plan of the fewest moves of running pods that would free a fitting slice. Pure: no I/O.

The reasons are the filter's own (``Extender.filter_request`` decides them; this module
only reads its ``FilterOutcome``), so the explanation can never disagree with what
kube-scheduler was told. The rest is arithmetic on the same values the allocator reads:

- a card's *gap* for a container: what it lacks for one of its slices (cores, memory,
  a vGPU slot, or being empty for a whole card); the closest card has the smallest gap,
  counted in cards' worth (missing cores / 100 + missing MiB / card MiB, a slot 0.5);
- a *plan*: take k running pods off one node, place the pending pod there with
  ``allocator.place`` (the filter's own fit), then place each moved pod again with
  ``allocator.place``, on that node first, else on the first fresh node with room, on
  cards of the model it holds now. k grows from 1, so the first plan found has the
  fewest moves among the nodes searched (the closest ``max_nodes`` nodes, within a
  budget of ``place`` calls). Host CPU and memory are not planned: filter reads cards only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from flexai_core.model import FULL_CORES, Allocation, Card, CardSelector, CardUsage, ContainerRequest, PodRequest

from .allocator import Placement, free_memory, place, slice_fits
from .extender import FilterOutcome
from .policies.interface import Policy
from .state import NodeState

SLOT_GAP = 0.5  # a full vGPU count weighs half a card: freeing a slot means moving a pod


@dataclass(frozen=True, slots=True)
class CardGap:
    """What one card lacks for one slice of ``container``."""

    node: str
    card: int
    model: str
    memory_mib: int  # the card's
    container: str
    missing_cores: int
    missing_memory_mib: int
    missing_slot: bool
    must_be_empty: bool
    missing: tuple[str, ...]  # the same, in words

    @property
    def size(self) -> float:
        return (
            self.missing_cores / FULL_CORES
            + self.missing_memory_mib / max(1, self.memory_mib)
            + SLOT_GAP * self.missing_slot
        )


@dataclass(frozen=True, slots=True)
class NodeReason:
    node: str
    fits: bool
    reason: str  # the filter's reason ("" where the pod fits)
    resolvable: bool  # evicting or moving pods could make it fit
    closest: CardGap | None = None


@dataclass(frozen=True, slots=True)
class Move:
    pod: str
    from_node: str
    from_cards: tuple[int, ...]
    to_node: str
    to_cards: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    node: str  # where the pending pod would go
    cards: tuple[int, ...]  # on which cards
    moves: tuple[Move, ...]


@dataclass(slots=True)
class Explanation:
    pod: str
    wants_gpu: bool
    nodes: list[NodeReason] = field(default_factory=list)
    closest: CardGap | None = None
    plan: Plan | None = None
    plan_searched: int = 0  # nodes the plan search examined
    plan_complete: bool = True  # False: the budget ran out before every candidate was tried

    @property
    def fits(self) -> list[str]:
        return [n.node for n in self.nodes if n.fits]


def explain(
    req: PodRequest,
    outcome: FilterOutcome,
    nodes: Mapping[str, NodeState],
    policy: Policy,
    cutoff: datetime,
    *,
    max_moves: int = 3,
    max_nodes: int = 64,
    budget: int = 20_000,
) -> Explanation:
    """Explain ``outcome`` (the filter's answer for ``req`` over ``nodes``)."""
    out = Explanation(req.key, req.wants_gpu)
    gpu = [c for c in (*req.containers, *req.init_containers) if c.vgpus]
    for name in sorted({*outcome.fits, *outcome.failed, *outcome.unresolvable}):
        if name in outcome.failed:
            node = nodes.get(name)
            gap = closest_card(node, req, gpu) if node is not None else None
            out.nodes.append(NodeReason(name, False, outcome.failed[name], True, gap))
        elif name in outcome.unresolvable:
            out.nodes.append(NodeReason(name, False, outcome.unresolvable[name], False))
        else:
            out.nodes.append(NodeReason(name, True, "", True))
    near = sorted((n for n in out.nodes if n.closest is not None), key=lambda n: (n.closest.size, n.node))  # type: ignore[union-attr]
    if near:
        out.closest = near[0].closest
    if req.wants_gpu and not out.fits and near:
        fresh = [n for n in nodes.values() if n.heartbeat is not None and n.heartbeat >= cutoff]
        out.plan, out.plan_searched, out.plan_complete = plan_moves(
            req, [nodes[n.node] for n in near[:max_nodes]], fresh, policy, max_moves, budget
        )
        if len(near) > max_nodes:
            out.plan_complete = False
    return out


# ---- the closest card ----


def closest_card(node: NodeState, req: PodRequest, gpu: Sequence[ContainerRequest]) -> CardGap | None:
    """The card of ``node`` nearest to taking a slice of a container that does not fit."""
    blocked = [c for c in gpu if _room(node, req.selector, c) < c.vgpus] or list(gpu)
    best: CardGap | None = None
    for c in blocked:
        for card, used in zip(node.cards, node.usage, strict=True):
            gap = card_gap(node.name, card, used, c, req.selector)
            if gap is not None and gap.missing and (best is None or gap.size < best.size):
                best = gap
    return best


def card_gap(node: str, card: Card, used: CardUsage, c: ContainerRequest, selector: CardSelector) -> CardGap | None:
    """What ``card`` lacks for one slice of ``c``; None if no eviction could ever make room."""
    mem = c.memory_on(card)
    if not card.healthy or not selector.allows(card) or mem > card.memory_mib - card.used_outside_mib:
        return None
    words: list[str] = []
    cores = memory = 0
    empty = False
    if c.cores >= FULL_CORES:
        if used.vgpus or used.cores or used.memory_mib:
            empty = True
            cores, memory = used.cores, used.memory_mib
            words.append(f"an empty card ({used.vgpus} vGPU(s) hold {used.cores}% cores and {_gib(used.memory_mib)})")
    else:
        if c.cores == 0 and used.cores >= FULL_CORES:
            cores = 1
            words.append("any free cores (the card is at 100%)")
        elif used.cores + c.cores > FULL_CORES:
            cores = used.cores + c.cores - FULL_CORES
            words.append(f"{cores}% more cores ({FULL_CORES - used.cores}% free, {c.cores}% asked)")
        short = mem - free_memory(card, used)
        if short > 0:
            memory = short
            words.append(f"{_gib(short)} more memory ({_gib(max(0, free_memory(card, used)))} free, {_gib(mem)} asked)")
    slot = used.vgpus >= card.max_vgpus
    if slot and not empty:
        words.append(f"a vGPU slot ({used.vgpus} of {card.max_vgpus} used)")
    return CardGap(node, card.index, card.model, card.memory_mib, c.name, cores, memory, slot, empty, tuple(words))


def _room(node: NodeState, selector: CardSelector, c: ContainerRequest) -> int:
    return sum(
        1
        for card, u in zip(node.cards, node.usage, strict=True)
        if selector.allows(card) and slice_fits(card, u, c.cores, c.memory_on(card))
    )


# ---- the plan ----


def plan_moves(
    req: PodRequest,
    targets: Sequence[NodeState],
    fresh: Sequence[NodeState],
    policy: Policy,
    max_moves: int = 3,
    budget: int = 20_000,
) -> tuple[Plan | None, int, bool]:
    """(the plan with the fewest moves over ``targets``, nodes searched, search complete)."""
    left = [budget]

    def spend() -> bool:
        left[0] -= 1
        return left[0] >= 0

    movable = {t.name: _movable(t, req.selector) for t in targets}
    for k in range(1, max_moves + 1):
        for t in targets:
            for combo in itertools.combinations(movable[t.name], k):
                if not spend():
                    return None, len(targets), False
                usage = list(t.usage)
                by_index = {c.index: pos for pos, c in enumerate(t.cards)}
                for a in combo:
                    for index, held in a.card_usage.items():
                        if index in by_index:
                            usage[by_index[index]] = usage[by_index[index]].minus(held)
                got = place(t.cards, usage, req, policy)
                if not isinstance(got, Placement):
                    continue
                moves = _destinations(t, got.usage_after, combo, fresh, policy, spend)
                if moves is not None:
                    cards = tuple(sorted({s.card_index for s in got.slices}))
                    return Plan(t.name, cards, tuple(moves)), len(targets), True
    return None, len(targets), left[0] >= 0


def _movable(node: NodeState, selector: CardSelector) -> list[Allocation]:
    """Pods on ``node`` whose move could free a card the pending pod may use; smallest first."""
    allowed = {c.index for c in node.cards if c.healthy and selector.allows(c)}
    pods = [a for a in node.pods.values() if any(i in allowed for i in a.card_usage)]
    return sorted(
        pods,
        key=lambda a: (
            sum(u.cores for u in a.card_usage.values()),
            sum(u.memory_mib for u in a.card_usage.values()),
            a.key,
        ),
    )


def _destinations(
    target: NodeState,
    after: Sequence[CardUsage],
    moved: Sequence[Allocation],
    fresh: Sequence[NodeState],
    policy: Policy,
    spend: Callable[[], bool],
) -> list[Move] | None:
    """Somewhere for every moved pod, given the pending pod on ``target``; None if one has none."""
    overlay: dict[str, tuple[CardUsage, ...]] = {target.name: tuple(after)}
    order = [target, *(n for n in fresh if n.name != target.name)]
    moves = []
    for a in moved:
        req = request_of(a, target.cards)
        for node in order:
            if not spend():
                return None
            usage = overlay.get(node.name, node.usage)
            got = place(node.cards, usage, req, policy)
            if isinstance(got, Placement):
                overlay[node.name] = got.usage_after
                moves.append(
                    Move(
                        a.key,
                        a.node,
                        tuple(sorted(a.card_usage)),
                        node.name,
                        tuple(sorted({s.card_index for s in got.slices})),
                    )
                )
                break
        else:
            return None
    return moves


def request_of(a: Allocation, cards: Sequence[Card]) -> PodRequest:
    """The request a running pod was placed with, read back from its slices: each container's
    vGPUs, cores and MiB, on cards of the model(s) it holds now (its annotations are not kept)."""
    groups: dict[tuple[str, bool], list[int]] = {}
    cores: dict[tuple[str, bool], int] = {}
    for s in a.slices:
        groups.setdefault((s.container, s.init), []).append(s.memory_mib)
        cores[(s.container, s.init)] = s.cores
    containers = [
        ContainerRequest(name, len(mibs), cores[(name, init)], max(mibs), init) for (name, init), mibs in groups.items()
    ]
    by_index = {c.index: c for c in cards}
    models = frozenset(by_index[s.card_index].model for s in a.slices if s.card_index in by_index)
    return PodRequest(
        a.namespace,
        a.name,
        a.uid,
        tuple(c for c in containers if not c.init),
        tuple(c for c in containers if c.init),
        CardSelector(models=models),
    )


def _gib(mib: int) -> str:
    return f"{mib / 1024:.1f} GiB"
