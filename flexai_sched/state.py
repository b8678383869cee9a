"""The cluster as the scheduler believes it: node inventories and pod allocations.

An allocation moves through these states (as kube-scheduler's cache does)::

      assume()            confirm() / observe()          release()
    ----------> ASSUMED ------------------------> BOUND -----------> (gone)
                   |                                 ^
                   | forget() (bind failed)          | observe() (seen in the cluster,
                   v                                 |  e.g. after a restart)
                 (gone)  ----------------------------+

``assume`` re-checks the fit against the node's current usage under the node's lock,
so two concurrent binds can never over-commit a card. ``forget`` and ``release`` are
idempotent. A node's usage is recomputed from its allocations on every change (no
incremental counters that could drift), and every change bumps the node's version,
which keys the per-node fit cache.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .model import Allocation, Card, CardUsage, NodeInventory


class AllocState(enum.Enum):
    ASSUMED = "assumed"
    BOUND = "bound"


class Conflict(Exception):
    """The allocation no longer fits the node's current usage."""


@dataclass(slots=True)
class NodeState:
    inventory: NodeInventory
    usage: tuple[CardUsage, ...]
    version: int = 0
    pods: dict[str, Allocation] = field(default_factory=dict)
    # Interned pod-shape id -> True or NoFit (fit), -id -> node score; see Extender._verdict.
    # Valid for this node's allocations and cards; heartbeats keep it.
    fit_cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.inventory.name

    @property
    def cards(self) -> tuple[Card, ...]:
        return self.inventory.cards

    @property
    def heartbeat(self) -> datetime | None:
        return self.inventory.heartbeat


class ClusterState:
    def __init__(self, max_vgpus_per_card: int | None = None) -> None:
        # Caps what inventories advertise (the scheduler's own setting wins when lower).
        self._max_vgpus = max_vgpus_per_card
        self._mu = threading.RLock()
        self._nodes: dict[str, NodeState] = {}
        self._allocs: dict[str, Allocation] = {}
        self._by_node: dict[str, dict[str, Allocation]] = {}
        self._states: dict[str, AllocState] = {}
        self._node_locks: dict[str, threading.Lock] = {}
        self._versions = 0
        self._facts: tuple[int, frozenset[str]] | None = None  # cached inventory_facts()

    # ---- reads (lock-free: dict reads are atomic under the GIL; NodeState is replaced, not mutated in place
    # except for its fit cache) ----

    def node(self, name: str) -> NodeState | None:
        return self._nodes.get(name)

    def nodes_by_name(self) -> dict[str, NodeState]:
        """The live name -> node map, for hot loops. Read it; never mutate it."""
        return self._nodes

    def nodes(self) -> list[NodeState]:
        return list(self._nodes.values())

    def allocation(self, key: str) -> Allocation | None:
        return self._allocs.get(key)

    def allocations(self) -> list[tuple[Allocation, AllocState]]:
        with self._mu:
            return [(a, self._states[k]) for k, a in self._allocs.items()]

    def state_of(self, key: str) -> AllocState | None:
        return self._states.get(key)

    def inventory_facts(self) -> tuple[int, frozenset[str]]:
        """(most cards on any node, every card model): cached until an inventory changes."""
        facts = self._facts
        if facts is None:
            nodes = list(self._nodes.values())
            facts = (max((len(n.cards) for n in nodes), default=0),
                     frozenset(c.model for n in nodes for c in n.cards))
            self._facts = facts
        return facts

    def __len__(self) -> int:
        return len(self._nodes)

    # ---- inventory ----

    def upsert_node(self, inventory: NodeInventory) -> None:
        if self._max_vgpus is not None and any(c.max_vgpus > self._max_vgpus for c in inventory.cards):
            cap = self._max_vgpus
            inventory = replace(inventory, cards=tuple(replace(c, max_vgpus=min(c.max_vgpus, cap)) for c in inventory.cards))
        with self._mu:
            old = self._nodes.get(inventory.name)
            if old is not None and old.inventory.cards == inventory.cards:
                # Only the heartbeat moved: usage and fit cache stay valid (agents beat every
                # 30 s on every node; rebuilding would empty the cache all the time).
                if old.inventory != inventory:
                    self._nodes[inventory.name] = replace(old, inventory=inventory)
                return
            self._facts = None
            self._rebuild(inventory)

    def remove_node(self, name: str) -> None:
        with self._mu:
            self._nodes.pop(name, None)
            self._facts = None

    # ---- allocations ----

    def node_lock(self, name: str) -> threading.Lock:
        """Serialises bind decisions on one node (held for the decision, not the API write)."""
        with self._mu:
            return self._node_locks.setdefault(name, threading.Lock())

    def assume(self, alloc: Allocation, fits: Any) -> None:
        """Record ``alloc`` as ASSUMED if ``fits(node_state)`` still holds; else raise Conflict.

        Callers hold ``node_lock(alloc.node)`` so the check and the write are one step.
        """
        with self._mu:
            node = self._nodes.get(alloc.node)
            if node is None:
                raise Conflict(f"node {alloc.node}: unknown")
            existing = self._allocs.get(alloc.key)
            if existing is not None and existing.uid == alloc.uid:
                raise Conflict(f"pod {alloc.key}: already allocated on {existing.node}")
            if not fits(node):
                raise Conflict(f"node {alloc.node}: the slice no longer fits (another pod took it)")
            self._put(alloc, AllocState.ASSUMED)

    def confirm(self, key: str) -> None:
        with self._mu:
            if key in self._states:
                self._states[key] = AllocState.BOUND

    def forget(self, key: str, uid: str | None = None) -> None:
        """Drop an ASSUMED allocation (bind failed). Idempotent; never drops a BOUND one."""
        with self._mu:
            a = self._allocs.get(key)
            if a is None or (uid is not None and a.uid != uid) or self._states.get(key) is not AllocState.ASSUMED:
                return
            self._drop(key)

    def observe(self, alloc: Allocation) -> None:
        """The cluster shows this pod bound with this allocation (watch or restart)."""
        with self._mu:
            current = self._allocs.get(alloc.key)
            if current == alloc and self._states.get(alloc.key) is AllocState.BOUND:
                return
            if current is not None:
                self._drop(alloc.key)
            self._put(alloc, AllocState.BOUND)

    def release(self, key: str, uid: str | None = None) -> bool:
        """The pod is gone or finished: free its slices. Idempotent."""
        with self._mu:
            a = self._allocs.get(key)
            if a is None or (uid is not None and a.uid != uid):
                return False
            self._drop(key)
            return True

    def keys(self) -> list[str]:
        """Keys (namespace/name) of every allocation, assumed or bound."""
        return list(self._allocs)

    # ---- internals (hold self._mu) ----

    def _put(self, alloc: Allocation, st: AllocState) -> None:
        self._allocs[alloc.key] = alloc
        self._states[alloc.key] = st
        self._by_node.setdefault(alloc.node, {})[alloc.key] = alloc
        node = self._nodes.get(alloc.node)
        if node is not None:
            self._rebuild(node.inventory)

    def _drop(self, key: str) -> None:
        a = self._allocs.pop(key)
        self._states.pop(key, None)
        self._by_node.get(a.node, {}).pop(key, None)
        node = self._nodes.get(a.node)
        if node is not None:
            self._rebuild(node.inventory)

    def _rebuild(self, inventory: NodeInventory) -> None:
        pods = dict(self._by_node.get(inventory.name, {}))
        by_index = {c.index: pos for pos, c in enumerate(inventory.cards)}
        usage = [CardUsage()] * len(inventory.cards)
        for a in pods.values():
            for index, held in a.card_usage.items():
                pos = by_index.get(index)
                if pos is not None:  # a card that vanished from the inventory holds nothing
                    usage[pos] = usage[pos].plus(held)
        self._versions += 1
        self._nodes[inventory.name] = NodeState(inventory, tuple(usage), self._versions, pods)
