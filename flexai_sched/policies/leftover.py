"""What a shared card's free part keeps at the end: a table learned by replaying the workload on cards alone.

A card with some share on it and ``h`` percent free either takes more shares or keeps its
hole. ``leftover_table`` gives E[h], what such a card is expected to keep, for one target
workload, by replaying that workload on a cluster of identical cards (no nodes, no hosts):

- tasks are drawn by weight until their GPU demand reaches the cards' capacity (a replay
  up to 100% arrived); a whole-card task takes idle cards; a share takes the card the
  current table likes best, least E[h - s] - E[h], where an idle card has E = 0 (an idle
  card that no share opens goes to whole-card tasks);
- after each round E[h] becomes the mean final free part of the cards that had ``h`` free
  at some point, averaged half and half with the table before (damped policy iteration).
  A hole never seen keeps E[h] = h: nothing is expected to fill it.

Why replay rather than a closed form: holes compete for the same shares (on the Alibaba
trace about a thousand 19% holes beside 81% shares wait for about a hundred shares of 19%
or less) and the cluster fills up, so how long a hole waits depends on what else is open.
A closed form (each hole filled by the first share that fits, at the shares' rates) sent
more shares into holes that then stayed open (bench/results/trace-replay.md). Deterministic
(one fixed seed), pure arithmetic; cached per workload.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Final

from flexai_core.model import FULL_CORES

# The replayed cluster: large enough that holes compete as in a real one, small enough to
# learn in half a second (settings compared: bench/results/trace-replay.md).
CARDS: Final = 1000
ROUNDS: Final = 16
REPLAYS: Final = 40
MIN_SEEN: Final = 5  # fewer cards than this with a given hole: keep the previous estimate
# With GPU models that constrained tasks need, each replay tries every model a task
# allows: fewer replays keep learning near a second.
MODEL_ROUNDS: Final = 8
MODEL_REPLAYS: Final = 20

# (cards per task, percent of each card (FULL_CORES: whole cards), weight)
Draw = tuple[int, int, float]


def leftover_table(draws: Iterable[Draw]) -> tuple[float, ...]:
    """E[h] for h = 0..100 (E[100] = 0: an idle card is no hole). ``draws``: the workload's GPU
    tasks; tasks without GPUs change nothing on the cards and may be left out. The same
    tasks in any order, split or scaled, give the same table."""
    return learn(normalized(draws))


def normalized(draws: Iterable[Draw]) -> tuple[Draw, ...]:
    """GPU tasks merged by shape, sorted, weights summing to 1: ``learn``'s cache key."""
    merged: dict[tuple[int, int], float] = {}
    for n, cores, w in draws:
        if n > 0 and 0 < cores <= FULL_CORES and w > 0:
            merged[(n, cores)] = merged.get((n, cores), 0.0) + w
    total = sum(merged.values())
    return tuple((n, cores, round(w / total, 12)) for (n, cores), w in sorted(merged.items()))


@lru_cache(maxsize=32)
def learn(
    draws: tuple[Draw, ...], cards: int = CARDS, rounds: int = ROUNDS, replays: int = REPLAYS, seed: int = 0
) -> tuple[float, ...]:
    """``leftover_table`` for ``normalized`` draws, with the replayed cluster's
    settings open (bench/leftover_settings.py compares them)."""
    table = [float(h) for h in range(FULL_CORES + 1)]
    table[FULL_CORES] = 0.0
    if not any(c < FULL_CORES for _, c, _ in draws):
        return tuple(table)  # no shares: no hole ever forms
    rng = random.Random(seed)
    for _ in range(rounds):
        sums = [0.0] * (FULL_CORES + 1)
        counts = [0] * (FULL_CORES + 1)
        for _ in range(replays):
            replay_cards(_arrivals(rng, draws, cards), table, cards, sums, counts)
        for h in range(1, FULL_CORES):
            if counts[h] >= MIN_SEEN:
                table[h] = (table[h] + sums[h] / counts[h]) / 2
    return tuple(table)


def _arrivals(rng: random.Random, draws: Sequence[Draw], cards: int = CARDS) -> list[int]:
    """One replay's GPU tasks: a share as its percent (a task of n shares as n of them), n
    whole cards as -n."""
    kinds = [[-n] if cores >= FULL_CORES else [cores] * n for n, cores, _ in draws]
    demand = [n * cores for n, cores, _ in draws]
    weights = [w for _, _, w in draws]
    out: list[int] = []
    total, target = 0, cards * FULL_CORES
    while True:
        for i in rng.choices(range(len(draws)), weights, k=256):
            if total + demand[i] > target:
                return out
            total += demand[i]
            out.extend(kinds[i])


def replay_cards(tasks: Sequence[int], table: Sequence[float], cards: int, sums: list[float], counts: list[int]) -> int:
    """Place ``tasks`` (a share as its percent, n whole cards as -n) on ``cards`` idle cards
    with ``table``; add each opened card's final hole to ``sums``/``counts`` of every hole it
    had. Returns the free capacity left, in percent of one card."""
    idle = cards
    open_count = [0] * FULL_CORES  # open cards by free part (0: full)
    cards_by_free: dict[int, list[int]] = {}
    frees: list[int] = []  # free parts with an open card, ascending
    holes: list[set[int]] = []  # per opened card: every free part it had
    final: list[int] = []
    for task in tasks:
        if task < 0:
            if idle >= -task:
                idle += task
            continue
        best, best_cost = -1, 0.0
        for h in frees[bisect_left(frees, task) :]:
            cost = table[h - task] - table[h]
            if best < 0 or cost < best_cost:
                best, best_cost = h, cost
        if idle and (best < 0 or table[FULL_CORES - task] < best_cost):
            best = FULL_CORES
        if best < 0:
            continue  # fits nowhere: dropped, as a failed pod
        if best == FULL_CORES:
            idle -= 1
            card = len(holes)
            holes.append(set())
            final.append(0)
        else:
            card = cards_by_free[best].pop()
            open_count[best] -= 1
            if not open_count[best]:
                frees.remove(best)
        left = best - task
        holes[card].add(left)
        final[card] = left
        cards_by_free.setdefault(left, []).append(card)
        if left and not open_count[left]:
            insort(frees, left)
        open_count[left] += 1
    for card, seen in enumerate(holes):
        for h in seen:
            sums[h] += final[card]
            counts[h] += 1
    return idle * FULL_CORES + sum(final)


# (cards per task, percent of each card, weight, the models it may use (empty: any))
ModelDraw = tuple[int, int, float, frozenset[str]]


def leftover_tables(
    draws: Iterable[ModelDraw], cards_by_model: Mapping[str, int], price: Mapping[str, float]
) -> dict[str, tuple[float, ...]]:
    """E[h] per GPU model, for a workload whose tasks may be confined to some models:
    the replay of ``leftover_table`` on a cluster of ``CARDS`` cards split among the models
    as ``cards_by_model`` is, each task only on the models it allows, a share taking the
    card (of any model it allows) where E[h - s] - E[h] + ``price`` x s is least and whole
    cards the idle ones of the cheapest model. A hole on a model that constrained shares
    need is filled more often than the same hole elsewhere, so its E differs.

    Without any price (no model is needed by constrained tasks) every model gets the one
    table of ``leftover_table``."""
    draws = tuple(draws)
    if not any(p > 0 for p in price.values()):
        table = leftover_table((n, c, w) for n, c, w, _ in draws)
        return {m: table for m in cards_by_model}
    merged: dict[tuple[int, int, frozenset[str]], float] = {}
    for n, cores, w, models in draws:
        if n > 0 and 0 < cores <= FULL_CORES and w > 0:
            merged[(n, cores, models)] = merged.get((n, cores, models), 0.0) + w
    total = sum(merged.values())
    key = tuple((n, c, tuple(sorted(ms)), round(w / total, 12)) for (n, c, ms), w in sorted(merged.items(), key=repr))
    cap = sum(k for k in cards_by_model.values() if k > 0)
    cards = tuple(sorted((m, round(CARDS * k / cap)) for m, k in cards_by_model.items() if k > 0))
    prices = tuple(sorted((m, float(p)) for m, p in price.items()))
    learned = learn_models(key, tuple((m, k) for m, k in cards if k > 0), prices)
    if all(m in learned for m in cards_by_model):
        return learned
    fallback = leftover_table((n, c, w) for n, c, w, _ in draws)  # models too small to replay
    return {m: learned.get(m, fallback) for m in cards_by_model}


@lru_cache(maxsize=16)
def learn_models(
    draws: tuple[tuple[int, int, tuple[str, ...], float], ...],
    cards: tuple[tuple[str, int], ...],
    price: tuple[tuple[str, float], ...],
    rounds: int = MODEL_ROUNDS,
    replays: int = MODEL_REPLAYS,
    seed: int = 0,
) -> dict[str, tuple[float, ...]]:
    """``leftover_tables`` for merged, normalized draws (cards per task, percent, allowed
    models sorted (empty: any), weight), the replayed cards per model and each model's price."""
    models = [m for m, _ in cards]
    start = [float(h) for h in range(FULL_CORES + 1)]
    start[FULL_CORES] = 0.0
    tables = {m: list(start) for m in models}
    if not any(c < FULL_CORES for _, c, _, _ in draws):
        return {m: tuple(t) for m, t in tables.items()}
    prices = dict(price)
    size = dict(cards)
    # Whole cards go to the cheapest model first, the larger among equals: try them in that order.
    models.sort(key=lambda m: (prices.get(m, 0.0), -size[m], m))
    kinds: list[tuple[list[int], tuple[str, ...]]] = []
    for n, cores, allowed, _ in draws:
        usable = tuple(m for m in models if not allowed or m in allowed)
        kinds.append(([-n] if cores >= FULL_CORES else [cores] * n, usable))
    demand = [n * cores for n, cores, _, _ in draws]
    weights = [w for _, _, _, w in draws]
    target = sum(k for _, k in cards) * FULL_CORES
    rng = random.Random(seed)
    for _ in range(rounds):
        sums = {m: [0.0] * (FULL_CORES + 1) for m in models}
        counts = {m: [0] * (FULL_CORES + 1) for m in models}
        for _ in range(replays):
            tasks: list[tuple[int, tuple[str, ...]]] = []
            total, full = 0, False
            while not full:
                for i in rng.choices(range(len(draws)), weights, k=256):
                    if total + demand[i] > target:
                        full = True
                        break
                    total += demand[i]
                    tasks.extend((t, kinds[i][1]) for t in kinds[i][0])
            _replay_models(tasks, tables, dict(cards), prices, sums, counts)
        for m in models:
            for h in range(1, FULL_CORES):
                if counts[m][h] >= MIN_SEEN:
                    tables[m][h] = (tables[m][h] + sums[m][h] / counts[m][h]) / 2
    return {m: tuple(t) for m, t in tables.items()}


def _replay_models(
    tasks: Sequence[tuple[int, tuple[str, ...]]],
    tables: Mapping[str, Sequence[float]],
    cards: Mapping[str, int],
    price: Mapping[str, float],
    sums: Mapping[str, list[float]],
    counts: Mapping[str, list[int]],
) -> None:
    """``replay_cards`` with cards of several models (see ``leftover_tables``)."""
    idle = dict(cards)
    open_count = {m: [0] * FULL_CORES for m in cards}
    by_free: dict[tuple[str, int], list[int]] = {}
    frees: dict[str, list[int]] = {m: [] for m in cards}
    holes: list[set[int]] = []
    final: list[int] = []
    model_of: list[str] = []
    for task, usable in tasks:
        if task < 0:
            for m in usable:  # cheapest first (``learn_models`` orders them)
                if idle[m] >= -task:
                    idle[m] += task
                    break
            continue
        best_m, best_h, best_cost = "", -1, 0.0
        for m in usable:
            t, p = tables[m], price.get(m, 0.0) * task
            fs = frees[m]
            for h in fs[bisect_left(fs, task) :]:
                cost = t[h - task] - t[h] + p
                if best_h < 0 or cost < best_cost:
                    best_m, best_h, best_cost = m, h, cost
            if idle[m]:
                cost = t[FULL_CORES - task] + p
                if best_h < 0 or cost < best_cost:
                    best_m, best_h, best_cost = m, FULL_CORES, cost
        if best_h < 0:
            continue  # fits nowhere: dropped, as a failed pod
        m = best_m
        if best_h == FULL_CORES:
            idle[m] -= 1
            card = len(holes)
            holes.append(set())
            final.append(0)
            model_of.append(m)
        else:
            card = by_free[(m, best_h)].pop()
            open_count[m][best_h] -= 1
            if not open_count[m][best_h]:
                frees[m].remove(best_h)
        left = best_h - task
        holes[card].add(left)
        final[card] = left
        by_free.setdefault((m, left), []).append(card)
        if left and not open_count[m][left]:
            insort(frees[m], left)
        open_count[m][left] += 1
    for card, seen in enumerate(holes):
        s, c = sums[model_of[card]], counts[model_of[card]]
        for h in seen:
            s[h] += final[card]
            c[h] += 1
