"""Per pod-shape answer tables: what filter and prioritize answer for each node, kept
across calls so a call looks its names up instead of deciding node by node.

One ``ShapeAnswers`` per (pod shape, host request, node policy) id, the key the
per-node caches use (``Extender._key`` / ``_host_key``). It holds, for the nodes asked
about so far:

- ``verdicts``: node name -> True (fits, heartbeat fresh) or a ``NoFit`` (why not:
  the fit verdict, or the stale heartbeat); ``fits``, the set of the True ones, and
  ``failed`` / ``unresolvable``, name -> reason of the others, as filter answers them;
- ``scores``: node name -> the raw node score (``-inf``: does not fit), what prioritize
  normalises;
- ``ranked``: ``(-score, name)`` of every fitting node with a score, sorted: best first,
  equals by name. Filter's pick walks it from the top to the first name the call sent
  (``Extender._pick_table``): a set of the call's names is built in fresh memory, and only a
  few of the table's entries are read, instead of one lookup per name sent, each a cache
  miss on the table's keys by the time the shape's next pod comes.

An entry is correct for the node state it was computed from. ``ClusterState`` logs every
node whose cards, allocations or host change (``changes_since``); ``sync`` forgets those
nodes, so the next call computes them again, unless ``Extender.refresh_step`` did between
calls (for a table asked about lately: ``asked``, ``used``; ``holes``, the nodes forgotten and
not decided since, are what it decides). Heartbeats are not logged
(every node beats every 30 s): staleness is a matter of time, so ``expire`` re-reads the
heartbeats of the table's nodes once the oldest it relied on passes the cutoff, and of the
nodes it holds as stale on every call (a stale node is rare; one that beats again is fresh
again).

Unknown names (no inventory) are never stored: they cost a dict miss per call, and
whoever can reach the extender could otherwise grow a table with made-up names.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flexai_core.model import PodRequest

from .allocator import NoFit
from .policies.interface import Policy
from .state import NodeState

NO_FIT = float("-inf")  # the score of a node the pod does not fit
NO_INVENTORY = "node reports no vGPU inventory (is flexai-node running there?)"
# A name a bounded filter call did not reach (``Extender.filter_request``): not a verdict.
NOT_EVALUATED = "not yet evaluated for this pod shape; retry"


def stale_reason(hb: datetime | None) -> str:
    if hb is None:
        return "node inventory has no heartbeat"
    return f"node agent heartbeat is stale (last {hb.isoformat()}, older than the TTL)"


class ShapeAnswers:
    """The answers for one pod shape; callers hold the extender's table lock."""

    __slots__ = (
        "seq",
        "verdicts",
        "fits",
        "failed",
        "unresolvable",
        "scores",
        "ranked",
        "holes",
        "stale",
        "oldest",
        "asked",
        "used",
    )

    def __init__(self, seq: int) -> None:
        self.seq = seq  # ClusterState change-log position the entries are valid at
        self.verdicts: dict[str, Any] = {}  # name -> True or NoFit
        self.fits: set[str] = set()
        self.failed: dict[str, str] = {}
        self.unresolvable: dict[str, str] = {}
        self.scores: dict[str, float] = {}
        self.ranked: list[tuple[float, str]] = []
        self.holes: set[str] = set()  # names forgotten since: decided again between calls (``refresh_step``)
        self.stale: dict[str, datetime | None] = {}  # nodes answered stale -> the heartbeat read
        self.oldest: datetime | None = None  # oldest heartbeat of a node answered fresh
        self.asked: tuple[PodRequest, Policy] | None = None  # the last pod asked about, and its node policy
        self.used = 0.0  # when (monotonic) it was last asked about

    def clear(self) -> None:
        self.verdicts.clear()
        self.fits.clear()
        self.failed.clear()
        self.unresolvable.clear()
        self.scores.clear()
        self.ranked.clear()
        self.holes.clear()
        self.stale.clear()
        self.oldest = None

    def forget(self, name: str) -> None:
        if name in self.fits:
            score = self.scores.get(name, NO_FIT)
            if score > NO_FIT:
                ranked = self.ranked
                at = bisect_left(ranked, (-score, name))
                if at < len(ranked) and ranked[at] == (-score, name):
                    del ranked[at]
            self.fits.discard(name)
        self.verdicts.pop(name, None)
        self.holes.add(name)
        self.failed.pop(name, None)
        self.unresolvable.pop(name, None)
        self.scores.pop(name, None)
        self.stale.pop(name, None)

    def sync(self, seq: int, changed: list[str] | None) -> None:
        """Forget the nodes changed since the table's position (all when ``changed`` is None)."""
        if changed is None:
            self.clear()
        else:
            for name in changed:
                self.forget(name)
        self.seq = seq

    def expire(self, cutoff: datetime, nodes: Mapping[str, NodeState]) -> None:
        """Forget the verdicts a heartbeat moved: fresh nodes now past ``cutoff`` (looked at
        only once the oldest fresh heartbeat is), and stale nodes that beat since."""
        for name, hb in list(self.stale.items()):
            node = nodes.get(name)
            if node is None or node.inventory.heartbeat != hb:
                self.forget(name)
        oldest = self.oldest
        if oldest is None or oldest >= cutoff:
            return
        self.oldest = None
        for name in list(self.verdicts):
            if name in self.stale:
                continue
            node = nodes.get(name)
            hb = node.inventory.heartbeat if node is not None else None
            if hb is None or hb < cutoff:
                self.forget(name)
            elif self.oldest is None or hb < self.oldest:
                self.oldest = hb

    def asked_by(self, req: PodRequest, policy: Policy, now: float) -> None:
        """A call of this shape is under way: what ``refresh_step`` decides with, and when."""
        self.asked = (req, policy)
        self.used = now

    def put_stale(self, name: str, hb: datetime | None) -> NoFit:
        if name in self.verdicts:
            self.forget(name)
        verdict = NoFit(stale_reason(hb), False)
        self.holes.discard(name)
        self.verdicts[name] = verdict
        self.unresolvable[name] = verdict.reason
        self.stale[name] = hb
        return verdict

    def put(self, name: str, verdict: Any, hb: datetime, score: float) -> None:
        """A fresh node's verdict (True or NoFit) and raw score (``NO_FIT`` for a NoFit)."""
        if name in self.verdicts:
            self.forget(name)
        self.holes.discard(name)
        self.verdicts[name] = verdict
        self.scores[name] = score
        if verdict is True:
            self.fits.add(name)
            if score > NO_FIT:
                insort(self.ranked, (-score, name))
        else:
            (self.failed if verdict.resolvable else self.unresolvable)[name] = verdict.reason
        if self.oldest is None or hb < self.oldest:
            self.oldest = hb
