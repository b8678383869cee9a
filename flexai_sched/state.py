"""The cluster as the scheduler believes it: node inventories and pod allocations.

An allocation moves through these states (as kube-scheduler's cache does)::

      assume()            confirm() / observe()          release()
    ----------> ASSUMED ------------------------> BOUND -----------> (gone)
                   |                                 ^
                   | forget() (bind failed)          | observe() (seen in the cluster,
                   v                                 |  e.g. after a restart)
                 (gone)  ----------------------------+

``assume`` re-checks the fit against the node's current allocations under the node's lock,
so two concurrent binds can never over-commit a card, and refuses a pod key that holds
an allocation already (only the cluster, through ``observe``, replaces one). ``forget`` and ``release`` are
idempotent. A node's usage is recomputed from its allocations on every change (no
incremental counters that could drift), and every change bumps the node's version,
which keys the per-node fit cache.

Beside the cards, the node's host (``fragmentation.Host``): its allocatable CPU and
memory (``set_host_capacity``) and what every bound pod asks of it, GPU pods or not
(``set_pod_host`` / ``drop_pod_host``, idempotent, a pod counted once). Host usage is
also summed afresh on every change. A host change keeps the version and the fit cache
(cards unchanged: fit verdicts and card scores stay valid, and a bind decided on the
cards is still valid) and gives the node a new, empty ``host_cache`` (scores that read
the host). ``NodeState.host`` is None while the node's capacity is unknown.

Reservations (``reserve`` / ``unreserve``): the slices a pod will most likely be bound with,
held from the extender's prioritize until its bind; kube-scheduler starts the next pod's cycle
before that bind arrives, and it must not be offered the room. They count in ``usage`` (what
every new placement reads) but not in ``allocated`` (what a bind places against: a bind is
the truth, a reservation a guess) nor in quotas; a pod's allocation (``assume``, ``observe``)
or its ``release`` ends its reservation.

``quotas`` (``quota.QuotaBook``): the declared vGPU quotas and each namespace's usage, which
moves with every allocation put or dropped (assumed ones count), under the same lock, so a
bind that checks a quota inside ``assume``'s ``fits`` can never overshoot it.

For preemption: each bound pod's priority and labels (``set_pod_meta``; gone with the
pod's ``release``) and the PodDisruptionBudgets (``set_budget`` / ``drop_budget``).

Beside what it counts, the state remembers the allocations the cluster shows that it
does NOT count (``Rejected``: malformed, not what the pod asks for, changed after the
bind), one per pod, with a running total per reason: the backend records them
(``reject`` / ``clear_rejection``), the metrics read them.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from flexai_core.model import Allocation, Card, CardUsage, NodeInventory

from .errors import BindFailure, SchedError
from .preemption import Budget
from .quota import QuotaBook, allocation_usage
from .workload import Host

# Bound on the interned node contents: a few per live node (each bind makes a new one).
MAX_CONTENTS = 20_000
# Bound on the change log: a reader further behind than this starts over (``changes_since``).
# Past it the older half goes, not all of it: a reader a few changes behind (every shape's
# answer table) keeps its place instead of every table starting over at once.
MAX_CHANGES = 100_000
# Bound on the pods remembered as gone (``release(..., gone=True)``); the oldest go first.
MAX_GONE = 10_000


class AllocState(enum.Enum):
    ASSUMED = "assumed"
    BOUND = "bound"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A pod's allocation annotation that the scheduler does not count, and why."""

    key: str
    uid: str
    node: str
    reason: str  # a short label (allocation_check.REASONS, or the backend's own)
    message: str


class Conflict(SchedError):
    """The allocation no longer fits the node's current usage; ``reason`` says how."""

    def __init__(self, message: str, reason: BindFailure = BindFailure.CONFLICT) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class NodeState:
    inventory: NodeInventory
    usage: tuple[CardUsage, ...]  # allocations and reservations: what a new placement must leave
    version: int = 0
    pods: dict[str, Allocation] = field(default_factory=dict)
    # Interned pod-shape id -> True or NoFit (fit), -id -> node score; see Extender._verdict.
    # Valid for this node's allocations and cards; heartbeats and host changes keep it.
    fit_cache: dict[Any, Any] = field(default_factory=dict)
    # Allocatable CPU/memory and what bound pods request; None: capacity unknown.
    host: Host | None = None
    # Interned (shape, host request) id -> score read with ``host``; new with every host change.
    host_cache: dict[int, float] = field(default_factory=dict)
    # Names what fit verdicts and scores read of the node: its cards but their UUIDs, and their
    # usage. Nodes with the same ``content`` get the same answers (the extender shares them).
    content: int = 0
    # Allocations only (no reservations), and a version that moves only with them or the cards:
    # what a bind places against and re-checks (``assume``).
    allocated: tuple[CardUsage, ...] = ()
    alloc_version: int = 0

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
        # Host resources, by node name (known before or without the node's inventory).
        self._host_caps: dict[str, tuple[int, int]] = {}  # node -> (cpu milli, memory MiB)
        self._pod_hosts: dict[str, tuple[str, str, int, int]] = {}  # pod key -> (node, uid, cpu, mem)
        self._host_pods: dict[str, dict[str, tuple[int, int]]] = {}  # node -> pod key -> (cpu, mem)
        self._facts: tuple[int, frozenset[str]] | None = None  # cached inventory_facts()
        self.quotas = QuotaBook()
        self._meta: dict[str, tuple[str, int, dict[str, str]]] = {}  # pod key -> (uid, priority, labels)
        self._budgets: dict[tuple[str, str], Budget] = {}
        self._rejected: dict[str, Rejected] = {}  # pod key -> why its allocation is not counted
        self._rejections: dict[str, int] = {}  # reason -> rejections recorded, ever
        self._contents: dict[tuple[object, ...], int] = {}  # NodeState.content ids, never reused
        self._specs: dict[str, tuple[tuple[Card, ...], int]] = {}  # node -> (its cards, their spec's id)
        self._next_content = 0
        # Names of the nodes whose answers may have changed (cards, allocations, host, removal),
        # in order, from sequence number ``_log[0]`` on: the extender's per-shape answer tables
        # forget only those nodes. Replaced whole (not cut in place) so readers need no lock.
        self._log: tuple[int, list[str]] = (0, [])
        # (pod key, UID) of pods released because the cluster showed them gone when read back
        # (``release(..., gone=True)``): a watch event that lags behind that read (the pod's last
        # update before its deletion) must not count them again.
        self._gone: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._reserved: dict[str, tuple[Allocation, ...]] = {}  # pod key -> its reservations, one per node
        self._reserved_on: dict[str, dict[str, Allocation]] = {}  # node -> pod key -> reservation

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
            facts = (max((len(n.cards) for n in nodes), default=0), frozenset(c.model for n in nodes for c in n.cards))
            self._facts = facts
        return facts

    def __len__(self) -> int:
        return len(self._nodes)

    # ---- inventory ----

    def upsert_node(self, inventory: NodeInventory) -> None:
        if self._max_vgpus is not None and any(c.max_vgpus > self._max_vgpus for c in inventory.cards):
            cap = self._max_vgpus
            inventory = replace(
                inventory, cards=tuple(replace(c, max_vgpus=min(c.max_vgpus, cap)) for c in inventory.cards)
            )
        with self._mu:
            old = self._nodes.get(inventory.name)
            if old is not None and old.inventory.cards == inventory.cards:
                # Only the heartbeat moved: usage and fit cache stay valid (agents beat every
                # 30 s on every node; rebuilding would empty the cache all the time).
                if old.inventory != inventory:
                    self._nodes[inventory.name] = replace(old, inventory=inventory)
                    new, was = inventory.heartbeat, old.inventory.heartbeat
                    if new is None or (was is not None and new < was):
                        # A heartbeat going back can make a node stale: answer tables must
                        # hear it (one moving on is their own concern, see answers.py).
                        self._changed(inventory.name)
                return
            self._facts = None
            self._rebuild(inventory)

    def remove_node(self, name: str) -> None:
        with self._mu:
            self._nodes.pop(name, None)
            self._facts = None
            self._changed(name)

    # ---- host resources ----

    def set_host_capacity(self, node: str, cpu_milli: int, memory_mib: int) -> None:
        """The node's allocatable CPU (millicores) and memory (MiB). Idempotent."""
        cap = (max(0, int(cpu_milli)), max(0, int(memory_mib)))
        with self._mu:
            if self._host_caps.get(node) == cap:
                return
            self._host_caps[node] = cap
            self._refresh_host(node)

    def drop_host_capacity(self, node: str) -> None:
        """The node is gone: its host becomes unknown. Idempotent."""
        with self._mu:
            if self._host_caps.pop(node, None) is not None:
                self._refresh_host(node)

    def set_pod_host(self, pod_key: str, node: str, cpu_milli: int, memory_mib: int, uid: str = "") -> None:
        """A pod bound to ``node`` requests this much of its host; replaces what it asked before."""
        entry = (node, uid, max(0, int(cpu_milli)), max(0, int(memory_mib)))
        with self._mu:
            if uid and (pod_key, uid) in self._gone:
                return  # read back as gone since (``release``)
            old = self._pod_hosts.get(pod_key)
            if old == entry:
                return
            self._pod_hosts[pod_key] = entry
            if old is not None:
                self._host_pods.get(old[0], {}).pop(pod_key, None)
            self._host_pods.setdefault(node, {})[pod_key] = (entry[2], entry[3])
            if old is not None and old[0] != node:
                self._refresh_host(old[0])
            self._refresh_host(node)

    def drop_pod_host(self, pod_key: str, uid: str | None = None) -> bool:
        """The pod is gone or finished: its requests leave its host. Idempotent; with ``uid``,
        only that incarnation of the pod (a recreated one keeps its requests)."""
        with self._mu:
            old = self._pod_hosts.get(pod_key)
            if old is None or (uid and old[1] and old[1] != uid):
                return False
            del self._pod_hosts[pod_key]
            pods = self._host_pods.get(old[0], {})
            pods.pop(pod_key, None)
            if not pods:
                self._host_pods.pop(old[0], None)
            self._refresh_host(old[0])
            return True

    def pod_hosts(self) -> list[tuple[str, str]]:
        """(pod key, uid) of every pod counted on a host."""
        with self._mu:
            return [(k, v[1]) for k, v in self._pod_hosts.items()]

    def pod_requests(self) -> dict[str, tuple[int, int]]:
        """Pod key -> (CPU millicores, memory MiB) of every pod counted on a host."""
        with self._mu:
            return {k: (v[2], v[3]) for k, v in self._pod_hosts.items()}

    def drop_scores(self) -> None:
        """Every node's cached verdicts and scores go (the policy's workload changed)."""
        with self._mu:
            for name, node in list(self._nodes.items()):
                self._nodes[name] = replace(node, fit_cache={}, host_cache={})
            base, log = self._log
            self._log = (base + len(log) + 1, [])  # every reader is behind: each starts over

    def change_seq(self) -> int:
        """The change log's position now (``changes_since`` it)."""
        base, log = self._log
        return base + len(log)

    def changes_since(self, seq: int) -> tuple[int, list[str] | None]:
        """(the log's position now, names of the nodes changed since ``seq``); None instead of
        the names when the log no longer reaches back to ``seq`` (every node may have changed).
        A name may come twice, and one written while this runs may come now and again later."""
        base, log = self._log
        end = base + len(log)
        if seq < base:
            return end, None
        return end, log[seq - base : end - base]

    def host_capacity_nodes(self) -> list[str]:
        """Names of the nodes whose host capacity is known (with an inventory or not)."""
        with self._mu:
            return list(self._host_caps)

    def host_of(self, node: str) -> Host | None:
        """The node's host now, whether or not it has an inventory; None if capacity unknown."""
        with self._mu:
            return self._host(node)

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
                raise Conflict(f"node {alloc.node}: unknown", BindFailure.UNKNOWN_NODE)
            existing = self._allocs.get(alloc.key)
            if existing is not None:
                # Never a silent replacement: a new pod under an old name is bound only after
                # the old one's allocation is released (the caller proved that pod gone).
                raise Conflict(
                    f"pod {alloc.key}: already allocated on {existing.node} (UID {existing.uid})", BindFailure.DUPLICATE
                )
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
            if (alloc.key, alloc.uid) in self._gone:
                return  # read back as gone since: this event is older than that read
            current = self._allocs.get(alloc.key)
            if current == alloc and self._states.get(alloc.key) is AllocState.BOUND:
                return
            if current is not None:
                self._drop(alloc.key)
            self._put(alloc, AllocState.BOUND)

    def release(self, key: str, uid: str | None = None, gone: bool = False) -> bool:
        """The pod is gone or finished: free its slices. Idempotent. ``gone`` (with ``uid``): the
        cluster was read and showed that pod gone, so later ``observe`` and ``set_pod_host`` calls
        for it (watch events that lag behind the read) are ignored."""
        with self._mu:
            if gone and uid:
                self._gone[(key, uid)] = None
                while len(self._gone) > MAX_GONE:
                    self._gone.popitem(last=False)
            a = self._allocs.get(key)
            meta = self._meta.get(key)
            if meta is not None and (uid is None or meta[0] == uid):
                del self._meta[key]
            self.unreserve(key, uid)
            if a is None or (uid is not None and a.uid != uid):
                return False
            self._drop(key)
            return True

    # ---- reservations ----

    def reserve(self, key: str, allocs: tuple[Allocation, ...]) -> None:
        """The pod's reservations are ``allocs`` now (one per node; empty: none). Not for a
        pod that holds an allocation: its slices are counted already."""
        with self._mu:
            if key in self._allocs:
                allocs = ()
            old = self._reserved.pop(key, ())
            if not old and not allocs:
                return
            for a in old:
                self._reserved_on.get(a.node, {}).pop(key, None)
            for a in allocs:
                self._reserved_on.setdefault(a.node, {})[key] = a
            if allocs:
                self._reserved[key] = allocs
            for name in {a.node for a in (*old, *allocs)}:
                node = self._nodes.get(name)
                if node is not None:
                    self._rebuild(node.inventory, reservations_only=True)

    def unreserve(self, key: str, uid: str | None = None) -> bool:
        """End the pod's reservations (with ``uid``: only that incarnation's). Idempotent."""
        got = self._reserved.get(key)
        if not got or (uid is not None and got[0].uid != uid):
            return False
        with self._mu:
            if self._reserved.get(key) is not got:
                return False
            self.reserve(key, ())
            return True

    def reservations(self, key: str) -> tuple[Allocation, ...]:
        """The pod's reservations (empty: none)."""
        return self._reserved.get(key, ())

    def reserved_pods(self) -> list[str]:
        """Keys of the pods holding reservations."""
        return list(self._reserved)

    # ---- what preemption reads ----

    def set_pod_meta(self, key: str, uid: str, priority: int, labels: dict[str, str]) -> None:
        """A bound pod's priority and labels (who may evict it, which budgets select it)."""
        self._meta[key] = (uid, priority, labels)

    def pod_meta_known(self, key: str, uid: str) -> bool:
        """Whether that incarnation's priority and labels were recorded (``set_pod_meta``)."""
        got = self._meta.get(key)
        return got is not None and got[0] == uid

    def pod_meta(self, key: str, uid: str) -> tuple[int, dict[str, str]]:
        """(priority, labels) of that incarnation of the pod; (0, {}) when not known."""
        got = self._meta.get(key)
        return (got[1], got[2]) if got is not None and got[0] == uid else (0, {})

    def set_budget(self, budget: Budget) -> None:
        with self._mu:
            self._budgets = {**self._budgets, (budget.namespace, budget.name): budget}

    def drop_budget(self, namespace: str, name: str) -> None:
        with self._mu:
            self._budgets = {k: v for k, v in self._budgets.items() if k != (namespace, name)}

    def budgets(self) -> list[Budget]:
        return list(self._budgets.values())

    def keys(self) -> list[str]:
        """Keys (namespace/name) of every allocation, assumed or bound."""
        return list(self._allocs)

    # ---- allocations not counted ----

    def reject(self, r: Rejected) -> bool:
        """Record why a pod's allocation is not counted; True when that is news (a new pod,
        or a new reason or message), which is what the total counts."""
        with self._mu:
            if self._rejected.get(r.key) == r:
                return False
            self._rejected[r.key] = r
            self._rejections[r.reason] = self._rejections.get(r.reason, 0) + 1
            return True

    def clear_rejection(self, key: str, uid: str | None = None) -> bool:
        """The pod is gone, or its allocation counts again. Idempotent."""
        with self._mu:
            r = self._rejected.get(key)
            if r is None or (uid is not None and r.uid != uid):
                return False
            del self._rejected[key]
            return True

    def rejected(self) -> list[Rejected]:
        with self._mu:
            return list(self._rejected.values())

    def rejections(self) -> dict[str, int]:
        """Reason -> how many rejections were recorded since start."""
        with self._mu:
            return dict(self._rejections)

    # ---- internals (hold self._mu) ----

    def _put(self, alloc: Allocation, st: AllocState) -> None:
        if alloc.key in self._allocs:
            # A new pod under an old name (the API server keeps names unique, so the old
            # pod is gone): its slices go with it, from whichever node held them.
            self._drop(alloc.key)
        self._allocs[alloc.key] = alloc
        self._states[alloc.key] = st
        self.quotas.add(alloc.namespace, allocation_usage(alloc))
        self._by_node.setdefault(alloc.node, {})[alloc.key] = alloc
        # Its reservations end: on its node the allocation takes their place in one rebuild.
        for r in self._reserved.pop(alloc.key, ()):
            self._reserved_on.get(r.node, {}).pop(alloc.key, None)
            other = self._nodes.get(r.node) if r.node != alloc.node else None
            if other is not None:
                self._rebuild(other.inventory, reservations_only=True)
        node = self._nodes.get(alloc.node)
        if node is not None:
            self._rebuild(node.inventory)

    def _drop(self, key: str) -> None:
        a = self._allocs.pop(key)
        self._states.pop(key, None)
        self.quotas.remove(a.namespace, allocation_usage(a))
        self._by_node.get(a.node, {}).pop(key, None)
        node = self._nodes.get(a.node)
        if node is not None:
            self._rebuild(node.inventory)

    def _host(self, name: str) -> Host | None:
        cap = self._host_caps.get(name)
        if cap is None:
            return None
        pods = self._host_pods.get(name, {}).values()
        return Host(cap[0], cap[1], sum(c for c, _ in pods), sum(m for _, m in pods))

    def _refresh_host(self, name: str) -> None:
        """The node's host moved: same cards, version and fit cache; a new host cache."""
        node = self._nodes.get(name)
        if node is None:
            return
        host = self._host(name)
        if host != node.host:
            self._nodes[name] = replace(node, host=host, host_cache={})
            self._changed(name)

    def _rebuild(self, inventory: NodeInventory, reservations_only: bool = False) -> None:
        """A new NodeState for the node; ``reservations_only``: its cards and allocations are
        as they were (its ``allocated`` and ``alloc_version`` stay)."""
        name = inventory.name
        old = self._nodes.get(name)
        self._versions += 1
        pods = dict(self._by_node.get(name, {}))
        if reservations_only and old is not None:
            allocated, alloc_version = old.allocated, old.alloc_version
        else:
            allocated, alloc_version = _summed(inventory, pods.values()), self._versions
        reserved = self._reserved_on.get(name)
        usage = allocated
        if reserved:
            usage = tuple(u.plus(r) for u, r in zip(allocated, _summed(inventory, reserved.values()), strict=True))
        elif reserved is not None:
            del self._reserved_on[name]
        host = self._host(name)
        content = self._content(name, inventory.cards, usage)
        self._nodes[name] = NodeState(
            inventory,
            usage,
            self._versions,
            pods,
            host=host,
            content=content,
            allocated=allocated,
            alloc_version=alloc_version,
        )
        # The same cards, usage and host give the same answers: a bind that takes the room its
        # reservation held changes nothing the answer tables must decide again.
        if old is None or old.inventory.cards is not inventory.cards or old.content != content or old.host != host:
            self._changed(name)

    def _changed(self, name: str) -> None:
        """Log a node whose answers may have changed, after its new state is in place."""
        base, log = self._log
        log.append(name)
        if len(log) > MAX_CHANGES:
            half = len(log) // 2
            self._log = (base + half, log[half:])

    def _content(self, name: str, cards: tuple[Card, ...], usage: tuple[CardUsage, ...]) -> int:
        seen = self._specs.get(name)
        if seen is None or seen[0] is not cards:  # the spec is worked out once per inventory
            spec = tuple(
                (c.index, c.model, c.memory_mib, c.max_vgpus, c.healthy, c.numa, c.used_outside_mib) for c in cards
            )
            seen = self._specs[name] = (cards, self._intern_content(spec))
        return self._intern_content((seen[1], usage))

    def _intern_content(self, key: tuple[object, ...]) -> int:
        got = self._contents.get(key)
        if got is None:
            if len(self._contents) >= MAX_CONTENTS:
                # Ids are never reused: old ones only stop being shared. Live nodes' specs
                # are interned again as their nodes change.
                self._contents.clear()
                self._specs.clear()
            self._next_content += 1
            got = self._contents[key] = self._next_content
        return got


def _summed(inventory: NodeInventory, allocs: Iterable[Allocation]) -> tuple[CardUsage, ...]:
    """What ``allocs`` hold on each card of the inventory, in its order."""
    by_index = {c.index: pos for pos, c in enumerate(inventory.cards)}
    usage = [CardUsage.of()] * len(inventory.cards)
    for a in allocs:
        for index, held in a.card_usage.items():
            pos = by_index.get(index)
            if pos is not None:  # a card that vanished from the inventory holds nothing
                usage[pos] = usage[pos].plus(held)
    return tuple(usage)
