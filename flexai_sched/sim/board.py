"""Nodes that fit one pod type, bucketed by score: the simulated kube-scheduler's shortlist.

kube-scheduler scores every feasible node and picks one of the best at random. With
1,213 nodes and ~10,000 pods a replay cannot score every node for every pod, but it
does not need to: a node's score for a pod type changes only when the node changes,
and one node changes per pod. A board keeps each node's last score for its type and,
on each use, re-scores only the nodes changed since (read from the cluster's change
log). The choice is the same as a full scan: uniform among the best-scored nodes that
also pass the pod's own filter.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

# Rejection sampling inside a tie before scanning it: cheap when most nodes pass.
_TRIES = 8


class Board:
    def __init__(self, evaluate: Callable[[int], float | None]) -> None:
        self._evaluate = evaluate
        self._seen = 0  # position in the change log already applied
        self._score: dict[int, float] = {}
        self._buckets: dict[float, list[int]] = {}
        self._pos: dict[int, int] = {}  # node -> index in its bucket
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
        """A uniformly random node among the best-scored ones that pass; None if none does."""
        skipped: list[float] = []
        chosen = None
        while self._heap:
            s = -self._heap[0]
            bucket = self._buckets.get(s)
            if bucket:
                chosen = _pick(bucket, passes, rng)
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
        tie it.
        """
        skipped: list[float] = []
        best = float("-inf")
        tied: list[int] = []
        while self._heap:
            s = -self._heap[0]
            bucket = self._buckets.get(s)
            if not bucket:
                heapq.heappop(self._heap)
                self._in_heap.discard(s)
                continue
            if s < best:
                break
            for n in bucket:
                if passes(n):
                    e = exact(n)
                    if e > best:
                        best, tied = e, [n]
                    elif e == best:
                        tied.append(n)
            skipped.append(heapq.heappop(self._heap))
        for neg in skipped:
            heapq.heappush(self._heap, neg)
        return tied[rng.randrange(len(tied))] if tied else None

    def score(self, node: int) -> float | None:
        return self._score.get(node)

    def _add(self, n: int, s: float) -> None:
        self._score[n] = s
        bucket = self._buckets.setdefault(s, [])
        self._pos[n] = len(bucket)
        bucket.append(n)
        if s not in self._in_heap:
            self._in_heap.add(s)
            heapq.heappush(self._heap, -s)

    def _remove(self, n: int) -> None:
        s = self._score.pop(n, None)
        if s is None:
            return
        bucket = self._buckets[s]
        i = self._pos.pop(n)
        last = bucket.pop()
        if last != n:
            bucket[i] = last
            self._pos[last] = i


def _pick(bucket: list[int], passes: Callable[[int], bool], rng: random.Random) -> int | None:
    for _ in range(_TRIES):
        n = bucket[rng.randrange(len(bucket))]
        if passes(n):
            return n
    ok = [n for n in bucket if passes(n)]
    return ok[rng.randrange(len(ok))] if ok else None
