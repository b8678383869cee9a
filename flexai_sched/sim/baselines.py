"""The published baselines of the FGD paper, as policies: ``random``, ``bestfit``, ``gpupacking``.

Re-derived from the paper's description (section 6.1), not from its simulator:

- Random-fit: any node that fits, uniformly (the simulator breaks equal scores at
  random, so a constant score is exactly that); a pseudo-random card among those
  with room.
- Best-fit: the node with the least resources left after the task, as a weighted sum
  of its free CPU and GPU shares (equal weights); on the node, the fullest card that fits.
- GPU-packing: first a node where the task shares an already-occupied card, then a
  node already running GPU tasks (an idle card of an active node), then an idle node;
  equal within a tier; a task without GPUs has no tier (any node). On the node,
  occupied cards first.

They exist to check the harness against the published numbers, and stay available
to the extender by name.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from ..fragmentation import Host, card_free
from ..model import FULL_CORES, Card, CardUsage


class RandomFit:
    name = "random"

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        # Deterministic stand-in for a coin: the choice must repeat for a given seed.
        return zlib.crc32(f"{card.uuid}/{used.cores}/{used.vgpus}".encode())

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return 0.0


class BestFit:
    name = "bestfit"
    pod_host_dependent = True
    request_lowers_score = False  # a larger request leaves less: a better fit

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        return card_free(card, used)

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return -_gpu_free_share(cards, after)

    def host_node_score(
        self,
        cards: Sequence[Card],
        before: Sequence[CardUsage],
        after: Sequence[CardUsage],
        host: Host,
        pod_cpu_milli: int,
        pod_memory_mib: int,
    ) -> float:
        host_after = host.plus(pod_cpu_milli, pod_memory_mib)
        cpu_left = host_after.cpu_free / host_after.cpu_milli if host_after.cpu_milli else 0.0
        return -(cpu_left + _gpu_free_share(cards, after))


class GpuPacking:
    name = "gpupacking"

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        return 0.0 if used.cores else 1.0

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        if before == after:
            return 0.0  # a task without GPUs has no tier: any node
        shares_occupied = any(b.cores and a.cores > b.cores for b, a in zip(before, after, strict=True))
        if shares_occupied:
            return 2.0
        return 1.0 if any(b.cores for b in before) else 0.0


def _gpu_free_share(cards: Sequence[Card], usage: Sequence[CardUsage]) -> float:
    if not cards:
        return 0.0
    return sum(card_free(c, u) for c, u in zip(cards, usage, strict=True)) / (FULL_CORES * len(cards))
