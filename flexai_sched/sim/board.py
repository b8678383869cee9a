"""Nodes that fit one pod type, bucketed by score: the simulated kube-scheduler's shortlist.

kube-scheduler scores every feasible node and picks one of the best at random. With
1,213 nodes and ~10,000 pods a replay cannot score every node for every pod, but it
does not need to: a node's score for a pod type changes only when the node changes,
and one node changes per pod. A board keeps each node's last score for its type and,
on each use, re-scores only the nodes changed since (read from the cluster's change
log). The choice is the same as a full scan: among the best-scored nodes that also
pass the pod's own filter, the first in node order, as the FGD paper's simulator picks
(it names nodes with a random prefix per seed, so ``replay`` shuffles the node order
per seed); or, with ``random_ties``, one uniformly at random (kube-scheduler's own
``selectHost``, and how the simulator's Random-fit draws).

When board scores only bound the real ones (``choose_bounded``), the real score of a
node for one pod type is kept in a ``Memo`` until that node changes: consecutive pods
of a type walk mostly the same unchanged nodes.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left, insort
from collections.abc import Callable

# Rejection sampling inside a tie before scanning it: cheap when most nodes pass.
_TRIES = 8


class Board:
    def __init__(self, evaluate: Callable[[int], float | None], random_ties: bool = False) -> None:
        self._evaluate = evaluate
        self._random_ties = random_ties
        self._seen = 0  # position in the change log already applied
        self._score: dict[int, float] = {}
        self._buckets: dict[float, list[int]] = {}  # score -> its nodes, in node order
        self._heap: list[float] = []  # negated scores, lazily cleaned
        self._in_heap: set[float] = set()

    def refresh(self, log: list[int], nodes: int) -> None:
        if self._seen == 0 and not self._score:
            changed: range | set[int] = range(nodes)
        else:
            changed = set(log[self._seen :])
        self._seen = len(log)
        for n in sorted(changed):
            self._remove(n)
            s = self._evaluate(n)
            if s is not None:
                self._add(n, s)

    def choose(self, passes: Callable[[int], bool], rng: random.Random) -> int | None:
        """The first (or a random) node among the best-scored ones that pass; None if none does."""
        skipped: list[float] = []
        chosen = None
        while self._heap:
            s = -self._heap[0]
            bucket = self._buckets.get(s)
            if bucket:
                chosen = _pick(bucket, passes, rng) if self._random_ties else _first(bucket, passes)
                if chosen is not None:
                    break
                skipped.append(heapq.heappop(self._heap))
                continue
            heapq.heappop(self._heap)
            self._in_heap.discard(s)
        for neg in skipped:
            heapq.heappush(self._heap, neg)
        return chosen

    def choose_bounded(
        self, exact: Callable[[int], float], passes: Callable[[int], bool], rng: random.Random
    ) -> int | None:
        """As ``choose``, when board scores only bound the real ones from above.

        Walks the buckets from the top, scoring passing nodes with ``exact``, until the
        next bound is below the best real score found: no node further down can beat or
        tie it. Without ``random_ties`` it stops sooner, at the first node whose real
        score reaches its bound: the rest of its bucket (later in node order) and every
        lower bucket can at most tie it, and ties go to the first.
        """
        skipped: list[float] = []
        best = float("-inf")
        tied: list[int] = []
        first = not self._random_ties
        while self._heap:
            s = -self._heap[0]
            bucket = self._buckets.get(s)
            if not bucket:
                heapq.heappop(self._heap)
                self._in_heap.discard(s)
                continue
            if s < best:
                break
            reached = False
            for n in bucket:
                if passes(n):
                    e = exact(n)
                    if e > best:
                        best, tied = e, [n]
                    elif e == best:
                        tied.append(n)
                    if first and e == s:
                        reached = True
                        break
            if reached:
                break
            skipped.append(heapq.heappop(self._heap))
        for neg in skipped:
            heapq.heappush(self._heap, neg)
        if not tied:
            return None
        return tied[rng.randrange(len(tied))] if self._random_ties else min(tied)

    def score(self, node: int) -> float | None:
        return self._score.get(node)

    def _add(self, n: int, s: float) -> None:
        self._score[n] = s
        insort(self._buckets.setdefault(s, []), n)
        if s not in self._in_heap:
            self._in_heap.add(s)
            heapq.heappush(self._heap, -s)

    def _remove(self, n: int) -> None:
        s = self._score.pop(n, None)
        if s is None:
            return
        bucket = self._buckets[s]
        del bucket[bisect_left(bucket, n)]


class Memo:
    """One pod type's real scores by node, each kept until its node changes (read from
    the cluster's change log, as boards do): the same numbers ``score`` gives, computed
    once per node state."""

    def __init__(self) -> None:
        self._seen = 0
        self._score: dict[int, float] = {}

    def refresh(self, log: list[int]) -> None:
        if self._score:
            for n in set(log[self._seen :]):
                self._score.pop(n, None)
        self._seen = len(log)

    def wrap(self, score: Callable[[int], float]) -> Callable[[int], float]:
        """``score``, memoized; call ``refresh`` first."""
        known = self._score

        def cached(n: int) -> float:
            s = known.get(n)
            if s is None:
                s = known[n] = score(n)
            return s

        return cached


def _first(bucket: list[int], passes: Callable[[int], bool]) -> int | None:
    for n in bucket:
        if passes(n):
            return n
    return None


def _pick(bucket: list[int], passes: Callable[[int], bool], rng: random.Random) -> int | None:
    for _ in range(_TRIES):
        n = bucket[rng.randrange(len(bucket))]
        if passes(n):
            return n
    ok = [n for n in bucket if passes(n)]
    return ok[rng.randrange(len(ok))] if ok else None
