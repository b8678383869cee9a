"""Reservations: the room a pod will most likely be bound to, held from its prioritize
(or its filter) until its bind.

kube-scheduler starts the next pod's cycle as soon as it has chosen a node for this one,
while this pod's bind is still on its way to us. Without a reservation, when this pod takes
a node's last room, the next pod is offered the same node, its bind is refused, and it waits
out a back-off (1 s, then 2 s). ``ClusterState.reserve`` counts a reservation in the node's
``usage``, so filter and prioritize of every other pod see it (the answer tables hear of it
through the change log), while a bind places against ``allocated``: a bind is the truth,
a reservation a guess.

Where: a filter that leaves one node reserves it: kube-scheduler binds there without calling
prioritize (with ``filter_answer`` "best", the default, every filter that fits leaves one
node). After prioritize ("all"): kube-scheduler adds our score (x weight x 10) to its own
plugins' scores, so a node we score below ``MAX_SCORE`` loses to one at ``MAX_SCORE`` unless
its plugins differ by a lot; the pod is reserved on the nodes at ``MAX_SCORE``, at most
``RESERVE_NODES`` of them (best raw score first). Either way as it would be bound there (its
card policy, the cards held for preemptors counted).

A reservation ends with the pod's allocation (its bind: in the same step), its bind failing,
its next cycle (a new filter for it), its release, or after ``RESERVE_S`` without any of
these (a pod deleted mid-cycle, a cycle that failed after prioritize, kube-scheduler
restarting). Once the pod's bind has arrived (``bind_arrived``), the reservation waits for
that bind (up to ``BIND_WAIT_S``): binds queue behind one another for the apiserver.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from flexai_core.model import Allocation, PodRequest

from .allocator import Placement, place
from .state import NodeState

if TYPE_CHECKING:
    from .extender import Extender

# Longer than a bind takes to follow prioritize even on a loaded control plane, short enough
# that room held for a pod that is never bound comes back before kube-scheduler's back-off.
RESERVE_S = 1.0
# Once its bind has arrived, a pod's reservation waits for that bind's outcome at most this
# long (binds queue for the apiserver: hundreds of milliseconds each in a burst on 2 cores).
BIND_WAIT_S = 30.0
# Nodes one pod is reserved on at most. Every reservation is a node change that each shape's
# answer table must decide again: one node keeps that cost to the node the bind then changes
# anyway, and the nodes it misses are equal best ones, which a burst's start leaves roomy.
RESERVE_NODES = 1


class Reserving:
    """The extender's reservations' deadlines; ``Extender`` owns one (``extender.reserving``)."""

    def __init__(self, ext: Extender) -> None:
        self._ext = ext
        self._mu = threading.Lock()
        self._until: dict[str, tuple[str, float]] = {}  # pod key -> (UID, clock() deadline)
        # Deadlines in a heap, so an expiry pops what is due instead of scanning every
        # reservation; an entry whose pod's deadline moved (or ended) since is skipped.
        self._heap: list[tuple[float, str, str]] = []
        self._next = math.inf  # the earliest deadline: ``expire`` is one comparison until then
        # Binds by where their pod was reserved ("there", "elsewhere", "none"), and "expired".
        self._counts: dict[str, int] = {}

    def counts(self) -> dict[str, int]:
        """Outcomes so far (the metrics read them)."""
        with self._mu:
            return dict(self._counts)

    def bound(self, reserved: tuple[Allocation, ...], node: str) -> None:
        """A bind to ``node`` succeeded; ``reserved`` is what its pod held when it came."""
        outcome = "none" if not reserved else "there" if any(r.node == node for r in reserved) else "elsewhere"
        with self._mu:
            self._counts[outcome] = self._counts.get(outcome, 0) + 1

    def begin(self, req: PodRequest) -> None:
        """A new cycle for the pod (its filter): what an earlier one reserved ends."""
        if self._ext.state.reservations(req.key):
            self._ext.state.unreserve(req.key)

    def bind_arrived(self, key: str) -> None:
        """The pod's bind has come (it may wait for a thread, then for the apiserver): its
        reservation stays until that bind is over, not ``RESERVE_S`` after prioritize."""
        if key not in self._until:
            return
        with self._mu:
            got = self._until.get(key)
            if got is not None:
                until = max(got[1], self._ext.clock() + BIND_WAIT_S)
                self._until[key] = (got[0], until)
                heapq.heappush(self._heap, (until, key, got[0]))

    def end(self, key: str) -> None:
        """The pod's bind is over (bound, or refused): its reservation ends."""
        if self._ext.state.reservations(key):
            self._ext.state.unreserve(key)

    def after_filter(self, req: PodRequest, fits: Sequence[str], nodes: Mapping[str, NodeState]) -> None:
        if len(fits) == 1:
            self._reserve(req, fits, nodes)

    def after_prioritize(
        self, req: PodRequest, names: Sequence[str], raw: Sequence[float], scores: Sequence[int], top: int
    ) -> None:
        """Reserve the pod on its best nodes: those scored ``top`` (best raw score first)."""
        best = [i for i, s in enumerate(scores) if s == top]
        if not best:
            return
        if len(best) > RESERVE_NODES:
            best = sorted(best, key=raw.__getitem__, reverse=True)[:RESERVE_NODES]  # stable: ties in name order
        self._reserve(req, [names[i] for i in best], self._ext.state.nodes_by_name())

    def _reserve(self, req: PodRequest, names: Sequence[str], nodes: Mapping[str, NodeState]) -> None:
        ext = self._ext
        policy = ext.card_policy(req)
        allocs = []
        for name in names:
            node = nodes.get(name)
            if node is None:
                continue
            got = place(node.cards, ext.preempting.usage_for(node, req), req, policy)
            if isinstance(got, Placement):
                allocs.append(Allocation.build(req.namespace, req.name, req.uid, name, got.slices))
        if not allocs:
            return
        until = ext.clock() + RESERVE_S
        with self._mu:
            ext.state.reserve(req.key, tuple(allocs))
            self._until[req.key] = (req.uid, until)
            heapq.heappush(self._heap, (until, req.key, req.uid))
            self._next = self._heap[0][0]

    def expire(self) -> None:
        """End the reservations past their deadline."""
        now = self._ext.clock()
        if now < self._next:
            return
        with self._mu:
            done = []
            heap = self._heap
            while heap and heap[0][0] <= now:
                until, k, uid = heapq.heappop(heap)
                if self._until.get(k) == (uid, until):
                    del self._until[k]
                    done.append((k, uid))
            self._next = heap[0][0] if heap else math.inf
        expired = sum(self._ext.state.unreserve(k, uid) for k, uid in done)
        if expired:
            with self._mu:
                self._counts["expired"] = self._counts.get("expired", 0) + expired
