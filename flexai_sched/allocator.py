"""Does a pod fit a node, and on which cards. Pure arithmetic on plain values.

A slice of ``cores`` % and ``memory`` MiB fits a card when the card is healthy and
allowed by the pod's selector, has a free vGPU slot and the memory free, and:

- cores 100 (exclusive): nothing else is on the card;
- cores 0 (no compute limit): the card is not already at 100%;
- otherwise: allocated cores + cores <= 100.

A container's vGPUs go to distinct cards. App containers are placed together
(largest first); each init container runs alone before them, so it is placed
against the other pods' usage only, preferring cards the pod already holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from flexai_core.model import FULL_CORES, Card, CardSelector, CardUsage, ContainerRequest, PodRequest, Slice, peak_usage

from .policies.interface import Policy


@dataclass(frozen=True, slots=True)
class Placement:
    slices: tuple[Slice, ...]
    usage_after: tuple[CardUsage, ...]  # per card position, the node's usage with this pod


@dataclass(frozen=True, slots=True)
class NoFit:
    reason: str
    # False when no amount of evicting other pods could make the pod fit this node.
    resolvable: bool


# Entries per ``CardMemo``: one per distinct (slice, card kind, card usage); cleared when full.
CARD_MEMO = 2_048
_UNSEEN = object()


@dataclass(slots=True, eq=False)
class CardMemo:
    """Per slice (cores, memory asked) and card state (usage, memory, vGPU slots, health,
    model): the policy's ``card_cost`` of the slice there, or None where it does not fit.

    What ``_choose`` works out per card depends only on these when the selector names no
    card UUIDs and the policy says its ``card_cost`` reads only the card's state
    (``card_cost_by_state``), so nodes whose cards differ still share it card by card.
    Valid for one selector and one policy, as the policy prices now (the owner drops it
    when the policy's workload changes).
    """

    selector: CardSelector
    policy: Policy
    costs: dict[tuple[object, ...], float | None] = field(default_factory=dict)
    # (memory asked, card memory, outside memory, health, model) -> ``could_ever_fit``.
    ever: dict[tuple[object, ...], bool] = field(default_factory=dict)

    def serves(self, selector: CardSelector, policy: Policy) -> bool:
        return (
            policy is self.policy
            and getattr(policy, "card_cost_by_state", False)
            and not selector.uuids
            and not selector.exclude_uuids
            and selector == self.selector
        )


def free_memory(card: Card, used: CardUsage) -> int:
    return card.memory_mib - card.used_outside_mib - used.memory_mib


def slice_fits(card: Card, used: CardUsage, cores: int, memory_mib: int) -> bool:
    if not card.healthy or used.vgpus >= card.max_vgpus or memory_mib > free_memory(card, used):
        return False
    if cores >= FULL_CORES:
        return used.vgpus == 0 and used.cores == 0 and used.memory_mib == 0
    if cores == 0:
        return used.cores < FULL_CORES
    return used.cores + cores <= FULL_CORES


def could_ever_fit(card: Card, selector: CardSelector, c: ContainerRequest) -> bool:
    """Whether the slice fits the card when nothing else is on it."""
    if not card.healthy or not selector.allows(card):
        return False
    return c.memory_on(card) <= card.memory_mib - card.used_outside_mib


def place(
    cards: Sequence[Card],
    usage: Sequence[CardUsage],
    pod: PodRequest,
    policy: Policy,
    memo: CardMemo | None = None,
) -> Placement | NoFit:
    """Choose cards for every GPU container of ``pod`` on a node, or say why not (``memo``:
    per card state, what ``_choose`` worked out for this pod's shape on other nodes)."""
    if memo is not None and not memo.serves(pod.selector, policy):
        memo = None
    work = list(usage)
    slices: list[Slice] = []
    for c in sorted(pod.containers, key=_hardness, reverse=True):
        if c.vgpus == 0:
            continue
        chosen = _choose(cards, work, c, pod.selector, policy, (), memo)
        if isinstance(chosen, int):
            return _no_fit(cards, pod, c, chosen, memo)
        for pos in chosen:
            card = cards[pos]
            mem = c.memory_on(card)
            work[pos] = work[pos].plus(CardUsage(c.cores, mem, 1))
            slices.append(Slice(c.name, card.index, card.uuid, c.cores, mem))
    if not pod.init_containers:
        return Placement(tuple(slices), tuple(work))
    app_cards = tuple(sorted({s.card_index for s in slices}))
    for c in pod.init_containers:
        if c.vgpus == 0:
            continue
        # Runs before the app containers: only other pods' usage is on the cards then.
        chosen = _choose(cards, list(usage), c, pod.selector, policy, app_cards, memo)
        if isinstance(chosen, int):
            return _no_fit(cards, pod, c, chosen, memo)
        for pos in chosen:
            card = cards[pos]
            slices.append(Slice(c.name, card.index, card.uuid, c.cores, c.memory_on(card), init=True))
    by_index = {card.index: pos for pos, card in enumerate(cards)}
    after = list(usage)
    for index, held in peak_usage(tuple(slices)).items():
        after[by_index[index]] = after[by_index[index]].plus(held)
    return Placement(tuple(slices), tuple(after))


def _hardness(c: ContainerRequest) -> tuple[int, int, int]:
    return (c.vgpus, c.cores, c.memory_mib if c.memory_mib is not None else 1 << 40)


def _no_fit(
    cards: Sequence[Card], pod: PodRequest, failed: ContainerRequest, room: int, memo: CardMemo | None
) -> NoFit:
    """Why the pod does not fit: unresolvable if no eviction could help, else the usage
    (``room``: how many cards had room for ``failed``'s slice, as ``_choose`` found)."""
    for c in (*pod.containers, *pod.init_containers):
        if c.vgpus == 0:
            continue
        if c.vgpus > len(cards):
            return NoFit(f'container "{c.name}": asks for {c.vgpus} vGPUs, node has {len(cards)} cards', False)
        if memo is None:
            possible = sum(1 for card in cards if could_ever_fit(card, pod.selector, c))
        else:
            possible = 0
            ever = memo.ever
            if len(ever) >= CARD_MEMO:
                ever.clear()
            for card in cards:
                key = (c.memory_mib, card.memory_mib, card.used_outside_mib, card.healthy, card.model)
                got = ever.get(key)
                if got is None:
                    got = ever[key] = could_ever_fit(card, pod.selector, c)
                possible += got
        if possible < c.vgpus:
            return NoFit(
                f'container "{c.name}": needs {c.vgpus} cards{_describe(c, pod.selector)}, node has {possible}', False
            )
    return NoFit(
        f'container "{failed.name}": needs {failed.vgpus} cards with room{_describe(failed, pod.selector)}, '
        f"{room} of {len(cards)} have it",
        resolvable=True,
    )


def _choose(
    cards: Sequence[Card],
    usage: list[CardUsage],
    c: ContainerRequest,
    selector: CardSelector,
    policy: Policy,
    prefer: tuple[int, ...],
    memo: CardMemo | None = None,
) -> list[int] | int:
    """Positions of the ``c.vgpus`` cheapest cards the slice fits on, or (too few) how many
    it fits on."""
    candidates: list[tuple[int, float, int, int]] = []
    any_selector = not selector.empty
    cost = policy.card_cost
    if memo is not None:
        costs = memo.costs
        if len(costs) >= CARD_MEMO:
            costs.clear()
        cores, asked = c.cores, c.memory_mib
        for pos, card in enumerate(cards):
            used = usage[pos]
            key = (
                cores,
                asked,
                used.cores,
                used.memory_mib,
                used.vgpus,
                card.memory_mib,
                card.used_outside_mib,
                card.max_vgpus,
                card.healthy,
                card.model,
            )  # plain values: hashed and compared in C
            got = costs.get(key, _UNSEEN)
            if got is _UNSEEN:
                mem = c.memory_on(card)
                fits = (not any_selector or selector.allows(card)) and slice_fits(card, used, cores, mem)
                got = costs[key] = cost(card, used, cores, mem) if fits else None
            if got is not None:
                candidates.append((0 if card.index in prefer else 1, got, card.index, pos))  # type: ignore[arg-type]
    else:
        for pos, card in enumerate(cards):
            mem = c.memory_on(card)
            if (not any_selector or selector.allows(card)) and slice_fits(card, usage[pos], c.cores, mem):
                rank = 0 if card.index in prefer else 1
                candidates.append((rank, cost(card, usage[pos], c.cores, mem), card.index, pos))
    if len(candidates) < c.vgpus:
        return len(candidates)
    if c.vgpus == 1:
        return [min(candidates)[3]]
    candidates.sort()
    return [pos for *_, pos in candidates[: c.vgpus]]


def _describe(c: ContainerRequest, selector: CardSelector) -> str:
    # "percent", not "%": kube-scheduler puts reasons into a printf format ("80%!c(MISSING)ores").
    parts = [f"{c.cores} percent of a card's cores" if c.cores < FULL_CORES else "a whole card"]
    parts.append("all memory" if c.memory_mib is None else f"{c.memory_mib} MiB")
    if selector.models:
        parts.append("model " + "|".join(sorted(selector.models)))
    return " for " + ", ".join(parts)
