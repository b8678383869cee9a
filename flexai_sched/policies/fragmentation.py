"""Fragmentation-aware placement: ``fgd`` (FGD, re-derived from its paper) and ``fragmentation`` (ours).

Units: a card's free capacity is in percent (100 - allocated cores); host CPU in
millicores; memory in MiB. Pure arithmetic, no I/O.

The measure (Weng et al., "Beware of Fragmentation", USENIX ATC'23, section 4). A
target workload M is a set of task classes m with weights p_m. For a node n, the
free GPU capacity that class m cannot use is the node's fragmentation for m:

- m cannot run on n at all (host CPU or memory short, fewer cards with room than it
  needs, no card of an allowed model): F_n(m) = all free capacity of n;
- otherwise: F_n(m) = free capacity of the cards whose free part is less than m's
  per-card demand (whole cards: cards not wholly free).

F_n(M) = sum_m p_m F_n(m). FGD puts a task on the node, and the card, where F_n(M)
grows least: a step along the steepest descent of cluster fragmentation.

``fragmentation`` (ours) keeps the measure and adds what the published metric (GPU
capacity left unallocated) shows FGD missing on this trace:

1. hosts run out of CPU before their GPUs: FGD asks only whether *one* more task of
   each class fits the host, so CPU-only tasks can eat a host whose cards still look
   usable. Ours adds the free GPU the remaining CPU cannot feed at the workload's
   CPU-per-GPU ratio (CPU of all tasks, those without GPUs too, per GPU asked): the main
   gain over FGD. Host memory strands GPUs the same way (at the GPU tasks' memory per
   GPU); the shorter of the two counts; and a host left with less than the smallest
   one-card tasks that matter ask feeds none of its GPU;
2. a shared card fills over many arrivals: ours adds the hole each shared card is
   expected to keep at the end (``flexai_sched.policies.leftover``, learned by replaying the
   workload on cards alone), and a share takes the card where that expectation grows
   least, so a 47% share goes beside another 47 (6% left) rather than beside a 32 (21%
   that almost nothing fits);
3. classes weigh by count x GPU demand (a failed 8-card task strands 8 GPUs; neutral
   on the default trace, kept because the metric counts GPUs, not tasks);
4. among equal growth, the node (and the card) with the least free capacity left
   wins: best fit, so empty nodes stay empty for large tasks;
5. tasks confined to some kinds of node fail once those are full, whatever else is free:
   confined by their GPU models (``vgpu-type.<MODEL>``), or by their shape (8 whole cards
   with 120 cores fit only 8-card nodes with 128 cores). A percent of a kind's cards
   costs by how much of that kind confined tasks need (``flexai_sched.policies.scarcity``),
   so tasks that may go anywhere leave them while they can. The need is taken against the
   cards each kind has left as the cluster fills, and against the pods seen arriving
   where they differ from the plan.

Both are ``WorkloadAware`` and ``HostAware``; ``fragmentation`` is ``CapacityAware`` and
``Observing`` too (``policies.interface``). The figures behind each term and setting, and what
was tried and dropped: bench/results/trace-replay.md, "The settings of `fragmentation`".
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import NamedTuple

from flexai_core.model import FULL_CORES, Card, CardUsage, card_free

from ..workload import DEFAULT_WORKLOAD, Host, NodeKind, TaskClass, Workload
from .leftover import leftover_table, leftover_tables
from .scarcity import model_pressure

# ---- the measure ----


def _whole_free(card: Card, used: CardUsage) -> bool:
    return card.healthy and used.vgpus == 0 and used.cores == 0 and used.memory_mib == 0


def node_fragmentation(
    cards: Sequence[Card], usage: Sequence[CardUsage], workload: Workload, host: Host | None = None
) -> float:
    """F_n(M) in percent of one card: the free capacity the workload is expected not to use."""
    frees = [card_free(c, u) for c, u in zip(cards, usage, strict=True)]
    total = sum(frees)
    if total == 0:
        return 0.0
    whole = [_whole_free(c, u) for c, u in zip(cards, usage, strict=True)]
    mixed_models = len({c.model for c in cards}) > 1
    frag = workload.cpu_weight * total
    for m in workload.classes:
        if host is not None and (m.cpu_milli > host.cpu_free or m.memory_mib > host.memory_free):
            frag += m.weight * total
            continue
        if m.models or mixed_models:
            frag += m.weight * _class_fragment(m, cards, frees, whole, total)
            continue
        frag += m.weight * _same_model_fragment(m, frees, whole, total)
    return frag


def _same_model_fragment(m: TaskClass, frees: list[int], whole: list[bool], total: int) -> float:
    if m.cores >= FULL_CORES:
        if sum(whole) < m.vgpus:
            return total
        return sum(f for f, w in zip(frees, whole, strict=True) if not w)
    if max(frees) < m.cores:
        return total
    return sum(f for f in frees if f < m.cores)


def _class_fragment(m: TaskClass, cards: Sequence[Card], frees: list[int], whole: list[bool], total: int) -> float:
    ok = [not m.models or c.model in m.models for c in cards]
    if m.cores >= FULL_CORES:
        if sum(1 for w, k in zip(whole, ok, strict=True) if w and k) < m.vgpus:
            return total
        return sum(f for f, w, k in zip(frees, whole, ok, strict=True) if not (w and k))
    if not any(f >= m.cores and k for f, k in zip(frees, ok, strict=True)):
        return total
    return sum(f for f, k in zip(frees, ok, strict=True) if f < m.cores or not k)


# ---- the policies ----


class _Measured:
    """A policy that is one ``_Measure``: subclasses only say how to build it."""

    pod_host_dependent = True
    card_cost_by_state = True  # ``allocator.CardMemo``: the cost reads only the card's state
    _m: _Measure

    def __init__(self, workload: Workload = DEFAULT_WORKLOAD) -> None:
        self.use_workload(workload)

    def use_workload(self, workload: Workload) -> None:
        raise NotImplementedError

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float:
        return self._m.card_cost(card, used, cores)

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        return self._m.score(cards, before, after, None, 0)

    def host_node_score(
        self,
        cards: Sequence[Card],
        before: Sequence[CardUsage],
        after: Sequence[CardUsage],
        host: Host,
        pod_cpu_milli: int,
        pod_memory_mib: int,
    ) -> float:
        return self._m.score(cards, before, after, host, pod_cpu_milli, pod_memory_mib)


class Fgd(_Measured):
    """FGD as its simulator runs it (hkust-adsl/kubernetes-scheduler-simulator):

    - the target workload is the "typical pods": task classes by CPU and GPU, tasks
      without GPUs included, the most frequent covering 95% of tasks (``typical``);
    - the score is kube-scheduler's integer: int(100 x sigmoid(growth avoided, in
      GPUs)), so placements within ~0.04 GPU of growth tie, and ties go as the
      harness breaks them (see flexai_sched.sim.replay);
    - host CPU counts (a class whose CPU no longer fits finds all free GPU a fragment).

    On the node, the card with the least growth, the first by index among equals (the
    simulator ranks cards by the node's rounded score; per card here).
    """

    name = "fgd"
    request_lowers_score = True  # less host left: fewer classes fit, F_n(M) only grows
    POPULAR = 0.95

    def use_workload(self, workload: Workload) -> None:
        typical = workload.typical(self.POPULAR)
        self._m = _Measure(typical, strand=0.0, tie=0.0, rounded=True)


class Fragmentation(_Measured):
    """Ours: FGD's measure weighted by GPU demand, plus the GPUs a short host strands.

    Phi_n = sum_m p_m F_n(m)                          (p_m: count x GPU demand)
          + STRAND x max(0, free_n - fed_n)           (free GPU the host cannot feed)
          + LEFTOVER x sum_cards E[free_c]            (shared cards' expected final leftover)

    fed_n = min(cpu_free_n / r, mem_free_n / r_mem), with r the workload's CPU (all tasks,
    those without GPUs too) per percent of GPU and r_mem its GPU tasks' memory per percent
    of GPU (MEM x that; MEM 0: CPU alone); fed_n = 0 where the host has less CPU (or memory)
    free than the smallest one-card GPU tasks carrying FLOOR of the GPU demand ask
    (``host_floor``): a card next to 2 free cores feeds no task of the workload.
    The score is Phi before - Phi after (the pod's CPU and memory taken from the host), minus TIE x
    the free GPU left (best fit among equal growth). Without host information
    (``node_score``: what the extender uses for a node whose host capacity it does not
    know) only the cards count: the host terms drop out.

    A share (part of one card) also weighs the node by the card it would take there:
    the node score adds - CARD x the card's ``card_cost``, E[after] - E[before] (an idle
    card: E[before] = 0), so shares pack as a greedy over every card of the cluster
    would, and Phi only chooses among nodes offering equally good cards.

    Each term's gain, step by step: bench/results/trace-replay.md.
    """

    name = "fragmentation"
    request_lowers_score = True  # both terms only grow as the host's CPU shrinks
    # Weight of stranded GPU against fragmented GPU: 2 also counts that a stranded host keeps
    # its GPUs stranded for every later task (values tried: bench/results/trace-replay.md).
    STRAND = 2.0
    # Best-fit tie-break: far below a percent of a card of growth.
    TIE = 1e-6
    # Weight of the shared cards' expected leftover E beside the measure; flat around 1
    # (values and the forms of E tried: bench/results/trace-replay.md).
    LEFTOVER = 1.0
    # Weight of the card a share takes (``card_cost``) in the node score: large, so shares pack
    # as a greedy over every card of the cluster and Phi only chooses among nodes offering
    # equally good cards (bench/results/trace-replay.md).
    CARD = 1000.0
    # Price of a percent of a node kind's cards, PRICE x min(1, pressure)^POWER (pressure:
    # ``flexai_sched.policies.scarcity``), in the card term: tasks that may go anywhere leave the
    # cards constrained tasks need while others fit them. Steep (POWER 4) because a price
    # on a model constrained tasks only partly need moves shares onto 8-card nodes and
    # costs more than it saves (bench/results/trace-replay.md, "GPU-model constraints").
    PRICE = 1.0
    POWER = 4.0
    # Hole values learned per model (``leftover_tables``) and CPU per GPU per model, where
    # constrained tasks make models differ. Per-model tables left more unallocated on every
    # generated variant tried (same file): off.
    MODEL_TABLES = False
    MODEL_RATIOS = True
    # Scale of the memory per GPU at which a host's free memory feeds its free GPU: 1, the
    # workload's own ratio (0.5 and 2 compared: bench/results/trace-replay.md).
    MEM = 1.0
    # A host with less CPU (or memory) free than the smallest one-card GPU tasks that carry
    # FLOOR of the GPU demand feeds none of its free GPU: the ratio alone lets it keep a card
    # no task of the workload can use (0: off; values tried: bench/results/trace-replay.md).
    FLOOR = 0.05
    # Weight, beside CARD, of the free GPU a pod leaves below the floor (what its node's cards
    # were not already expected to keep): in the card term's own units, so a share does not
    # take the best hole of the cluster at the price of a whole card left without CPU.
    SHORT = 1.0

    # A class that may use kinds holding this share of the cards counts as unconstrained:
    # most classes miss a few small nodes (8 cores, one card) and need nothing of the rest.
    ANYWHERE = 0.95
    # Re-pricing as the cluster fills (``Observing``): every REPRICE_EVERY pods asked
    # about, the pressure is taken against the free cards of each kind, and against the
    # model mix of the last OBSERVED pods where that puts some kind DRIFT above the plan
    # (the plan did not foresee the constrained pods arriving). Pressures round to STEP,
    # so prices, and every cached score, change only when one moves that much.
    REPRICE_EVERY = 200
    OBSERVED = 600
    DRIFT = 0.5
    STEP = 0.05
    QUIET = 0.25

    def __init__(self, workload: Workload = DEFAULT_WORKLOAD) -> None:
        self._capacity: dict[str, int] = {}
        self._kinds: dict[NodeKind, int] = {}
        self._cards_by_kind: dict[NodeKind, float] = {}  # cards per kind, as kind_pressure counts them
        self._usable_memo: dict[tuple[int, int, int, frozenset[str]], frozenset[NodeKind]] = {}
        self._free: dict[NodeKind, float] | None = None  # free cards per kind; None: all
        self._recent: deque[TaskClass] = deque(maxlen=self.OBSERVED)
        self._seen = 0
        self._observed: Workload | None = None  # the recent mix, where it overrides the plan's
        self._pressure: dict[NodeKind, float] = {}
        self._static: dict[NodeKind, float] = {}
        super().__init__(workload)

    def use_capacity(self, cards_by_model: Mapping[str, int], node_kinds: Mapping[NodeKind, int] | None = None) -> None:
        self._capacity = dict(cards_by_model)
        self._kinds = dict(node_kinds) if node_kinds else {NodeKind(m): k for m, k in cards_by_model.items() if k > 0}
        self._cards_by_kind = {k: float(n * (k.gpus or 1)) for k, n in self._kinds.items()}
        self._usable_memo = {}
        self._free = None
        self.use_workload(self._workload)

    def kind_pressure(self, workload: Workload, free: Mapping[NodeKind, float] | None = None) -> dict[NodeKind, float]:
        """``model_pressure`` over node kinds: each class confined to the kinds it fits (its
        models, enough cards, enough host CPU and memory on an empty node), against the
        cards of each kind, or ``free`` cards of each kind."""
        cards = self._cards_by_kind
        demand: dict[frozenset[NodeKind], float] = {}
        for c in workload.classes:
            usable = self._usable(c)
            demand[usable] = demand.get(usable, 0.0) + c.weight * c.vgpus * c.cores
        return model_pressure(demand, cards if free is None else {k: free.get(k, 0.0) for k in cards})

    def _usable(self, c: TaskClass) -> frozenset[NodeKind]:
        """The kinds class ``c`` fits (none: it fits nearly all), memoized per class shape."""
        key = (c.vgpus, c.cpu_milli, c.memory_mib, c.models)
        usable = self._usable_memo.get(key)
        if usable is None:
            cards = self._cards_by_kind
            usable = frozenset(k for k in cards if k.takes(c))
            if sum(cards[k] for k in usable) >= self.ANYWHERE * sum(cards.values()):
                usable = frozenset()
            self._usable_memo[key] = usable
        return usable

    def observe(self, task: TaskClass) -> bool:
        """A pod was asked about (placed or not); True when it is time to ``reprice``."""
        if task.vgpus:
            self._recent.append(task)
        self._seen += 1
        # One kind of node: every price falls on every node alike, nothing to re-price.
        return len(self._kinds) > 1 and self._seen % self.REPRICE_EVERY == 0

    def reprice(self, free_by_kind: Mapping[NodeKind, float]) -> bool:
        """Price against the cards each kind has free now; True when scores changed (the
        caller drops every cached score)."""
        self._free = dict(free_by_kind)
        self._observed = None
        if len(self._recent) >= self.REPRICE_EVERY:
            recent = Workload.of(self._recent)
            planned = self.kind_pressure(self._workload, self._free)
            seen = self.kind_pressure(recent, self._free)
            if any(u > planned.get(k, 0.0) + self.DRIFT for k, u in seen.items()):
                self._observed = recent
        pressure = self._pressures()
        if pressure == self._pressure:
            return False
        self._pressure = pressure
        # Only the prices moved: the measure keeps its memos (summaries do not read prices).
        self._m = self._m.priced(self._prices(), self._kinds)
        return True

    def _prices(self) -> dict[NodeKind, float]:
        return {k: self.PRICE * min(1.0, u) ** self.POWER for k, u in self._pressure.items()}

    def _pressures(self) -> dict[NodeKind, float]:
        raw = self.kind_pressure(self._observed or self._workload, self._free)
        if self._free is not None:  # below QUIET prices are too small to move: the plan's stay
            static = self._static
            raw = {k: u if max(u, static.get(k, 0.0)) >= self.QUIET else static.get(k, 0.0) for k, u in raw.items()}
        return {k: round(u / self.STEP) * self.STEP for k, u in raw.items() if u >= self.STEP / 2}

    def _tight(self, per_pct: float, host_has: Callable[[NodeKind], int]) -> bool:
        """Does the workload ask at least the cluster's host CPU (or memory) per percent of GPU?
        Then every core finds a task, and a host's last cores are no waste (unknown hosts: no)."""
        known = [(k, n) for k, n in self._kinds.items() if host_has(k) and k.gpus]
        gpu = sum(n * k.gpus * FULL_CORES for k, n in known)
        return bool(gpu) and per_pct >= sum(n * host_has(k) for k, n in known) / gpu

    def use_workload(self, workload: Workload) -> None:
        self._workload = workload
        gpu = sum(c.weight * c.vgpus * c.cores for c in workload.classes)
        # r counts the CPU of tasks without GPUs too: they land somewhere, and a host's
        # CPU must feed its share of them as well as its GPUs' tasks.
        cpu = sum(c.weight * c.cpu_milli for c in workload.classes) + sum(w * m for m, w in workload.cpu_only)
        mem = sum(c.weight * c.memory_mib for c in workload.classes)
        self._static = self.kind_pressure(workload)
        self._pressure = self._pressures()
        price = self._prices()
        shares = tuple((c.vgpus, c.cores, c.weight) for c in workload.classes)
        tables: dict[str, tuple[float, ...]] = {}
        ratios: dict[str, float] = {}
        constrained = any(c.models for c in workload.classes)
        if constrained and price and self.MODEL_TABLES:  # models differ: each has its own holes
            by_model = {m: max((p for k, p in price.items() if k.model == m), default=0.0) for m in self._capacity}
            tables = leftover_tables(
                ((c.vgpus, c.cores, c.weight, c.models) for c in workload.classes), self._capacity, by_model
            )
        if constrained and self.MODEL_RATIOS:  # and its own tasks' CPU per GPU
            cpu_only = sum(w * m for m, w in workload.cpu_only)
            for model in self._capacity:
                usable = [c for c in workload.classes if not c.models or model in c.models]
                gpu_m = sum(c.weight * c.vgpus * c.cores for c in usable)
                # Tasks without GPUs land anywhere: a model's part of them as of its usable demand.
                cpu_m = sum(c.weight * c.cpu_milli for c in usable) + cpu_only * gpu_m / gpu
                ratios[model] = cpu_m / gpu_m if gpu_m else 0.0
        floors = [
            0 if gpu and self._tight(total / gpu, on_host) else host_floor(workload, self.FLOOR, asks)
            for total, on_host, asks in (
                (cpu, lambda k: k.cpu_milli, lambda c: c.cpu_milli),
                (mem, lambda k: k.memory_mib, lambda c: c.memory_mib),
            )
        ]
        self._m = _Measure(
            workload.by_gpu_demand(),
            self.STRAND,
            self.TIE,
            cpu / gpu if gpu else 0.0,
            leftover=lambda: leftover_table(shares),
            leftover_weight=self.LEFTOVER,
            card_weight=self.CARD,
            price=price,
            kinds=self._kinds,
            leftover_by_model=tables,
            cpu_per_pct_by_model=ratios,
            mem_per_pct=self.MEM * mem / gpu if gpu else 0.0,
            cpu_floor=floors[0],
            mem_floor=floors[1],
            short_weight=self.SHORT,
        )


def host_floor(workload: Workload, share: float, need: Callable[[TaskClass], int]) -> int:
    """The least ``need`` (host CPU or memory) such that the one-card GPU tasks asking no
    more carry ``share`` of the workload's GPU demand; 0 where they never do (or ``share`` 0)."""
    gpu = sum(c.weight * c.vgpus * c.cores for c in workload.classes)
    if share <= 0 or not gpu:
        return 0
    acc = 0.0
    for amount, demand in sorted((need(c), c.weight * c.cores) for c in workload.classes if c.vgpus == 1):
        acc += demand
        if acc >= share * gpu:
            return amount
    return 0


class _PriceBook:
    """Prices per node kind, found from what a score knows of the node."""

    def __init__(self, price: Mapping[NodeKind, float], kinds: Mapping[NodeKind, int]) -> None:
        # Every known kind, priced or not (0: a cheaper kind of the same model and cards must
        # not take their mean); keyed by plain tuples, built on every score.
        self.exact = {(k.model, k.gpus, k.cpu_milli, k.memory_mib): price.get(k, 0.0) for k in {*kinds, *price}}
        self._any = any(p > 0 for p in price.values())
        self._by_shape: dict[tuple[str, int], float] = {}
        self._by_model: dict[str, float] = {}
        for key_of, out in ((lambda k: (k.model, k.gpus), self._by_shape), (lambda k: k.model, self._by_model)):
            cards: dict[object, float] = {}
            paid: dict[object, float] = {}
            for k, n in kinds.items():
                key = key_of(k)
                cards[key] = cards.get(key, 0.0) + n * (k.gpus or 1)
                paid[key] = paid.get(key, 0.0) + n * (k.gpus or 1) * price.get(k, 0.0)
            out.update({key: paid[key] / cards[key] for key in cards if cards[key] and paid[key]})  # type: ignore[misc]

    def __bool__(self) -> bool:
        return self._any

    def of(self, cards: Sequence[Card], host: Host | None) -> float:
        if not cards:
            return 0.0
        model = cards[0].model
        if host is not None:
            got = self.exact.get((model, len(cards), host.cpu_milli, host.memory_mib))
            if got is not None:
                return got
        got = self._by_shape.get((model, len(cards)))
        return got if got is not None else self._by_model.get(model, 0.0)


# Bits per packed field of a node summary (_Measure._card_part): counts and free percents
# of up to 655 cards a node.
_FIELD = 16
_MASK = (1 << _FIELD) - 1

# Entries per memo of ``_Measure``: each holds a node state (~1 KiB); a long-lived extender
# sees new states with every bind, so the memos are cleared when full (RSS stays flat).
MEMO = 50_000

# Free percent of a node; per workload GPU shape g, at 2g and 2g + 1: fits (1 or 0) and the free
# percent it could use (flat ints: a summary per node state, and each pair would be an object
# for the garbage collector); the shared cards' expected leftover; the workload's CPU per
# percent of GPU for the node's model.
Summary = tuple[int, tuple[int, ...], float, float]


class _Seen(NamedTuple):
    """A summarised node state and what its summary was made of."""

    cards: Sequence[Card]
    usage: Sequence[CardUsage]
    summary: Summary
    frees: tuple[int, ...]  # free percent per card
    whole: tuple[bool, ...]  # wholly free per card
    packed: int  # the cards' parts summed (``_Measure._card_part``)
    models: tuple[str, ...]


class _Measure:
    """F_n(M) (plus the stranding term) evaluated fast, for both policies.

    Per GPU shape g of the workload: does one task fit the cards, and how much free
    capacity could it use (``keeps``); the classes of g whose CPU fits the host add
    their weight (a prefix sum over g's classes sorted by CPU). Then
    F_n(M) = free - sum_g fits_g x keeps_g x P_g(cpu_free), the same number as
    ``node_fragmentation`` with host memory left to the filter.

    Memos, all bounded: card summaries by content (nodes repeat a few states), and by
    the identity of the usage tuple (the scheduler hands the same tuple objects until a
    node changes; an entry holds its tuple, so its id cannot be reused meanwhile); phi
    by (summary, free CPU), summaries being one object per content.
    """

    def __init__(
        self,
        workload: Workload,
        strand: float,
        tie: float,
        cpu_per_pct: float = 0.0,
        rounded: bool = False,
        leftover: Callable[[], Sequence[float]] | None = None,
        leftover_weight: float = 0.0,
        card_weight: float = 0.0,
        price: Mapping[NodeKind, float] | None = None,
        kinds: Mapping[NodeKind, int] | None = None,
        leftover_by_model: Mapping[str, Sequence[float]] | None = None,
        cpu_per_pct_by_model: Mapping[str, float] | None = None,
        mem_per_pct: float = 0.0,
        cpu_floor: int = 0,
        mem_floor: int = 0,
        short_weight: float = 0.0,
    ) -> None:
        self.strand, self.tie, self.cpu_per_pct = strand, tie, cpu_per_pct
        self.mem_per_pct = mem_per_pct
        self.cpu_floor, self.mem_floor = cpu_floor, mem_floor
        self.short_weight = short_weight
        self.card_weight = card_weight
        # Per node kind: the cost of a percent of its cards; looked up by the node's cards
        # and host, by its cards alone (no host known), or by its model.
        self.price = _PriceBook(price or {}, kinds or {})
        # Per model where constrained tasks make models differ; else the one table / ratio.
        self.leftover_by_model = {m: tuple(t) for m, t in (leftover_by_model or {}).items()}
        self.cpu_per_pct_by_model = dict(cpu_per_pct_by_model or {})
        self._leftover_of = leftover
        self.leftover_weight = leftover_weight
        self.rounded = rounded
        groups: dict[tuple[int, int, frozenset[str]], list[tuple[int, float]]] = {}
        for c in workload.classes:
            groups.setdefault((c.vgpus, c.cores, c.models), []).append((c.cpu_milli, c.weight))
        self.shapes = tuple(groups)
        self.cpus: list[list[int]] = []
        self.prefix: list[list[float]] = []
        for shape in self.shapes:
            rows = sorted(groups[shape])
            self.cpus.append([cpu for cpu, _ in rows])
            acc, prefix = 0.0, [0.0]
            for _, w in rows:
                acc += w
                prefix.append(acc)
            self.prefix.append(prefix)
        # content -> (summary, its packed card parts); identity -> ``_Seen``.
        self._cards: dict[tuple[object, ...], tuple[Summary, int]] = {}
        self._by_id: dict[tuple[int, int], _Seen] = {}
        self._phis: dict[tuple[int, int | None], float] = {}
        self._card_costs: dict[tuple[int, int, bool, str], float] = {}
        # (free, whole, model) of one card -> its part of every shape's (fits count, keeps),
        # packed in one int (``_FIELD`` bits each): a node's parts then add up as one sum.
        self._card_parts: dict[tuple[int, bool, str], int] = {}

    def priced(self, price: Mapping[NodeKind, float], kinds: Mapping[NodeKind, int]) -> _Measure:
        """This measure with other prices per node kind, sharing every memo."""
        out = copy.copy(self)
        out.price = _PriceBook(price, kinds)
        return out

    @cached_property
    def leftover(self) -> tuple[float, ...]:
        """The shared cards' hole values, learned on first use: a policy built and then handed
        its workload (the replay, the extender) never learns the prior's."""
        return tuple(self._leftover_of()) if self._leftover_of else (0.0,) * (FULL_CORES + 1)

    def card_cost(self, card: Card, used: CardUsage, cores: int) -> float:
        free = card_free(card, used)
        whole = _whole_free(card, used)
        key = (free, cores, whole, card.model)
        cost = self._card_costs.get(key)
        if cost is None:
            after = max(0, free - cores)
            if self.leftover_weight and cores < FULL_CORES:
                # The learned table already knows which shares fill which hole, and how
                # often: FGD's one-task-fits test beside it only blurs that.
                table = self.leftover_by_model.get(card.model, self.leftover)
                cost = self.leftover_weight * (table[after] - (0.0 if whole else table[free]))
            else:
                cost = self._card_waste(after) - self._card_waste(free)
            cost += self.tie * free  # fullest first among equals
            self._card_costs[key] = cost
        return cost

    def score(
        self,
        cards: Sequence[Card],
        before: Sequence[CardUsage],
        after: Sequence[CardUsage],
        host: Host | None,
        pod_cpu: int,
        pod_memory: int = 0,
    ) -> float:
        seen_b = self._seen(cards, before)
        sum_b = seen_b.summary
        # The pod changes a few cards: the rest of ``after`` is ``before``'s objects.
        sum_a = self._seen(cards, after, seen_b).summary
        cpu_b = None if host is None else host.cpu_free
        cpu_a = None if host is None else host.cpu_free - pod_cpu
        mem_b = mem_a = None
        if host is not None and self.mem_per_pct:
            mem_b, mem_a = host.memory_free, host.memory_free - pod_memory
        growth_avoided = self._phi(sum_b, cpu_b, mem_b) - self._phi(sum_a, cpu_a, mem_a)
        if self.rounded:  # percent of a card -> GPUs, as kube-scheduler's 0-100 integer
            return float(int(100 / (1 + math.exp(-growth_avoided / 100))))
        if self.card_weight:
            growth_avoided -= self.card_weight * self._cards_cost(cards, before, after)
            if self.short_weight and cpu_a is not None:
                jump = self._short(sum_a, cpu_a, mem_a) - self._short(sum_b, cpu_b, mem_b)
                growth_avoided -= self.card_weight * self.short_weight * jump
            if self.price:  # the same on every card of the node: it weighs nodes, not cards
                taken = sum(a.cores for a in after) - sum(b.cores for b in before)
                growth_avoided -= self.card_weight * taken * self.price.of(cards, host)
        return growth_avoided - self.tie * sum_a[0]

    def _cards_cost(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float:
        """``card_cost`` of the cards the pod takes a share of."""
        cost = 0.0
        for card, b, a in zip(cards, before, after, strict=True):
            if a is b:
                continue
            taken = a.cores - b.cores
            if 0 < taken < FULL_CORES:
                cost += self.card_cost(card, b, taken)
        return cost

    def _short(self, summary: Summary, cpu_free: int | None, mem_free: int | None) -> float:
        """What the node's free GPU keeps at the end beyond its cards' expected holes, where its
        host is below the floor (every free percent stays), else 0."""
        if cpu_free is None:
            return 0.0
        if cpu_free < self.cpu_floor or (mem_free is not None and mem_free < self.mem_floor):
            return summary[0] - summary[2]
        return 0.0

    def _phi(self, summary: Summary, cpu_free: int | None, mem_free: int | None = None) -> float:
        key = (id(summary), cpu_free)
        phi = self._phis.get(key)
        if phi is None:
            if len(self._phis) > 2 * MEMO:
                self._phis.clear()
            phi = self._phis[key] = self._fragment_of(summary, cpu_free)
        # The stranding term outside the memo: free memory would multiply its keys.
        r = summary[3]
        if cpu_free is not None and self.strand and r:
            fed = max(0, cpu_free) / r
            if mem_free is not None:  # memory strands GPUs as CPU does; the shorter of the two
                fed = min(fed, max(0, mem_free) / self.mem_per_pct)
                if mem_free < self.mem_floor:
                    fed = 0.0
            if cpu_free < self.cpu_floor:  # too little left for the smallest task that matters
                fed = 0.0
            phi += self.strand * max(0.0, summary[0] - fed)
        return phi

    def _fragment_of(self, summary: Summary, cpu_free: int | None) -> float:
        """Phi without the stranding term: the measure and the shared cards' expected leftover."""
        total, shapes, leftover, _ = summary
        if total == 0:
            return 0.0
        usable = 0.0
        for g, (fits, keeps) in enumerate(zip(shapes[0::2], shapes[1::2], strict=True)):
            if fits:
                prefix = self.prefix[g]
                usable += keeps * (prefix[-1] if cpu_free is None else prefix[bisect_right(self.cpus[g], cpu_free)])
        phi = total - usable  # weights sum to 1 with the tasks without GPUs: they use none
        return phi + self.leftover_weight * leftover  # shared cards' expected final leftover

    def _seen(self, cards: Sequence[Card], usage: Sequence[CardUsage], base: _Seen | None = None) -> _Seen:
        """``usage``'s summary (free percent, and per shape: does one task fit the cards, and how
        much free it could use) with what it was made of, memoized by identity; ``base``: a
        state of the same cards whose usage objects ``usage`` shares where a card is unchanged."""
        ident = (id(cards), id(usage))
        seen = self._by_id.get(ident) if base is None else None  # derived states are not kept
        if seen is not None and seen.cards is cards and seen.usage is usage:
            return seen
        if base is None or base.cards is not cards:
            frees = tuple(card_free(c, u) for c, u in zip(cards, usage, strict=True))
            whole = tuple(_whole_free(c, u) for c, u in zip(cards, usage, strict=True))
            models = tuple(c.model for c in cards)
            changed: list[int] | None = None
        else:  # only the cards whose usage object differs are worked out again
            before = base.usage
            changed = [pos for pos, (u, b) in enumerate(zip(usage, before, strict=True)) if u is not b]
            free_l, whole_l = list(base.frees), list(base.whole)
            for pos in changed:
                free_l[pos] = card_free(cards[pos], usage[pos])
                whole_l[pos] = _whole_free(cards[pos], usage[pos])
            frees, whole, models = tuple(free_l), tuple(whole_l), base.models
        summary, packed = self._summary_of(frees, whole, models, base if changed is not None else None, changed)
        if len(self._by_id) > MEMO:  # bounded: a long-lived extender sees many states
            self._by_id.clear()
        made = _Seen(cards, usage, summary, frees, whole, packed, models)
        if base is None:  # a state derived from ``base`` (a pod placed) is seldom asked about again
            self._by_id[ident] = made
        return made

    def _summary_of(
        self,
        frees: tuple[int, ...],
        whole: tuple[bool, ...],
        models: tuple[str, ...],
        base: _Seen | None = None,
        changed: list[int] | None = None,
    ) -> tuple[Summary, int]:
        key = (frees, whole, models)
        hit = self._cards.get(key)
        if hit is not None:
            return hit
        # Per shape: cards one task can use (whole and allowed; or free >= its cores and
        # allowed) and their free percent, summed over the cards as packed ints: a node's
        # summary costs a dict lookup and an addition per card, not a pass per shape.
        if base is not None and changed is not None:
            # Exact: the packed sum is an integer, so swapping the changed cards' parts is the full sum.
            packed = base.packed
            for pos in changed:
                packed += self._part(frees[pos], whole[pos], models[pos]) - self._part(
                    base.frees[pos], base.whole[pos], models[pos]
                )
        else:
            packed = 0
            for free, w, model in zip(frees, whole, models, strict=True):
                packed += self._part(free, w, model)
        out: list[int] = []
        rest = packed
        for vgpus, cores, _ in self.shapes:
            count = rest & _MASK
            keeps = (rest >> _FIELD) & _MASK
            rest >>= 2 * _FIELD
            out += (int(count >= vgpus if cores >= FULL_CORES else count >= 1), keeps)
        tables = self.leftover_by_model
        if tables:
            left = sum(tables.get(m, self.leftover)[f] for f, w, m in zip(frees, whole, models, strict=True) if not w)
        else:
            left = sum(self.leftover[f] for f, w in zip(frees, whole, strict=True) if not w)
        r = self.cpu_per_pct_by_model.get(models[0], self.cpu_per_pct) if models else self.cpu_per_pct
        hit = ((sum(frees), tuple(out), left, r), packed)
        if len(self._cards) > MEMO:
            # Phi entries are keyed by summary ids: they go with the summaries.
            self._cards.clear()
            self._by_id.clear()
            self._phis.clear()
        self._cards[key] = hit
        return hit

    def _part(self, free: int, whole: bool, model: str) -> int:
        part_key = (free, whole, model)
        part = self._card_parts.get(part_key)
        if part is None:
            part = self._card_parts[part_key] = self._card_part(free, whole, model)
        return part

    def _card_part(self, free: int, whole: bool, model: str) -> int:
        """One card's (usable, free if usable) for every shape, packed as ``_summary_of`` adds them."""
        packed = 0
        for g, (_, cores, allowed) in enumerate(self.shapes):
            ok = not allowed or model in allowed
            usable = (whole and ok) if cores >= FULL_CORES else (free >= cores and ok)
            if usable:
                packed |= (1 | free << _FIELD) << (2 * _FIELD * g)
        return packed

    def _card_waste(self, free: int) -> float:
        """One card's F for the whole workload: its free part, where a class cannot use it."""
        waste = 0.0
        for g, (_vgpus, cores, _models) in enumerate(self.shapes):
            usable = free >= cores if cores < FULL_CORES else free == FULL_CORES
            waste += self.prefix[g][-1] * (0 if usable else free)
        return waste
