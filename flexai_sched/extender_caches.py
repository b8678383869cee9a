"""The extender's caches across nodes, as one typed object with bounded fields.

Per node, ``NodeState`` keeps its own caches (``fit_cache``, ``host_cache``; see ``state``).
These are the extender's, across nodes and calls:

- ``pending``: pods filter has seen, by UID (most recent last): bind gets only names, so it
  reuses the parsed request; at most ``PENDING_CACHE``, the oldest go first;
- ``shape_ids``: pod shapes (and host requests) -> small ints, so node-cache lookups hash an
  int, not nested tuples; ids are never reused, so when the table is full and cleared the
  old entries of the node caches just go cold;
- ``shared``: (shape id, host id) -> node content (and host, with a host id) -> the score of a
  node the shape fits, or the ``NoFit`` of one it does not: nodes whose cards and usage are
  alike (empty nodes, full nodes) are worked out once per shape, not each;
- ``host_aware``: policy class -> whether it scores with the host (``HostAware``), asked once;
- ``no_fits``: one ``NoFit`` per distinct (reason, resolvable), which the node caches share;
- ``tables``: (shape id, host id) -> ``answers.ShapeAnswers``, each node's filter verdict and
  raw score for that shape, kept across calls and patched from the cluster state's change
  log; at most ``MAX_TABLES``, the least recently used go;
- ``card_memos``: shape id -> ``allocator.CardMemo``, what placing the shape on a card in a
  given state came to, shared by nodes that differ but hold cards alike; at most
  ``MAX_TABLES``, all dropped when full;

Every field is bounded (a long-lived extender sees new shapes and node states with every
bind). ``drop_scores`` is the one invalidation: when the policies' workload changes, every
cached verdict and score goes, here and on every node.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from flexai_core.model import CardSelector, PodRequest

from .allocator import CardMemo, NoFit
from .answers import ShapeAnswers
from .policies.interface import HostAware, Policy
from .state import ClusterState

PENDING_CACHE = 10_000
MAX_SHAPES = 100_000
MAX_SHARED = 50_000
MAX_TABLES = 64


@dataclass(slots=True, eq=False)
class ExtenderCaches:
    pending: OrderedDict[str, PodRequest] = field(default_factory=OrderedDict)
    shape_ids: dict[tuple[object, ...], int] = field(default_factory=dict)
    next_shape_id: int = 0
    # Keyed by content inside the shape's own dict, holding floats or shared NoFits: every bind
    # adds entries, and these add no object for the garbage collector to walk (but the
    # (content, host) key of a host-aware shape).
    shared: dict[tuple[int, int], dict[object, float | NoFit]] = field(default_factory=dict)
    shared_count: int = 0
    host_aware: dict[type, bool] = field(default_factory=dict)
    no_fits: dict[tuple[str, bool], NoFit] = field(default_factory=dict)
    tables: OrderedDict[tuple[int, int], ShapeAnswers] = field(default_factory=OrderedDict)
    # The tables are filled and patched in place: one call at a time.
    tables_mu: threading.Lock = field(default_factory=threading.Lock)
    card_memos: dict[int, CardMemo] = field(default_factory=dict)
    # ``pending`` is written by filter and read by bind, on different threads.
    _mu: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, req: PodRequest) -> None:
        """Keep a pod filter parsed, for its bind."""
        with self._mu:
            self.pending[req.uid] = req
            self.pending.move_to_end(req.uid)
            while len(self.pending) > PENDING_CACHE:
                self.pending.popitem(last=False)

    def pending_request(self, uid: str) -> PodRequest | None:
        with self._mu:
            return self.pending.get(uid)

    def pending_requests(self) -> list[PodRequest]:
        """The pods filter has seen, most recent last."""
        with self._mu:
            return list(self.pending.values())

    def intern(self, shape: tuple[object, ...]) -> int:
        """A small positive int per distinct ``shape``; ids are never reused."""
        got = self.shape_ids.get(shape)
        if got is None:
            if len(self.shape_ids) >= MAX_SHAPES:
                self.shape_ids.clear()  # ids are never reused, so old cache entries just go cold
            self.next_shape_id += 1
            got = self.shape_ids.setdefault(shape, self.next_shape_id)
        return got

    def is_host_aware(self, policy: Policy) -> bool:
        aware = self.host_aware.get(type(policy))
        if aware is None:
            aware = self.host_aware[type(policy)] = isinstance(policy, HostAware)
        return aware

    def shared_for(self, key: int, hkey: int) -> dict[object, float | NoFit]:
        """Node content (with ``hkey``: and host) -> what shape ``key`` came to on a node of
        that content: its score where the shape fits, else the ``NoFit``."""
        got = self.shared.get((key, hkey))
        if got is None:
            got = self.shared[(key, hkey)] = {}
        return got

    def share(self, alike: dict[object, float | NoFit], node: object, outcome: float | NoFit) -> None:
        """Remember a node's outcome for the nodes alike (``alike`` from ``shared_for``)."""
        if self.shared_count >= MAX_SHARED:
            self.shared.clear()
            self.shared_count = 0
        alike[node] = outcome
        self.shared_count += 1

    def no_fit(self, got: NoFit) -> NoFit:
        """The one ``NoFit`` object for ``got``'s reason and resolvability."""
        if len(self.no_fits) > MAX_SHAPES:
            self.no_fits.clear()
        return self.no_fits.setdefault((got.reason, got.resolvable), got)

    def table(self, key: int, hkey: int, state: ClusterState) -> ShapeAnswers:
        """The shape's answer table, rid of the nodes changed since its last use (hold ``tables_mu``)."""
        table = self.tables.get((key, hkey))
        if table is None:
            if len(self.tables) >= MAX_TABLES:
                self.tables.popitem(last=False)
            table = self.tables[(key, hkey)] = ShapeAnswers(state.change_seq())
        else:
            self.tables.move_to_end((key, hkey))
            table.sync(*state.changes_since(table.seq))
        return table

    def card_memo(self, key: int, selector: CardSelector, policy: Policy) -> CardMemo:
        """The card memo of shape ``key`` placed with ``policy`` (a new one if the policy changed)."""
        memo = self.card_memos.get(key)
        if memo is None or memo.policy is not policy:
            if len(self.card_memos) >= MAX_TABLES:
                self.card_memos.clear()
            memo = self.card_memos[key] = CardMemo(selector, policy)
        return memo

    def drop_scores(self, state: ClusterState) -> None:
        """Every cached verdict and score goes, across nodes and on each node (the policies'
        workload changed)."""
        self.shared.clear()
        self.shared_count = 0
        self.card_memos.clear()
        state.drop_scores()
