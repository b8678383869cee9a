"""The extender's decisions: filter, prioritize, bind, preempt, on top of ``ClusterState``.

Pure decisions except ``bind``, which hands the chosen allocation to the backend, and
preemption's evictions. Handlers in ``app`` parse the wire format, call these, and serialise.

Quotas (``quota``): filter refuses a pod over its namespace's quota on every node, once per
call; bind checks again inside ``assume``, so two binds can never overshoot a quota.

Preemption: ``preemption`` chooses the victims; ``preempting`` acts (the preempt verb, the
extender's own evictions for pods kube-scheduler's dry run cannot help, the cards held for a
preemptor, which filter and bind count against pods of lower or equal priority).

kube-scheduler's filter is answered with the best fitting node alone (``filter_answer``
"best", ``_pick``): it binds there without prioritize; "all" answers every fitting node.

Reservations (``reserving``): a filter that leaves one node (or prioritize) holds the pod's
room on the node(s) it will most likely be bound to until its bind, which kube-scheduler
sends after it has started the next pod's cycle; filter and prioritize of other pods count it.

Scores: a ``fragmentation.HostAware`` node policy (the default, ``fragmentation``) scores
a node with its host too (allocatable CPU/memory and what bound pods request, from
``NodeState.host``) and the pod's own host request, as the trace replay does; a node
whose host is unknown (no capacity reported, e.g. the in-memory demo) is scored on its
cards only. Filter checks the cards only: kube-scheduler's NodeResourcesFit checks CPU
and memory.

Per pod shape, ``answers.ShapeAnswers``: each node's filter verdict and raw score, kept
across calls and patched from the cluster state's change log, so a warm call only looks its
names up; the caches below fill its entries, and between calls ``refresh_step`` decides the
nodes changed since (``fastpath`` runs it after each reply).

Caches, per node (``NodeState``), keyed by small interned ids:

- ``fit_cache``: GPU shape id -> True or a NoFit, -id -> the cards-only score; reset when
  the node's cards or allocations change;
- ``host_cache``: (GPU shape, pod host request) id -> the host-aware score; reset when
  the node's cards, allocations or host usage change (``ClusterState`` gives the node a
  new one).

and across nodes, ``extender_caches.ExtenderCaches`` (the ids, verdicts shared by nodes
alike, the pods filter has seen).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress, filterfalse, islice, repeat
from typing import Any, cast

import numpy as np

from flexai_core.model import FULL_CORES, Allocation, PodRequest, card_free
from flexai_core.requests import RequestError, RequestRules, parse_pod

from . import policies
from .allocator import NoFit, Placement, place
from .answers import NO_FIT, NO_INVENTORY, NOT_EVALUATED, ShapeAnswers, stale_reason
from .backend import Backend, CommitError, CommitUnknown
from .config import Settings
from .errors import BindFailure, SchedError
from .extender_caches import ExtenderCaches
from .filling import BATCH_S, Filler, FillJob
from .pod_reader import PodReader
from .policies.interface import CapacityAware, HostAware, Observing, WorkloadAware
from .preempting import Preempting
from .quota import Usage, allocation_usage, request_usage
from .reserving import Reserving
from .state import AllocState, ClusterState, Conflict, NodeState
from .workload import DEFAULT_WORKLOAD, NodeKind, TaskClass, Workload

log = logging.getLogger("flexai_sched.extender")
MAX_SCORE = 10  # kube-scheduler's MaxExtenderPriority
# A reason is repeated for every node of a filter reply: a pod whose annotations make it
# long (up to 256 KiB) must not make the reply thousands of times longer.
MAX_REASON = 500
_MISSING = float("inf")  # no raw score is +inf: what ``_pick_table`` reads for a name without one
# How far down a complete table's ``ranked`` list filter's pick looks for a name the call sent
# before it looks each name up: the top nodes may be ones kube-scheduler's own filters refuse.
RANKED_WALK = 256
# ``refresh_step``: the work one step may do before the loop serves what has come in, and
# which tables it keeps current (asked about this recently).
REFRESH_BATCH_S = 0.0003
REFRESH_RECENT_S = 30.0
# The most of its table's holes a filter call decides itself before its pick; more (a burst
# of changes since the last refresh) it leaves to the refresh, and looks its names up.
HOLES_MAX = 16


@dataclass(slots=True)
class FilterOutcome:
    fits: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    # A bounded call's names not worked out yet (``filter_request``); each is in ``unresolvable``
    # too, with NOT_EVALUATED, as kube-scheduler gets it (unless only the best node is answered,
    # ``_pick``). Never "does not fit".
    deferred: list[str] = field(default_factory=list)
    # One node answered, and its reservation left to the caller (``filter_verb``'s ``reserve``).
    unreserved: bool = False


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a filter call decides with, worked out once per call: the pod, its shape's ids
    (``Extender._key`` / ``_host_key``), its node policy, the nodes as they are, and the
    heartbeat cutoff."""

    req: PodRequest
    key: int
    hkey: int
    policy: policies.Policy
    nodes: Mapping[str, NodeState]
    cutoff: datetime


class BindError(SchedError):
    """The pod could not be bound; kube-scheduler requeues it. ``reason``: why, as a value."""

    def __init__(self, reason: BindFailure, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Extender:
    def __init__(self, state: ClusterState, backend: Backend, settings: Settings) -> None:
        self.state = state
        self.backend = backend
        self.settings = settings
        self.rules = RequestRules(granularity=settings.granularity, policies=frozenset(policies.names()))
        self.reader = PodReader(self.rules)
        self._node_policy = policies.get(settings.node_policy)
        self._card_policy = policies.get(settings.card_policy)
        # Policies pods name in their annotations, one object each: a policy keeps memos
        # (and a learned workload), which a fresh object per call would throw away.
        self._overrides: dict[str, policies.Policy] = {}
        self.caches = ExtenderCaches()
        # Binds whose outcome is unknown (CommitUnknown): key -> (uid, deadline). Their slices
        # stay ASSUMED until the watch shows the pod bound or ``bind_hold_s`` pass: a Binding
        # that lands late must not find its cards given to another pod meanwhile.
        self._held: dict[str, tuple[str, float]] = {}
        self._held_mu = threading.Lock()
        # GPU models each pod this extender bound may use (its selector; empty: any), for the
        # learned workload: allocations do not record it. Pods bound before a restart count
        # as unconstrained until bound again.
        self._models: dict[str, frozenset[str]] = {}
        self.clock = time.monotonic  # tests move time on
        self.workload: Workload = DEFAULT_WORKLOAD  # what the policies plan for (learn_workload)
        # The default node policy, where it watches the pods it is asked about and re-prices.
        self._observer: Observing | None = self._node_policy if isinstance(self._node_policy, Observing) else None
        # Per node: (version, host, kind, free percent) at the last re-pricing pass.
        self._free_seen: dict[str, tuple[int, object, NodeKind | None, int]] = {}
        self._learned: tuple[object, ...] = ()  # (workload, cards per model and per node kind, policies) last learned
        self.preempting = Preempting(self)
        self.reserving = Reserving(self)
        # Per-shape answer tables (answers.py); off: every call decides node by node (the
        # reference tests/sched/test_replies.py and test_tables_property.py compare them to).
        self.tables = True
        # Bounded filter calls (``filter_request``): the clock their budget is read from, and
        # the thread that completes the tables they leave partial.
        self.budget_clock = time.perf_counter
        # A sample to score from even when one verdict is slow (the first shape learns a table).
        self.min_decided = settings.filter_min_nodes
        self.picks_best = settings.filter_answer == "best"  # ``_pick``
        self._start = 0  # where the next bounded call starts among the names it must decide
        self.filler = Filler(self.fill_step)

    # ---- parsing ----

    def parse(self, pod: Mapping[str, Any]) -> PodRequest:
        req = parse_pod(pod, self.rules)
        self._remember(req)
        return req

    def parse_raw(self, raw: bytes) -> PodRequest:
        """``parse`` of a pod's JSON object (``pod_reader``: memoised on the fields the request
        depends on). Raises RequestError as ``parse`` does, and ValueError (msgspec.DecodeError)
        for bytes that are not a JSON object."""
        req = self.reader.read(raw)
        self._remember(req)
        return req

    def _remember(self, req: PodRequest) -> None:
        """bind gets only names: it takes the request filter parsed, by UID."""
        if req.uid:
            self.caches.remember(req)

    def pending(self) -> list[PodRequest]:
        """Pods filter has seen (most recent last) that hold no allocation: those waiting, or gone."""
        seen = self.caches.pending_requests()
        return [r for r in seen if self.state.allocation(r.key) is None]

    def heartbeat_cutoff(self) -> datetime:
        """Nodes whose agent last reported before this get no new pods."""
        return self._heartbeat_cutoff()

    def card_policy(self, req: PodRequest) -> policies.Policy:
        """The card policy ``req`` is placed with (its annotation's, or the default)."""
        return self._policy(req.card_policy, self._card_policy)

    # ---- filter ----

    def filter(self, pod: Mapping[str, Any], node_names: Sequence[str], bounded: bool = False) -> FilterOutcome:
        self.expire_holds()
        try:
            req = self.parse(pod)
        except RequestError as e:
            return invalid_outcome(e, node_names)
        return self.filter_verb(req, node_names, bounded)

    def filter_verb(
        self, req: PodRequest, node_names: Sequence[str], bounded: bool = False, reserve: bool = True
    ) -> FilterOutcome:
        """kube-scheduler's filter of a parsed pod: a new cycle for it (what it reserved before
        ends), the answer, and where one node is left, the pod reserved there (``reserving``;
        with ``reserve`` False the caller does it, ``out.unreserved`` says when).

        ``bounded`` marks kube-scheduler's own call: its budget (``filter_request``), and with
        ``filter_answer`` "best" the answer is the best-scored fitting node alone (``_pick``).
        """
        self.reserving.begin(req)
        pick = bounded and self.picks_best
        out = self.filter_request(req, node_names, bounded, pick)
        if req.wants_gpu and out.fits:
            if pick:
                self._pick(req, out)
            if len(out.fits) == 1:
                if reserve:
                    self.reserving.after_filter(req, out.fits, self.state.nodes_by_name())
                else:
                    out.unreserved = True
        return out

    def _pick(self, req: PodRequest, out: FilterOutcome) -> None:
        """Answer the best-scored fitting node alone (of equals, the first by name: the order of
        the tables' ``ranked``, so the answer does not depend on the order kube-scheduler sends).

        kube-scheduler then binds there without prioritize or its own score plugins: our
        choice is not outvoted by plugins that spread (LeastAllocated outweighs a one-point
        difference of our score), and a pod costs one round trip. The other nodes' reasons
        are dropped: kube-scheduler reads them only for a pod no node passes.
        """
        fits = out.fits
        if len(fits) > 1:  # not picked from the table already (``_pick_table``)
            out.fits = [fits[_best_at(fits, self._raw_scores(req, fits))]]
        out.failed = {}
        out.unresolvable = {}  # the deferred names too: ``deferred`` still says how many

    def filter_request(
        self, req: PodRequest, node_names: Sequence[str], bounded: bool = False, pick: bool = False
    ) -> FilterOutcome:
        """``filter`` of a parsed pod: the one place a node's reason is decided (explain reads it too).

        ``bounded`` (kube-scheduler's filter verb, never explain): new verdicts are worked out
        for at most ``filter_budget_ms``, from a rotating start, and the names not reached are
        deferred: answered unresolvable with NOT_EVALUATED (retry), and the table is completed
        off the request path (``filling``). The rule that keeps this safe: names are deferred
        only once some name of the call fits, so the pod is scheduled in this cycle and
        kube-scheduler never preempts (it preempts only when no node passes); a call where
        nothing evaluated fits goes on past the budget until a name fits or every name is
        decided, so a pod is never refused while a fitting node exists, and our own
        preemption starts only from a call that decided every name. The tables off, with
        preemptors' holds (``hold`` may take fits away), or the budget 0: no bound.

        ``pick``: only the best node matters when some node fits (``_pick``), so the table
        answers it from the names' scores alone (``_pick_table``); the reasons are worked out
        only for a pod no node fits.
        """
        out = FilterOutcome()
        if not req.wants_gpu:
            out.fits = list(node_names)
            return out
        if self._observer is not None and self._observer.observe(_task(req)):
            self.reprice()
        if self.preempting.nominations:  # rare: a preemptor waits for its victims to go
            self.preempting.victims_left(req)
        if self.state.quotas.active:  # once per call, never per node
            reason, resolvable = self.quota_reason(req)
            if reason and resolvable and self._recount_quota(req):
                reason, resolvable = self.quota_reason(req)
            if reason:
                if resolvable:  # evicting pods of the quota's namespaces could help
                    out.failed = dict.fromkeys(node_names, reason)
                    if req.priority > 0:
                        self.preempting.start(req, node_names)
                else:
                    out.unresolvable = dict.fromkeys(node_names, reason)
                return out
        cluster_reason = self._cluster_wide_reason(req)
        if cluster_reason:
            out.unresolvable = dict.fromkeys(node_names, _short(cluster_reason))
            return out
        key = self._key(req)  # computed once: the hot loop below only looks up
        policy = self._policy(req.node_policy, self._node_policy)
        nodes = self.state.nodes_by_name()
        ask = _Asked(req, key, self._host_key(req, key, policy), policy, nodes, self._heartbeat_cutoff())
        nominated = self.preempting.nominations  # cards held for preemptors; empty in the common case
        if self.tables:
            budget = self.settings.filter_budget_ms
            until = self.budget_clock() + budget / 1000 if bounded and budget > 0 and not nominated else None
            best = self._pick_table(out, ask, node_names, until) if pick and not nominated else None
            if best is not None:
                out.fits = [best]
            else:
                self._filter_table(out, ask, node_names, until)
            if out.deferred:
                self.filler.want(FillJob(key, ask.hkey, req, policy))
                out.unresolvable.update(dict.fromkeys(out.deferred, NOT_EVALUATED))
        else:
            self._filter_each(out, ask, node_names)
        if nominated:  # rare: checked after the hot loop, which stays as it was
            self.preempting.hold(out, req, nodes)
        if not out.fits and out.failed and req.priority > 0:
            self.preempting.start(req, list(out.failed))
        return out

    def _filter_table(
        self, out: FilterOutcome, ask: _Asked, node_names: Sequence[str], until: float | None = None
    ) -> None:
        """The verdicts from the shape's table: the names are looked up by C-level set and dict
        operations (``filter``/``filterfalse``), and only nodes changed since are decided (until
        ``budget_clock`` reads ``until``, once a name fits: the rest go to ``out.deferred``)."""
        with self.caches.tables_mu:
            table = self.caches.table(ask.key, ask.hkey, self.state)
            table.asked_by(ask.req, ask.policy, self.clock())
            table.expire(ask.cutoff, ask.nodes)
            fits = table.fits
            out.fits = list(filter(fits.__contains__, node_names))
            if len(out.fits) == len(node_names):
                return  # every name known to fit: one C-level pass
            rest = list(filterfalse(fits.__contains__, node_names))
            missing = list(filterfalse(table.verdicts.__contains__, rest))
            if missing:  # nodes changed since (or unknown: never stored, answered below)
                out.deferred = self._decide(table, missing, ask, until, bool(out.fits))
                out.fits = list(filter(fits.__contains__, node_names))
                rest = list(filterfalse(fits.__contains__, node_names))
            failed = table.failed
            names = list(filter(failed.__contains__, rest))
            out.failed = dict(zip(names, map(failed.__getitem__, names), strict=True))
            names = list(filterfalse(failed.__contains__, rest))  # the rest: unresolvable, unknown or deferred
            if out.deferred:
                names = list(filterfalse(set(out.deferred).__contains__, names))
            out.unresolvable = dict(zip(names, map(table.unresolvable.get, names, repeat(NO_INVENTORY)), strict=True))

    def _pick_table(
        self, out: FilterOutcome, ask: _Asked, node_names: Sequence[str], until: float | None
    ) -> str | None:
        """The best-scored fitting name (of equals, the first by name). When the table has a
        verdict for every node, from its ``ranked`` list: the first of its top ``RANKED_WALK``
        entries the call sent. Else from the table's scores (one C-level lookup per name, a
        ``max`` and an ``index``), deciding the names it lacks as ``_filter_table`` does (the
        ones left over go to ``out.deferred``). None when no name fits, or when the best one's
        verdict is not a fresh fit (a score prioritize or the fill put beside a stale
        verdict): ``_filter_table`` answers then."""
        with self.caches.tables_mu:
            table = self.caches.table(ask.key, ask.hkey, self.state)
            table.asked_by(ask.req, ask.policy, self.clock())
            table.expire(ask.cutoff, ask.nodes)
            if table.holes and len(table.holes) <= HOLES_MAX:  # nodes changed since the refresh
                self._decide(table, list(table.holes), ask, None, True)
            # Every node decided (changed ones are forgotten, and a table holds only the
            # cluster's nodes): ``ranked`` holds every fitting node of the call.
            if len(table.verdicts) == len(ask.nodes):
                sent = set(node_names)
                for _, name in islice(table.ranked, RANKED_WALK):
                    if name in sent:
                        return name
                if len(table.ranked) <= RANKED_WALK:
                    return None  # no name sent fits
            scores = table.scores
            # A name without a score reads +inf, so the one ``max`` also says whether any is missing.
            got = list(map(scores.get, node_names, repeat(_MISSING)))
            top = max(got, default=NO_FIT)
            if top != _MISSING:
                at = _best_at(node_names, got)
            else:  # nodes changed since (or unknown: never stored, NO_FIT)
                top = max(filter(_MISSING.__gt__, got), default=NO_FIT)  # the best known
                at = _best_at(node_names, got, top) if top != NO_FIT else len(got)
                positions = list(compress(range(len(got)), map(_MISSING.__eq__, got)))
                missing = [node_names[i] for i in positions]
                out.deferred = self._decide(table, missing, ask, until, top > NO_FIT)
                decided = list(map(scores.get, missing, repeat(NO_FIT)))  # deferred or unknown: NO_FIT
                new = max(decided, default=NO_FIT)
                # Only the decided names are read again; of equals, the first by name.
                if new > NO_FIT and (new > top or new == top):
                    first = positions[_best_at([node_names[i] for i in positions], decided)]
                    if new > top or node_names[first] < node_names[at]:
                        top, at = new, first
            if top == NO_FIT:
                return None
            best = node_names[at]
            return best if table.verdicts.get(best) is True else None

    def _decide(
        self, table: ShapeAnswers, names: list[str], ask: _Asked, until: float | None, found: bool
    ) -> list[str]:
        """Put the verdicts of ``names`` in the table. With ``until``: from a start that moves on
        by the names each bounded call decides (hold ``tables_mu``), and only until
        ``budget_clock`` passed it, ``min_decided`` names are decided and a name fits
        (``found``: one already did). Returns the names not decided."""
        clock, least = self.budget_clock, self.min_decided
        req, key, hkey, policy, nodes, cutoff = ask.req, ask.key, ask.hkey, ask.policy, ask.nodes, ask.cutoff
        if until is not None and len(names) > 1:  # not always the same first names: an unbiased sample
            start = self._start % len(names)
            names = names[start:] + names[:start]
        for i, name in enumerate(names):
            if found and until is not None and i >= least and clock() >= until:
                self._start += i
                return names[i:]
            node = nodes.get(name)
            if node is None:
                table.holes.discard(name)  # gone from the cluster: nothing to decide
                continue
            hb = node.inventory.heartbeat
            if hb is None or hb < cutoff:
                table.put_stale(name, hb)
                continue
            verdict = node.fit_cache.get(key)
            if verdict is None:
                verdict = self._verdict(node, req, key, hkey, policy)
            # Its raw score too (the caches the verdict filled have it): ``_pick_table`` and
            # prioritize read the table's scores alone. A stale node gets none (filter refuses
            # it): as a call's best score it would send ``_pick_table`` the long way.
            table.put(name, verdict, hb, self._score(node, req, key, hkey, policy) if verdict is True else NO_FIT)
            found = found or verdict is True
        if until is not None:
            self._start += len(names)
        return []

    def fill_step(self, job: FillJob) -> bool:
        """One batch of completing a shape's table (``filling.Filler``): verdicts and raw scores
        of the cluster's nodes it lacks, for at most ``filling.BATCH_S``; True when every node
        has been gone over (or the table is gone)."""
        with self.caches.tables_mu:
            table = self.caches.tables.get((job.key, job.hkey))
            if table is None:
                return True  # evicted: a later call of the shape starts afresh
            table.sync(*self.state.changes_since(table.seq))
            nodes = self.state.nodes_by_name()  # read after the sync: a change after it is logged after it
            if job.names is None:
                # Copies allocated together, as a decoded request's names are: every warm call
                # compares its names with the table's keys, and keys scattered over the heap (the
                # inventory's own strings) cost a cache miss each (bench/results/extender-latency.md).
                job.names = [name.encode().decode() for name in nodes]
            ask = _Asked(job.req, job.key, job.hkey, job.policy, nodes, self._heartbeat_cutoff())
            table.expire(ask.cutoff, nodes)
            verdicts, names = table.verdicts, job.names
            clock = self.budget_clock
            until = clock() + BATCH_S
            while job.at < len(names):  # at least one node a batch, whatever the clock says
                name = names[job.at]
                job.at += 1
                if name not in verdicts:  # decided: its score is there too
                    self._decide(table, [name], ask, None, True)
                if clock() >= until:
                    break
            return job.at >= len(names)

    def refresh_step(self) -> bool:
        """Between calls (``fastpath``): decide again the nodes changed since the last call of
        each table asked about in the last ``REFRESH_RECENT_S``, most recent first, for at most
        ``REFRESH_BATCH_S``, so the next call of the shape finds them decided instead of
        deciding them itself (a bind changes a node: every shape's table would, one call each).
        True when nothing is left to do. A table whose changes the log no longer reaches (a
        relist) is left to its next call, and so is everything while another thread holds the
        tables."""
        mu = self.caches.tables_mu
        if not mu.acquire(blocking=False):
            return True
        try:
            clock = self.budget_clock
            until = clock() + REFRESH_BATCH_S
            recent = self.clock() - REFRESH_RECENT_S
            now = self.state.change_seq()
            cutoff: datetime | None = None
            for (key, hkey), table in reversed(self.caches.tables.items()):
                if table.used < recent:
                    break  # least recently used first: the rest are older
                if (table.seq == now and not table.holes) or table.asked is None:
                    continue
                end, changed = self.state.changes_since(table.seq)
                if changed is None:
                    continue
                table.sync(end, changed)
                cutoff = cutoff or self._heartbeat_cutoff()
                req, policy = table.asked
                ask = _Asked(req, key, hkey, policy, self.state.nodes_by_name(), cutoff)
                holes = list(table.holes)
                for at in range(0, len(holes), 8):  # a few at a time: the clock is read between
                    self._decide(table, holes[at : at + 8], ask, None, True)
                    if clock() >= until:
                        return False
            return True
        finally:
            mu.release()

    def _filter_each(self, out: FilterOutcome, ask: _Asked, node_names: Sequence[str]) -> None:
        """The verdicts node by node (no table): the reference the tables are tested against."""
        req, key, hkey, policy, nodes, cutoff = ask.req, ask.key, ask.hkey, ask.policy, ask.nodes, ask.cutoff
        for name in node_names:
            node = nodes.get(name)
            if node is None:
                out.unresolvable[name] = NO_INVENTORY
                continue
            hb = node.inventory.heartbeat
            if hb is None or hb < cutoff:
                out.unresolvable[name] = stale_reason(hb)
                continue
            verdict = node.fit_cache.get(key)
            if verdict is None:
                verdict = self._verdict(node, req, key, hkey, policy)
            if verdict is True:
                out.fits.append(name)
            else:
                (out.failed if verdict.resolvable else out.unresolvable)[name] = verdict.reason

    def fit(self, node: NodeState, req: PodRequest) -> Placement | NoFit:
        """Where ``req`` goes on ``node`` now, with the pod's card policy (never cached)."""
        return place(node.cards, node.usage, req, self._policy(req.card_policy, self._card_policy))

    def _verdict(self, node: NodeState, req: PodRequest, key: int, hkey: int, policy: policies.Policy) -> Any:
        """Fill the node's caches for this pod shape: True or a NoFit at ``fit_cache[key]``, and
        the score: with the host at ``host_cache[hkey]`` (``hkey`` non-zero: a host-aware
        policy) when the node's host is known, else cards only at ``fit_cache[-key]``.

        Only these small values are cached, not placements: a cluster of 5,000 nodes and
        dozens of shapes would otherwise hold millions of objects for the GC to walk.
        """
        host = node.host  # one NodeState: its host and host_cache belong together
        with_host = bool(hkey) and host is not None
        # A selector naming card UUIDs reads what ``content`` leaves out: not shared.
        shared = (
            None
            if req.selector.uuids or req.selector.exclude_uuids
            else self.caches.shared_for(key, hkey if with_host else 0)
        )
        alike = (node.content, host) if with_host else node.content
        hit = shared.get(alike) if shared is not None else None
        if hit is not None:
            verdict, score = (hit, NO_FIT) if isinstance(hit, NoFit) else (True, hit)
        else:
            card_policy = self._policy(req.card_policy, self._card_policy)
            got = place(node.cards, node.usage, req, card_policy, self.caches.card_memo(key, req.selector, card_policy))
            if isinstance(got, Placement):
                verdict = True
                if with_host:
                    assert host is not None
                    score = cast(HostAware, policy).host_node_score(
                        node.cards, node.usage, got.usage_after, host, req.cpu_milli, req.memory_mib
                    )
                else:
                    score = policy.node_score(node.cards, node.usage, got.usage_after)
            else:
                if len(got.reason) > MAX_REASON:
                    got = NoFit(_short(got.reason), got.resolvable)
                verdict, score = self.caches.no_fit(got), NO_FIT
            if shared is not None:
                self.caches.share(shared, alike, score if verdict is True else verdict)
        if verdict is True and with_host:
            node.host_cache[hkey] = score
        else:
            node.fit_cache[-key] = score
        node.fit_cache[key] = verdict
        return verdict

    # ---- prioritize ----

    def prioritize(self, pod: Mapping[str, Any], node_names: Sequence[str]) -> list[tuple[str, int]]:
        try:
            req = self.parse(pod)
        except RequestError:
            return [(n, 0) for n in node_names]
        return list(zip(node_names, self.prioritize_verb(req, node_names), strict=True))

    def prioritize_verb(self, req: PodRequest, node_names: Sequence[str]) -> list[int]:
        """kube-scheduler's prioritize of a parsed pod: the scores, and the pod reserved on the
        nodes it will most likely be bound to (``reserving``)."""
        if not req.wants_gpu:
            return [0] * len(node_names)
        self.reserving.expire()
        self.reserving.begin(req)  # never its own competitor (a prioritize without a filter first)
        raw = self._raw_scores(req, node_names)
        scores = _normalised(raw) if self.tables else _normalised_each(raw)
        self.reserving.after_prioritize(req, node_names, raw, scores, MAX_SCORE)
        return scores

    def priorities(self, req: PodRequest, node_names: Sequence[str]) -> list[int]:
        """prioritize's score (0 to MAX_SCORE) of each name, in order."""
        if not req.wants_gpu:
            return [0] * len(node_names)
        raw = self._raw_scores(req, node_names)
        return _normalised(raw) if self.tables else _normalised_each(raw)

    def _raw_scores(self, req: PodRequest, node_names: Sequence[str]) -> list[float]:
        """Each name's raw node score (``NO_FIT``: does not fit, or unknown), in order."""
        fkey = self._key(req)
        policy = self._policy(req.node_policy, self._node_policy)
        hkey = self._host_key(req, fkey, policy)
        nodes = self.state.nodes_by_name()
        if not self.tables:
            return self._scores_each(req, node_names, nodes, fkey, hkey, policy)
        with self.caches.tables_mu:
            table = self.caches.table(fkey, hkey, self.state)
            table.asked_by(req, policy, self.clock())
            scores = table.scores
            got = list(map(scores.get, node_names))
            if None in got:  # nodes changed since (or unknown: never stored, NO_FIT)
                for name in filterfalse(scores.__contains__, node_names):
                    node = nodes.get(name)
                    if node is not None:
                        scores[name] = self._score(node, req, fkey, hkey, policy)
                got = list(map(scores.get, node_names, repeat(NO_FIT)))
        return cast(list[float], got)

    def _score(self, node: NodeState, req: PodRequest, fkey: int, hkey: int, policy: policies.Policy) -> float:
        """The node's raw score for the pod (``NO_FIT``: it does not fit), from its caches."""
        if hkey and node.host is not None:
            score = node.host_cache.get(hkey)
            if score is None:
                verdict = node.fit_cache.get(fkey)
                if verdict is None or verdict is True:
                    self._verdict(node, req, fkey, hkey, policy)  # scores a fit only
                score = node.host_cache.setdefault(hkey, NO_FIT)
            return score
        score = node.fit_cache.get(-fkey)
        if score is None:
            self._verdict(node, req, fkey, hkey, policy)
            score = node.fit_cache[-fkey]
        return cast(float, score)

    def _scores_each(
        self,
        req: PodRequest,
        node_names: Sequence[str],
        nodes: Mapping[str, NodeState],
        fkey: int,
        hkey: int,
        policy: policies.Policy,
    ) -> list[float]:
        """The raw scores node by node (no table): the reference the tables are tested against."""
        scores: list[float] = []
        for name in node_names:
            node = nodes.get(name)
            scores.append(NO_FIT if node is None else self._score(node, req, fkey, hkey, policy))
        return scores

    # ---- bind ----

    def bind(self, namespace: str, name: str, uid: str, node_name: str) -> Allocation:
        """Choose cards on ``node_name``, assume, then commit through the backend.

        A bind never removes or replaces the allocation of a pod that is still there: a
        replay (same UID, same node, already bound) is answered as done; any other bind
        of a name the scheduler holds an allocation for reads the pod from the backend,
        and goes on only if the name now belongs to another, unbound pod (the old one is
        gone: the apiserver keeps names unique), whose allocation then replaces the old.
        """
        key = f"{namespace}/{name}"
        self.expire_holds()
        reserved = self.state.reservations(key)
        try:
            alloc = self._bind(key, namespace, name, uid, node_name)
        finally:
            self.reserving.end(key)  # bound (its allocation took its place) or refused
        self.reserving.bound(reserved, node_name)
        return alloc

    def _bind(self, key: str, namespace: str, name: str, uid: str, node_name: str) -> Allocation:
        existing = self.state.allocation(key)
        pod: dict[str, Any] | None = None
        if existing is not None:
            if uid and existing.uid == uid:
                if existing.node == node_name and self.state.state_of(key) is AllocState.BOUND:
                    return existing  # a repeated bind of a pod already bound here
                raise BindError(BindFailure.DUPLICATE, _held_by(key, existing, self.state.state_of(key)))
            pod = self.backend.get_pod(namespace, name)
            if pod is not None and _uid_of(pod) in ("", existing.uid):
                raise BindError(BindFailure.DUPLICATE, _held_by(key, existing, self.state.state_of(key)))
            pod = self._checked(pod, namespace, name, uid)
            # The name is another pod's now: the old one's slices go, as its deletion would.
            self.state.release(key, existing.uid)
            self.state.drop_pod_host(key, existing.uid)
        req = self._request_for(namespace, name, uid, pod)
        uid = uid or req.uid  # a bind without a UID binds the pod the backend showed, and only it
        with self.state.node_lock(node_name):
            node = self.state.node(node_name)
            if node is None:
                raise BindError(BindFailure.UNKNOWN_NODE, f"node {node_name}: reports no vGPU inventory")
            # Against the allocations only: other pods' reservations are guesses, this bind is not.
            fit = place(
                node.cards,
                self.preempting.usage_for(node, req, node.allocated),
                req,
                self._policy(req.card_policy, self._card_policy),
            )
            if isinstance(fit, NoFit):
                raise BindError(BindFailure.NO_FIT, f"node {node_name}: {fit.reason}")
            alloc = Allocation.build(namespace, name, uid, node_name, fit.slices)
            version = node.alloc_version

            def fits(n: NodeState) -> bool:
                # Same version = same allocations the placement was computed on. The quota is checked
                # here, under the state's lock, so concurrent binds of one namespace cannot overshoot it.
                if n.alloc_version != version:
                    return False
                if self.state.quotas.active:
                    reason, _ = self.quota_reason(req)
                    if reason:
                        raise Conflict(reason, BindFailure.QUOTA)
                return True

            try:
                self.state.assume(alloc, fits)
            except Conflict as e:
                raise BindError(e.reason, str(e)) from None
        try:
            self.backend.commit(alloc)
        except CommitUnknown as e:
            with self._held_mu:
                self._held[key] = (uid, self.clock() + self.settings.bind_hold_s)
            raise BindError(
                e.reason,
                f"pod {key}: {e}; its slice stays reserved until the pod shows bound "
                f"or {self.settings.bind_hold_s:.0f}s pass",
            ) from None
        except CommitError as e:
            self.state.forget(key, uid)
            raise BindError(e.reason, f"pod {key}: {e}") from None
        except BaseException:
            self.state.forget(key, uid)
            raise
        self.state.confirm(key)
        self.preempting.landed(key, uid)
        # The pod's host request counts at once (the backend's watch re-states it, idempotent).
        self.state.set_pod_host(key, node_name, req.cpu_milli, req.memory_mib, uid)
        if req.selector.models:
            self._models[key] = frozenset(req.selector.models)
        return alloc

    def expire_holds(self) -> None:
        """End the holds the cluster has answered (the pod shows bound: BOUND now) and those
        past their deadline (the Binding never landed: the slice is free again); and the
        reservations past theirs (``reserving``)."""
        self.reserving.expire()
        if not self._held:
            return
        now = self.clock()
        with self._held_mu:
            done = [
                (k, uid)
                for k, (uid, until) in self._held.items()
                if until <= now or self.state.state_of(k) is not AllocState.ASSUMED
            ]
            for k, _ in done:
                del self._held[k]
        for k, uid in done:
            self.state.forget(k, uid)  # drops only what is still ASSUMED

    def quota_reason(self, req: PodRequest, less: Usage = Usage()) -> tuple[str, bool]:
        """Why the pod would break a quota of its namespace ("" if not), and whether evicting
        pods could help; a pod already allocated (a bind in flight) is not counted twice."""
        if not self.state.quotas.quotas_for(req.namespace):
            return "", True  # no quota on its namespace: one dict lookup, nothing counted
        need, unsized = request_usage(req)
        mine = self.state.allocation(req.key)
        if mine is not None and mine.uid == req.uid:
            less = less.plus(allocation_usage(mine))
        return self.state.quotas.check(req.namespace, need, unsized, less)

    def _recount_quota(self, req: PodRequest) -> int:
        """Before refusing a pod for its quota, read its quotas' namespaces' pods from the
        cluster and release those our watch still counts but that are gone; how many. Why:
        kube-scheduler retries a pod an extender refused on the next cluster event, such as
        the deletion that freed the quota, which its informer may see before our watch does;
        a refusal then would leave the pod waiting for some later event."""
        namespaces = {ns for q in self.state.quotas.quotas_for(req.namespace) for ns in self.state.quotas.members(q)}
        released = 0
        for ns in namespaces:
            counted = [
                (k, a.uid)
                for k in self.state.keys()
                if k.startswith(ns + "/")
                for a in (self.state.allocation(k),)
                if a is not None and k != req.key
            ]
            if not counted:
                continue
            try:
                running = self.backend.running_pods(ns)
            except Exception as e:  # the read is a hint: the watch stays the source
                log.info("quota of %s: reading its pods back failed: %s", ns, e)
                continue
            for key, uid in counted:
                if (key.split("/", 1)[1], uid) not in running and self.state.state_of(key) is AllocState.BOUND:
                    released += self.state.release(key, uid)
                    self.state.drop_pod_host(key, uid)
        return released

    # ---- preempt ----

    def preempt(
        self, pod: Mapping[str, Any], victims: Mapping[str, tuple[list[str], int]]
    ) -> dict[str, tuple[list[str], int]]:
        """kube-scheduler's preempt verb (``preempting.Preempting.verb``)."""
        try:
            req = self.parse(pod)
        except RequestError:
            return {}
        if not req.wants_gpu:
            return dict(victims)
        return self.preempting.verb(req, victims)

    # ---- helpers ----

    def _request_for(self, namespace: str, name: str, uid: str, pod: dict[str, Any] | None = None) -> PodRequest:
        if pod is None:
            req = self.caches.pending_request(uid) if uid else None
            if req is not None and (req.namespace, req.name) == (namespace, name):
                return req
            pod = self._checked(self.backend.get_pod(namespace, name), namespace, name, uid)
        try:
            return self.parse(pod)
        except RequestError as e:
            raise BindError(BindFailure.INVALID_REQUEST, f"pod {namespace}/{name}: invalid vGPU request: {e}") from None

    @staticmethod
    def _checked(pod: dict[str, Any] | None, namespace: str, name: str, uid: str) -> dict[str, Any]:
        """``pod`` as the backend has it now, if a bind may go on: a BindError if it is gone,
        is another pod than ``uid`` names, or is bound already."""
        if pod is None:
            raise BindError(BindFailure.POD_GONE, f"pod {namespace}/{name}: not found")
        got_uid = _uid_of(pod)
        if uid and got_uid and got_uid != uid:
            raise BindError(
                BindFailure.POD_GONE, f"pod {namespace}/{name}: UID {got_uid} is not {uid} (pod was recreated)"
            )
        spec = pod.get("spec")
        bound_to = spec.get("nodeName") if isinstance(spec, dict) else None
        if bound_to:
            raise BindError(BindFailure.DUPLICATE, f"pod {namespace}/{name}: already bound to {bound_to}")
        return pod

    # ---- the target workload ----

    def learn_workload(self, min_pods: int) -> int:
        """Aim a workload-aware policy at the pods bound now, as FGD takes its target workload
        from history: one task class per pod, by its GPU shape (app containers' vGPUs, the
        largest share) and host request; pods without GPUs too. With fewer than ``min_pods``
        the built-in prior stays. Every cached score goes with the old workload (the next
        call per shape is cold). Returns how many pods it learned from (0: nothing changed).

        Why: the replay's gain over FGD comes from each class's CPU per GPU (bench/results/
        trace-replay.md); the built-in prior asks for no CPU, so host scores would equal the
        cards-only ones. The same workload as last time (no pod came or went) changes nothing:
        the caches stay.
        """
        requests = self.state.pod_requests()
        every = (self._node_policy, self._card_policy, *list(self._overrides.values()))
        aware = [p for p in {id(p): p for p in every}.values() if isinstance(p, WorkloadAware)]
        if len(requests) < max(1, min_pods) or not aware:
            return 0
        classes = []
        self._models = {k: m for k, m in self._models.items() if k in requests}  # gone pods go
        for key, (cpu, mem) in requests.items():
            alloc = self.state.allocation(key)
            app = [s for s in alloc.slices if not s.init] if alloc is not None else []
            cores = max((s.cores for s in app), default=0)
            models = self._models.get(key, frozenset()) if app else frozenset()
            classes.append(TaskClass(len(app), cores, 1.0, cpu, mem, models))
        workload = Workload.of(classes)
        if not workload.classes:
            return 0  # no GPU pods yet: nothing to aim at
        cards: dict[str, int] = {}
        kinds: dict[NodeKind, int] = {}
        for node in self.state.nodes():
            for card in node.cards:
                cards[card.model] = cards.get(card.model, 0) + 1
            if node.cards:
                kind = _kind(node)
                kinds[kind] = kinds.get(kind, 0) + 1
        learned = (workload, cards, kinds, tuple(id(p) for p in aware))
        if learned == self._learned:
            return 0  # the same target for the same policies: every cached answer stays right
        for policy in aware:
            if isinstance(policy, CapacityAware):
                policy.use_capacity(cards, kinds)  # what the constrained tasks' models and kinds can take
            policy.use_workload(workload)
        self.workload = workload
        self._learned = learned
        self.caches.drop_scores(self.state)
        return len(requests)

    def reprice(self) -> bool:
        """Hand the observing node policy the free cards per node kind; every cached score
        goes if it re-priced. True if it did."""
        if self._observer is None:
            return False
        free: dict[NodeKind, float] = {}
        seen = self._free_seen
        nodes = self.state.nodes()
        if len(seen) > 2 * len(nodes):  # nodes gone: start afresh
            seen.clear()
        for node in nodes:
            # A node's version changes with its cards and usage, its host object with its host:
            # only the nodes changed since the last pass are summed again.
            hit = seen.get(node.name)
            if hit is None or hit[0] != node.version or hit[1] is not node.host:
                left = sum(card_free(c, u) for c, u in zip(node.cards, node.usage, strict=True))
                hit = seen[node.name] = (node.version, node.host, _kind(node) if node.cards else None, left)
            _, _, kind, left = hit
            if left and kind is not None:
                free[kind] = free.get(kind, 0.0) + left / FULL_CORES
        if not self._observer.reprice(free):
            return False
        self.caches.drop_scores(self.state)
        return True

    def _key(self, req: PodRequest) -> int:
        """A small int naming (pod shape, card policy, node policy); stable for this process."""
        return self.caches.intern((req.shape(), self.settings.card_policy, self.settings.node_policy))

    def _host_key(self, req: PodRequest, key: int, policy: policies.Policy) -> int:
        """0 if ``policy`` scores cards only; else a small int naming (shape ``key``, the pod's
        host request where the policy reads it), for ``NodeState.host_cache``."""
        if not self.caches.is_host_aware(policy):
            return 0
        if getattr(policy, "pod_host_dependent", True):
            return self.caches.intern(("host", key, req.cpu_milli, req.memory_mib))
        return self.caches.intern(("host", key))

    def _policy(self, override: str | None, default: policies.Policy) -> policies.Policy:
        if not override:
            return default
        got = self._overrides.get(override)
        if got is None:
            got = self._overrides.setdefault(override, policies.get(override))
        return got

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


def _kind(node: NodeState) -> NodeKind:
    """The node's kind for the policies: its cards' model and count, and its host where known."""
    host = node.host
    return NodeKind(node.cards[0].model, len(node.cards), host.cpu_milli if host else 0, host.memory_mib if host else 0)


def _task(req: PodRequest) -> TaskClass:
    """A pod as a task class (weight 1): app containers' vGPUs, the largest share, host request, models."""
    app = [c for c in req.containers if not c.init and c.vgpus]
    return TaskClass(
        sum(c.vgpus for c in app),
        max((c.cores for c in app), default=0),
        1.0,
        req.cpu_milli,
        req.memory_mib,
        frozenset(req.selector.models),
    )


def _uid_of(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata")
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    return uid if isinstance(uid, str) else ""


def _held_by(key: str, existing: Allocation, st: AllocState | None) -> str:
    if st is AllocState.BOUND:
        return f"pod {key}: already bound to {existing.node} (UID {existing.uid})"
    return f"pod {key}: a bind to {existing.node} (UID {existing.uid}) is already in progress"


def _short(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def invalid_outcome(error: RequestError, node_names: Sequence[str]) -> FilterOutcome:
    """What filter answers for a pod whose vGPU request is invalid: that reason on every node."""
    return FilterOutcome(unresolvable=dict.fromkeys(node_names, _short(f"invalid vGPU request: {error}")))


def _best_at(names: Sequence[str], raw: Sequence[float], top: float | None = None) -> int:
    """Where the highest score of ``raw`` is (``top``, when known); of equals, the first name."""
    if top is None:
        top = max(raw)
    at = raw.index(top)
    if raw.count(top) > 1:
        at = min(compress(range(len(raw)), map(top.__eq__, raw)), key=names.__getitem__)
    return at


def _normalised(scores: list[float]) -> list[int]:
    """``_normalised_each`` in numpy: the same float64 arithmetic, and ``rint`` rounds
    half to even as ``round`` does, so the same integers, a few times faster."""
    if len(scores) < 64:
        return _normalised_each(scores)
    a = np.array(scores, dtype=np.float64)
    fit = a != NO_FIT
    if not fit.any() or np.isnan(a).any():  # NaN: ``round`` raises, as before
        return _normalised_each(scores)
    fitting = a[fit]
    lo, hi = float(fitting.min()), float(fitting.max())
    if hi - lo < 1e-12:  # all equal: all best
        return np.where(fit, MAX_SCORE, 0).tolist()  # type: ignore[no-any-return]
    k = MAX_SCORE / (hi - lo)
    out = np.rint((a - lo) * k)
    out[~fit] = 0
    return out.astype(np.int64).tolist()  # type: ignore[no-any-return]


def _normalised_each(scores: list[float]) -> list[int]:
    """Best node MAX_SCORE, worst fitting node 0; nodes that do not fit get 0."""
    fitting = list(filter(NO_FIT.__ne__, scores))
    if not fitting:
        return [0] * len(scores)
    lo, hi = min(fitting), max(fitting)
    if hi - lo < 1e-12:  # all equal: all best
        return [0 if x == NO_FIT else MAX_SCORE for x in scores]
    k = MAX_SCORE / (hi - lo)
    return [0 if x == NO_FIT else round((x - lo) * k) for x in scores]
