"""The extender's decisions: filter, prioritize, bind, preempt, on top of ``ClusterState``.

Pure decisions except ``bind``, which hands the chosen allocation to the backend (the
only write). Handlers in ``app`` parse the wire format, call these, and serialise.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import policies
from .allocator import NoFit, Placement, place
from .backend import Backend, CommitError
from .config import Settings
from .model import Allocation, PodRequest
from .requests import RequestError, RequestRules, parse_pod
from .state import AllocState, ClusterState, Conflict, NodeState

MAX_SCORE = 10  # kube-scheduler's MaxExtenderPriority
_NO_FIT = float("-inf")  # cached score of a node the pod does not fit
# One NoFit object per distinct (reason, resolvable): caches share them.
_INTERNED: dict[tuple[str, bool], NoFit] = {}
PENDING_CACHE = 10_000
MAX_SHAPES = 100_000


@dataclass(slots=True)
class FilterOutcome:
    fits: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)


class BindError(Exception):
    """The pod could not be bound; kube-scheduler requeues it."""


class Extender:
    def __init__(self, state: ClusterState, backend: Backend, settings: Settings) -> None:
        self.state = state
        self.backend = backend
        self.settings = settings
        self.rules = RequestRules(granularity=settings.granularity, policies=frozenset(policies.names()))
        self._node_policy = policies.get(settings.node_policy)
        self._card_policy = policies.get(settings.card_policy)
        # Pods seen by filter, by UID: bind gets only names, so it reuses the parsed request.
        self._pending: OrderedDict[str, PodRequest] = OrderedDict()
        self._pending_mu = threading.Lock()
        # Pod shapes -> small ints: fit-cache lookups then hash an int, not nested tuples.
        self._shape_ids: dict[tuple[object, ...], int] = {}
        self._next_shape_id = 0

    # ---- parsing ----

    def parse(self, pod: Mapping[str, Any]) -> PodRequest:
        req = parse_pod(pod, self.rules)
        if req.uid:
            with self._pending_mu:
                self._pending[req.uid] = req
                self._pending.move_to_end(req.uid)
                while len(self._pending) > PENDING_CACHE:
                    self._pending.popitem(last=False)
        return req

    # ---- filter ----

    def filter(self, pod: Mapping[str, Any], node_names: Sequence[str]) -> FilterOutcome:
        out = FilterOutcome()
        try:
            req = self.parse(pod)
        except RequestError as e:
            out.unresolvable = dict.fromkeys(node_names, f"invalid vGPU request: {e}")
            return out
        if not req.wants_gpu:
            out.fits = list(node_names)
            return out
        cluster_reason = self._cluster_wide_reason(req)
        if cluster_reason:
            out.unresolvable = dict.fromkeys(node_names, cluster_reason)
            return out
        cutoff = self._heartbeat_cutoff()
        key = self._key(req)  # computed once: the hot loop below only looks up
        nodes = self.state.nodes_by_name()
        for name in node_names:
            node = nodes.get(name)
            if node is None:
                out.unresolvable[name] = "node reports no vGPU inventory (is flexai-node running there?)"
                continue
            hb = node.inventory.heartbeat
            if hb is None or hb < cutoff:
                out.unresolvable[name] = _stale(hb)
                continue
            verdict = node.fit_cache.get(key)
            if verdict is None:
                verdict = self._verdict(node, req, key)
            if verdict is True:
                out.fits.append(name)
            else:
                (out.failed if verdict.resolvable else out.unresolvable)[name] = verdict.reason
        return out

    def fit(self, node: NodeState, req: PodRequest) -> Placement | NoFit:
        """Where ``req`` goes on ``node`` now, with the pod's card policy (never cached)."""
        return place(node.cards, node.usage, req, self._policy(req.card_policy, self._card_policy))

    def _verdict(self, node: NodeState, req: PodRequest, key: int) -> Any:
        """Fill the node's cache for this pod shape: True or a NoFit at ``key``, the score at ``-key``.

        Only these small values are cached, not placements: a cluster of 5,000 nodes and
        dozens of shapes would otherwise hold millions of objects for the GC to walk.
        """
        got = self.fit(node, req)
        if isinstance(got, Placement):
            policy = self._policy(req.node_policy, self._node_policy)
            node.fit_cache[-key] = policy.node_score(node.cards, node.usage, got.usage_after)
            node.fit_cache[key] = True
            return True
        if len(_INTERNED) > MAX_SHAPES:
            _INTERNED.clear()
        verdict = _INTERNED.setdefault((got.reason, got.resolvable), got)
        node.fit_cache[key] = verdict
        node.fit_cache[-key] = _NO_FIT
        return verdict

    # ---- prioritize ----

    def prioritize(self, pod: Mapping[str, Any], node_names: Sequence[str]) -> list[tuple[str, int]]:
        try:
            req = self.parse(pod)
        except RequestError:
            return [(n, 0) for n in node_names]
        if not req.wants_gpu:
            return [(n, 0) for n in node_names]
        key = -self._key(req)  # negative ids: scores, positive: fit verdicts
        nodes = self.state.nodes_by_name()
        scores: list[float] = []
        for name in node_names:
            node = nodes.get(name)
            if node is None:
                scores.append(_NO_FIT)
                continue
            score = node.fit_cache.get(key)
            if score is None:
                self._verdict(node, req, -key)
                score = node.fit_cache[key]
            scores.append(score)
        fitting = [x for x in scores if x != _NO_FIT]
        if not fitting:
            return [(n, 0) for n in node_names]
        lo, hi = min(fitting), max(fitting)
        if hi - lo < 1e-12:  # all equal: all best
            return [(n, 0 if x == _NO_FIT else MAX_SCORE) for n, x in zip(node_names, scores, strict=True)]
        # Best node 10, worst fitting node 0; nodes that do not fit get 0.
        k = MAX_SCORE / (hi - lo)
        return [(n, 0 if x == _NO_FIT else round((x - lo) * k)) for n, x in zip(node_names, scores, strict=True)]

    # ---- bind ----

    def bind(self, namespace: str, name: str, uid: str, node_name: str) -> Allocation:
        """Choose cards on ``node_name``, assume, then commit through the backend."""
        key = f"{namespace}/{name}"
        existing = self.state.allocation(key)
        if existing is not None and existing.uid == uid:
            if existing.node == node_name and self.state.state_of(key) is AllocState.BOUND:
                return existing  # a repeated bind of a pod already bound here
            raise BindError(f"pod {key}: a bind to {existing.node} is already in progress")
        req = self._request_for(namespace, name, uid)
        with self.state.node_lock(node_name):
            node = self.state.node(node_name)
            if node is None:
                raise BindError(f"node {node_name}: reports no vGPU inventory")
            fit = self.fit(node, req)
            if isinstance(fit, NoFit):
                raise BindError(f"node {node_name}: {fit.reason}")
            alloc = Allocation.build(namespace, name, uid, node_name, fit.slices)
            version = node.version
            try:
                # Same version = same usage the placement was computed on.
                self.state.assume(alloc, lambda n: n.version == version)
            except Conflict as e:
                raise BindError(str(e)) from None
        try:
            self.backend.commit(alloc)
        except CommitError as e:
            self.state.forget(key, uid)
            raise BindError(f"pod {key}: {e}") from None
        except BaseException:
            self.state.forget(key, uid)
            raise
        self.state.confirm(key)
        return alloc

    # ---- preempt ----

    def preempt(
        self, pod: Mapping[str, Any], victims: Mapping[str, tuple[list[str], int]]
    ) -> dict[str, tuple[list[str], int]]:
        """Keep a node's proposed victims only if evicting them frees a fitting slice."""
        try:
            req = self.parse(pod)
        except RequestError:
            return {}
        if not req.wants_gpu:
            return dict(victims)
        policy = self._policy(req.card_policy, self._card_policy)
        keep: dict[str, tuple[list[str], int]] = {}
        for node_name, (uids, pdb) in victims.items():
            node = self.state.node(node_name)
            if node is None or not uids:
                continue
            usage = list(node.usage)
            by_index = {c.index: pos for pos, c in enumerate(node.cards)}
            for a in node.pods.values():
                if a.uid in uids:
                    for index, held in a.card_usage.items():
                        if index in by_index:
                            usage[by_index[index]] = usage[by_index[index]].minus(held)
            if isinstance(place(node.cards, usage, req, policy), Placement):
                keep[node_name] = (list(uids), pdb)
        return keep

    # ---- helpers ----

    def _request_for(self, namespace: str, name: str, uid: str) -> PodRequest:
        with self._pending_mu:
            req = self._pending.get(uid)
        if req is not None and (req.namespace, req.name) == (namespace, name):
            return req
        pod = self.backend.get_pod(namespace, name)
        if pod is None:
            raise BindError(f"pod {namespace}/{name}: not found")
        got_uid = (pod.get("metadata") or {}).get("uid")
        if uid and got_uid and got_uid != uid:
            raise BindError(f"pod {namespace}/{name}: UID {got_uid} is not {uid} (pod was recreated)")
        try:
            return self.parse(pod)
        except RequestError as e:
            raise BindError(f"pod {namespace}/{name}: invalid vGPU request: {e}") from None

    def _key(self, req: PodRequest) -> int:
        """A small int naming (pod shape, card policy, node policy); stable for this process."""
        shape = (req.shape(), self.settings.card_policy, self.settings.node_policy)
        got = self._shape_ids.get(shape)
        if got is None:
            if len(self._shape_ids) >= MAX_SHAPES:
                self._shape_ids.clear()  # ids are never reused, so old cache entries just go cold
            self._next_shape_id += 1
            got = self._shape_ids.setdefault(shape, self._next_shape_id)
        return got

    def _policy(self, override: str | None, default: policies.Policy) -> policies.Policy:
        return policies.get(override) if override else default

    def _heartbeat_cutoff(self) -> datetime:
        return datetime.now(UTC) - timedelta(seconds=self.settings.heartbeat_ttl_s)

    def _cluster_wide_reason(self, req: PodRequest) -> str:
        """Reasons no node of the cluster could ever satisfy, stated once for all nodes."""
        most, have = self.state.inventory_facts()
        if not most:
            return ""
        for c in (*req.containers, *req.init_containers):
            if c.vgpus > most:
                return f'container "{c.name}": asks for {c.vgpus} vGPUs but the largest node has {most} cards'
        if req.selector.models:
            if not req.selector.models & have:
                return (
                    f"no node has a card of model {', '.join(sorted(req.selector.models))} "
                    f"(models in the cluster: {', '.join(sorted(have)) or 'none'})"
                )
        return ""


def _stale(hb: datetime | None) -> str:
    if hb is None:
        return "node inventory has no heartbeat"
    return f"node agent heartbeat is stale (last {hb.isoformat()}, older than the TTL)"
