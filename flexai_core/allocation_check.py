"""Does a pod's allocation give it exactly what it asked for? Pure: no I/O.

The allocation annotation is written by the scheduler, but it sits on an object a tenant
can write too (the chart's admission policy is the first guard; this is the second). So
the node agent, before it hands out a slice, and the scheduler's Kubernetes backend,
before it counts one, both hold the allocation against the pod's own request (parsed by
``requests.parse_pod`` with ``BOUND_RULES``) and, where known, the node's cards:

- it is for the node the pod is bound to;
- every vGPU container (init containers and sidecars included) has exactly
  ``vgpu-number`` slices, on distinct cards, and no other container has any;
- each slice has the container's cores (100 for a whole card, 0 for memory only) and
  its memory: the GiB asked for, or for "all of the card's memory" at most the card's
  memory; its ``init`` flag says whether the container runs before the app;
- each slice's card exists on the node, and its UUID is that card's.

``check_allocation`` returns every mismatch found (empty: the allocation is the
pod's). A mismatch's ``reason`` is a short label for metrics; its message says what
differs, naming the container.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .model import Allocation, Card, ContainerRequest, PodRequest, Slice

__all__ = ["REASONS", "Mismatch", "check_allocation"]

# Every ``Mismatch.reason``, in the order checks run.
REASONS: Final = ("node", "container", "count", "card", "init", "cores", "memory")


@dataclass(frozen=True, slots=True)
class Mismatch:
    reason: str  # one of REASONS
    message: str

    def __str__(self) -> str:
        return self.message


def check_allocation(
    request: PodRequest,
    alloc: Allocation,
    cards: Sequence[Card] | None = None,
    node: str | None = None,
) -> list[Mismatch]:
    """The ways ``alloc`` differs from what ``request`` asks for on ``node``'s ``cards``.

    ``cards`` None: the node's cards are unknown, so card existence and "all of the
    memory" are not checked (everything else is). ``node`` None: not checked.
    """
    out: list[Mismatch] = []
    if node is not None and alloc.node != node:
        out.append(Mismatch("node", f"the allocation is for node {alloc.node!r}, the pod is bound to {node!r}"))
    wanted = {c.name: c for c in (*request.init_containers, *request.containers) if c.vgpus}
    given: dict[str, list[Slice]] = {}
    for s in alloc.slices:
        given.setdefault(s.container, []).append(s)
    stray = sorted(set(given) - set(wanted))
    if stray:
        out.append(
            Mismatch("container", f"the allocation has slices for {', '.join(map(repr, stray))}, which ask for no vGPU")
        )
    by_index = None if cards is None else {c.index: c for c in cards}
    for c in wanted.values():
        out += _container(c, given.get(c.name, []), by_index, alloc.node)
    return out


def _container(c: ContainerRequest, slices: list[Slice], cards: dict[int, Card] | None, node: str) -> list[Mismatch]:
    where = f"container {c.name!r}"
    out = []
    if len(slices) != c.vgpus:
        out.append(Mismatch("count", f"{where} asks for {c.vgpus} vGPU(s), the allocation gives it {len(slices)}"))
    if len({s.card_index for s in slices}) != len(slices) or len({s.card_uuid for s in slices}) != len(slices):
        out.append(Mismatch("card", f"{where}: the allocation puts two of its vGPUs on one card"))
    for s in slices:
        card = None if cards is None else cards.get(s.card_index)
        if cards is not None and card is None:
            out.append(Mismatch("card", f"{where}: card {s.card_index} is not on node {node!r}"))
        elif card is not None and card.uuid != s.card_uuid:
            out.append(
                Mismatch(
                    "card",
                    f"{where}: card {s.card_index} of node {node!r} is {card.uuid}, the allocation names {s.card_uuid}",
                )
            )
        if s.init != c.init:
            kind = "an init container" if c.init else "not an init container"
            out.append(Mismatch("init", f"{where} is {kind}, the allocation marks its slice init={s.init}"))
        if s.cores != c.cores:
            # "percent", not "%": the kubelet puts an admission error into a printf format.
            out.append(
                Mismatch(
                    "cores",
                    f"{where} asks for {c.cores} percent of a card's cores per vGPU, "
                    f"the allocation gives {s.cores} percent on card {s.card_index}",
                )
            )
        out += _memory(where, c, s, card)
    return out


def _memory(where: str, c: ContainerRequest, s: Slice, card: Card | None) -> list[Mismatch]:
    if c.memory_mib is not None:
        if s.memory_mib == c.memory_mib:
            return []
        asked = f"{c.memory_mib} MiB"
    else:
        # "All of the card's memory" was the card's free memory at bind time: at most the card's.
        limit = None if card is None else card.memory_mib
        if s.memory_mib > 0 and (limit is None or s.memory_mib <= limit):
            return []
        asked = "all of the card's memory" + ("" if limit is None else f" (at most {limit} MiB)")
    return [
        Mismatch(
            "memory",
            f"{where} asks for {asked} per vGPU, the allocation gives {s.memory_mib} MiB on card {s.card_index}",
        )
    ]
