"""Fakes for the node agent's edges: the Kubernetes API and pods as the scheduler leaves them."""

from __future__ import annotations

import copy
import itertools
import threading
from typing import Any

from flexai_core import annotations as ann
from flexai_core import resources as res
from flexai_core.model import Allocation, Card, Slice

CARDS = (
    Card(0, "GPU-aaaa", "NVIDIA H200", 143771, 5, numa=0),
    Card(1, "GPU-bbbb", "NVIDIA H200", 143771, 5, numa=1),
)
_rv = itertools.count(100)


class FakeNodeApi:
    """``NodeApi`` over dicts. Pods get increasing resourceVersions, as the API server gives."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self.pods: dict[str, dict[str, Any]] = {}
        self.node_annotations: dict[str, dict[str, str]] = {}
        self.patches = 0
        self.events: list[tuple[str, str, str, str, str]] = []  # (namespace, name, uid, reason, message)
        self.fail: Exception | None = None  # raised by the next call, once
        self.event_error: Exception | None = None  # raised by every warn_pod

    def add(self, pod: dict[str, Any]) -> dict[str, Any]:
        pod = copy.deepcopy(pod)
        pod["metadata"]["resourceVersion"] = str(next(_rv))
        with self._mu:
            self.pods[pod["metadata"]["uid"]] = pod
        return pod

    def delete(self, uid: str) -> None:
        with self._mu:
            del self.pods[uid]

    def list_pods(self, node: str) -> list[dict[str, Any]]:
        self._maybe_fail()
        with self._mu:
            return [copy.deepcopy(p) for p in self.pods.values() if p["spec"].get("nodeName") == node]

    def patch_node_annotations(self, node: str, annotations: dict[str, str]) -> None:
        self._maybe_fail()
        with self._mu:
            self.node_annotations.setdefault(node, {}).update(annotations)
            self.patches += 1

    def warn_pod(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        self._maybe_fail()
        if self.event_error is not None:
            raise self.event_error
        with self._mu:
            self.events.append((namespace, name, uid, reason, message))

    def _maybe_fail(self) -> None:
        if self.fail is not None:
            e, self.fail = self.fail, None
            raise e


def container(name: str, vgpus: int, cores: int | None = None, memory_gib: int | None = None) -> dict[str, Any]:
    limits: dict[str, str] = {res.VGPU_NUMBER: str(vgpus)} if vgpus else {}
    if cores is not None:
        limits[res.VGPU_CORES] = str(cores)
    if memory_gib is not None:
        limits[res.VGPU_MEMORY] = str(memory_gib)
    return {"name": name, "image": "x", "resources": {"limits": limits}}


def bound_pod(
    name: str,
    uid: str,
    containers: list[dict[str, Any]],
    slices: list[Slice] | None,
    node: str = "gpu-1",
    bound_at: str = "2026-11-29T10:00:00Z",
    created_at: str = "2026-11-29T09:59:59Z",
    allocation_text: str | None = None,
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pod as flexai-sched leaves it: allocation annotation, bound (PodScheduled) to ``node``."""
    annotations = {}
    if allocation_text is not None:
        annotations[ann.POD_ALLOCATION] = allocation_text
    elif slices is not None:
        annotations[ann.POD_ALLOCATION] = ann.encode_allocation(
            Allocation.build("default", name, uid, node, tuple(slices))
        )
    spec: dict[str, Any] = {"nodeName": node, "containers": containers}
    if init_containers:
        spec["initContainers"] = init_containers
    return {
        "metadata": {
            "namespace": "default",
            "name": name,
            "uid": uid,
            "creationTimestamp": created_at,
            "annotations": annotations,
        },
        "spec": spec,
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": bound_at}],
        },
    }


def slice_on(card: Card, container: str, cores: int, memory_mib: int, init: bool = False) -> Slice:
    return Slice(container, card.index, card.uuid, cores, memory_mib, init)
