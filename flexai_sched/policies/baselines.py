"""The published baselines of the FGD paper, as policies: ``random``, ``bestfit``, ``gpupacking``.

Scored as the paper's simulator (hkust-adsl/kubernetes-scheduler-simulator,
pkg/simulator/plugin/*_score.go, open_gpu_share.go) scores them; the formulas are
re-implemented here, not its code:

- Random-fit: a node drawn uniformly among those that fit (its PreScore draw:
  ``random_ties``); a share on a card drawn uniformly among those with room, afresh
  for every pod (its GPU selection ``random``), whole cards on the first idle ones.
- Best-fit: least resources left, against fixed maxima (see ``BestFit``); on the
  node, the fullest card that fits ("best" GPU selection).
- GPU-packing: integer tiers (see ``GpuPacking``); a task without GPUs scores 0
  everywhere. On the node, the fullest card that fits.

They exist to check the harness against the published numbers, and stay available
to the extender by name.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from flexai_core.model import FULL_CORES, Card, CardUsage

from ..workload import Host
from .fragmentation import card_free


class RandomFit:
    """Random-fit as the simulator runs it (``-Random 1000 -gpusel random``):

    - the node: one drawn uniformly among those that pass the filters (``random_ties``);
    - a share (one card, under 100%): a card drawn uniformly among those with room,
      a fresh draw for every pod (Open-Gpu-Share's ``random`` GPU selection, a
      reservoir sample over the node's cards at Reserve). Every candidate card gets
      an independent uniform cost and the cheapest wins. The draw is made when the
      node's fit is computed and kept with it until the node changes, so each bound
      pod still gets its own draw. A fixed hash of the card and its usage is not
      that: it sends one node state always to the same card, and packed about as
      the fullest-card choice does (default trace, unallocated at 100%: hash 12.94,
      fullest card 12.85, uniform draw 13.59, published 13.70);
    - whole cards: the first idle cards by index (its exclusive allocation).
    """

    name = "random"
    random_ties = True  # every node scores alike: the simulator draws one at random

    def __init__(self) -> None:
        self._rng = random.Random(0)

    def use_seed(self, seed: int) -> None:
        self._rng = random.Random(f"random-fit/{seed}")  # not the replay's own stream

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        if cores >= FULL_CORES:
            return float(card.index)
        return self._rng.random()

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return 0.0


class BestFit:
    """Least resources left after the task: 0.5 x CPU left / 128 cores + 0.5 x GPU left / 8 GPUs.

    As the simulator scores it: against fixed maxima (its ``MaxSpecCpu``/``MaxSpecGpu``),
    not the node's own capacity, so small nodes fill first; the score is an integer
    0-100 (kube-scheduler scores are), and equal integers tie (broken at random).
    """

    name = "bestfit"
    pod_host_dependent = True
    request_lowers_score = False  # a larger request leaves less: a better fit
    MAX_CPU_MILLI = 128_000
    MAX_GPU_PCT = 8 * FULL_CORES

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        return card_free(card, used)

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return float(int(100 * (1 - 0.5 * _gpu_free(cards, after) / self.MAX_GPU_PCT)))

    def host_node_score(
        self,
        cards: Sequence[Card],
        before: Sequence[CardUsage],
        after: Sequence[CardUsage],
        host: Host,
        pod_cpu_milli: int,
        pod_memory_mib: int,
    ) -> float:
        cpu_left = host.cpu_free - pod_cpu_milli
        left = 0.5 * cpu_left / self.MAX_CPU_MILLI + 0.5 * _gpu_free(cards, after) / self.MAX_GPU_PCT
        return float(int(100 * (1 - left)))


class GpuPacking:
    """Tiers, as the simulator scores them (integers; equal ones tie, broken at random):

    - the task shares a card already in use: 100 - (percent that card had free) // 10,
      at least 50 (the fullest card first, in steps of 10%);
    - it needs idle cards of a node already in use: 50 - idle cards taken, at least 33;
    - the node is idle: 33 - its card count (small idle nodes first, big ones kept);
    - a task without GPUs: 0 everywhere (any node).
    On the node, the fullest card the slice fits (best fit).
    """

    name = "gpupacking"

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        return card_free(card, used)

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        if before == after:
            return 0.0
        if all(_idle(c, b) for c, b in zip(cards, before, strict=True)):
            return float(33 - len(cards))
        taken = [(c, b) for c, b, a in zip(cards, before, after, strict=True) if a != b]
        shared = [card_free(c, b) for c, b in taken if not _idle(c, b)]
        if shared:
            return float(max(50, 100 - sum(shared) // 10))
        return float(max(33, 50 - len(taken)))


def _idle(card: Card, used: CardUsage) -> bool:
    return used.vgpus == 0 and used.cores == 0


def _gpu_free(cards: Sequence[Card], usage: Sequence[CardUsage]) -> int:
    return sum(card_free(c, u) for c, u in zip(cards, usage, strict=True))
