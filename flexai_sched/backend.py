"""Where the scheduler's state comes from and where binds go.

A backend feeds ``ClusterState`` (node inventories, allocations of bound pods, declared vGPU
quotas and namespace labels into ``state.quotas``) from its source of truth, and keeps it
current (quota changes apply without a restart), and commits a bind: records the allocation on the pod and binds it
to the node. Two implementations: ``MemoryBackend`` here (demo cluster, tests, trace
replay) and ``kube.KubeBackend`` (a real cluster).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from flexai_core import annotations as ann
from flexai_core.model import Allocation, NodeInventory

from .errors import BindFailure, SchedError
from .quota import DATA_KEY
from .state import ClusterState

log = logging.getLogger("flexai_sched.backend")


class CommitError(SchedError):
    """Writing the allocation or the Binding failed; nothing of it counts. ``reason``: why, as
    the bind reports it."""

    def __init__(self, message: str, reason: BindFailure = BindFailure.BACKEND) -> None:
        super().__init__(message)
        self.reason = reason


class CommitUnknown(CommitError):
    """The write may yet land: no answer (timeout, reset, 5xx) and the pod did not show it
    bound when read back. Its slice must stay reserved until the cluster says either way."""


class Backend(Protocol):
    def start(self, state: ClusterState) -> None:
        """Fill ``state`` and keep it current until ``stop``."""

    def stop(self) -> None: ...

    def ready(self) -> bool:
        """True once ``state`` reflects the source of truth."""

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def commit(self, alloc: Allocation) -> None:
        """Persist ``alloc`` on the pod and bind the pod to ``alloc.node``; raise CommitError."""

    def evict(self, alloc: Allocation) -> None:
        """Evict that incarnation of the pod (a preemption victim), never breaking a
        PodDisruptionBudget; CommitError if refused. A pod already gone is not an error."""

    def running_pods(self, namespace: str) -> set[tuple[str, str]]:
        """(name, UID) of the namespace's pods bound to a node and not finished, read now."""


class MemoryBackend:
    """An embedded in-memory cluster: nodes from an inventory, pods created by callers.

    Heartbeats are refreshed every ``heartbeat_every`` seconds (as a node agent would),
    so demo nodes never go stale; tests pass ``heartbeat_every=None`` to control time.
    """

    def __init__(
        self,
        nodes: Iterable[NodeInventory] = (),
        heartbeat_every: float | None = 10.0,
        running: Iterable[tuple[Mapping[str, Any], Allocation]] = (),
        quota_file: str | None = None,
    ) -> None:
        self._mu = threading.Lock()
        self._nodes = {n.name: n for n in nodes}
        self._pods: dict[str, dict[str, Any]] = {}
        # Pods already bound when the cluster starts (the demo's): observed on start, as a
        # restarted extender finds bound pods' allocations.
        self._running = list(running)
        for pod, _ in self._running:
            self.create_pod(pod)
        self._state: ClusterState | None = None
        self._every = heartbeat_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fail_next_commit: str | None = None  # tests: make the next commit fail with this message
        # Tests: the next commit gets no answer (CommitUnknown with this message); its write
        # lands only when ``deliver_late`` is called, as a late Binding would show in a watch.
        self.lose_next_reply: str | None = None
        self._late: list[Allocation] = []
        self.waiting: list[dict[str, Any]] = []  # the demo's pods that wait to be scheduled
        self.evicted: list[str] = []  # keys of the pods evicted, in order (tests read it)
        # Demo quotas: the file's content is the one source; re-read on each beat when it changed.
        self._quota_file = quota_file
        self._quota_mtime: float | None = None

    def start(self, state: ClusterState) -> None:
        self._state = state
        self.heartbeat()
        for _, alloc in self._running:
            state.observe(alloc)
            state.set_pod_host(alloc.key, alloc.node, 0, 0, alloc.uid)
            state.set_pod_meta(alloc.key, alloc.uid, 0, {})  # the demo's running pods: priority 0
        self.reload_quota_file()
        if self._every:
            self._thread = threading.Thread(target=self._beat, name="demo-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def ready(self) -> bool:
        return self._state is not None

    def heartbeat(self, at: datetime | None = None) -> None:
        now = at or datetime.now(UTC)
        with self._mu:
            self._nodes = {k: NodeInventory(n.name, n.cards, now) for k, n in self._nodes.items()}
            nodes = list(self._nodes.values())
        if self._state is not None:
            for n in nodes:
                self._state.upsert_node(n)

    def add_node(self, node: NodeInventory) -> None:
        with self._mu:
            self._nodes[node.name] = node
        if self._state is not None:
            self._state.upsert_node(node)

    def declare_quotas(self, text: str, source: str = "demo/quotas") -> str:
        """Quotas in ``quota.DATA_KEY``'s format, as a ConfigMap named ``source`` would declare them
        (empty text: none); returns the error ("" if none)."""
        assert self._state is not None, "backend not started"
        return self._state.quotas.declare(source, {DATA_KEY: text})

    def label_namespace(self, namespace: str, labels: Mapping[str, str]) -> None:
        assert self._state is not None, "backend not started"
        self._state.quotas.set_namespace(namespace, labels)

    def reload_quota_file(self) -> None:
        if not self._quota_file or self._state is None:
            return
        try:
            mtime = os.stat(self._quota_file).st_mtime
            if mtime == self._quota_mtime:
                return
            self._quota_mtime = mtime
            with open(self._quota_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            self._state.quotas.set_source_error(self._quota_file, f"{self._quota_file}: {e}")
            return
        error = self._state.quotas.declare(self._quota_file, {DATA_KEY: text})
        if error:
            log.warning("quotas not applied: %s", error)

    def nodes(self) -> list[NodeInventory]:
        with self._mu:
            return list(self._nodes.values())

    def create_pod(self, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        with self._mu:
            self._pods[f"{meta.get('namespace') or 'default'}/{meta.get('name')}"] = copy.deepcopy(dict(pod))

    def delete_pod(self, namespace: str, name: str, notify: bool = True) -> None:
        """``notify`` False (tests): the state is not told, as a watch that lags behind."""
        key = f"{namespace}/{name}"
        with self._mu:
            pod = self._pods.pop(key, None)
        if pod is not None and self._state is not None and notify:
            uid = (pod.get("metadata") or {}).get("uid")
            self._state.release(key, uid)
            self._state.drop_pod_host(key, uid)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._mu:
            pod = self._pods.get(f"{namespace}/{name}")
            return copy.deepcopy(pod) if pod is not None else None

    def commit(self, alloc: Allocation) -> None:
        if self.fail_next_commit:
            msg, self.fail_next_commit = self.fail_next_commit, None
            raise CommitError(msg)
        if self.lose_next_reply:
            msg, self.lose_next_reply = self.lose_next_reply, None
            self._late.append(alloc)
            raise CommitUnknown(msg)
        self._write(alloc)

    def evict(self, alloc: Allocation) -> None:
        with self._mu:
            pod = self._pods.get(alloc.key)
            uid = (pod or {}).get("metadata", {}).get("uid")
        if pod is not None and (not uid or uid == alloc.uid):
            self.delete_pod(alloc.namespace, alloc.name)
            self.evicted.append(alloc.key)

    def running_pods(self, namespace: str) -> set[tuple[str, str]]:
        with self._mu:
            return {
                (str(p["metadata"].get("name")), str(p["metadata"].get("uid") or ""))
                for p in self._pods.values()
                if (p.get("metadata") or {}).get("namespace", "default") == namespace
                and (p.get("spec") or {}).get("nodeName")
                and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            }

    def deliver_late(self) -> None:
        """Tests: the writes whose answers were lost land now, and the state hears of them."""
        late, self._late = self._late, []
        for alloc in late:
            self._write(alloc)
            if self._state is not None:
                self._state.observe(alloc)

    def _write(self, alloc: Allocation) -> None:
        with self._mu:
            pod = self._pods.get(alloc.key)
            if pod is None:
                # The demo accepts binds of pods it never saw (curl sessions): remember a stub.
                pod = {"metadata": {"namespace": alloc.namespace, "name": alloc.name, "uid": alloc.uid}, "spec": {}}
                self._pods[alloc.key] = pod
            meta = pod.setdefault("metadata", {})
            if alloc.uid and meta.get("uid") and meta["uid"] != alloc.uid:
                raise CommitError(f"UID {meta['uid']} is not {alloc.uid} (pod was recreated)", BindFailure.POD_GONE)
            if pod.get("spec", {}).get("nodeName"):
                raise CommitError(f"already bound to {pod['spec']['nodeName']}", BindFailure.DUPLICATE)
            meta.setdefault("annotations", {})[ann.POD_ALLOCATION] = ann.encode_allocation(alloc)
            pod.setdefault("spec", {})["nodeName"] = alloc.node
            priority = pod["spec"].get("priority")
            labels = meta.get("labels") or {}
        if self._state is not None:  # what preemption reads of a bound pod, as the kube watch records it
            self._state.set_pod_meta(
                alloc.key,
                alloc.uid,
                priority if isinstance(priority, int) else 0,
                {str(k): str(v) for k, v in labels.items()},
            )

    def _beat(self) -> None:
        assert self._every
        while not self._stop.wait(self._every):
            self.heartbeat()
            self.reload_quota_file()
