"""A pod bound to this node, as the agent needs to see it.

``BoundPod.parse`` reads a pod's JSON once: its vGPU containers in the order the kubelet
admits them (init containers, then app containers, each in spec order: the kubelet calls
Allocate in that order), its allocation (decoded by ``flexai_core.annotations``), and
the facts that order admissions. A pod whose request or allocation is missing,
malformed, or is not exactly what the pod asked for on this node's cards
(``flexai_core.allocation_check``: the annotation is on an object a tenant may write)
gets ``error`` set instead of an allocation: it is still listed, so that Allocate can
answer *its* admission with that message rather than hand it someone else's slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flexai_core import annotations as ann
from flexai_core.allocation_check import check_allocation
from flexai_core.model import Allocation, Card, Slice
from flexai_core.requests import BOUND_RULES, RequestError, parse_pod

__all__ = ["BoundPod", "GpuContainer"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class GpuContainer:
    name: str
    vgpus: int
    slices: tuple[Slice, ...] = ()


@dataclass(frozen=True, slots=True)
class BoundPod:
    namespace: str
    name: str
    uid: str
    containers: tuple[GpuContainer, ...]  # vGPU containers only, in kubelet admission order
    allocation: Allocation | None
    error: str | None  # why this pod cannot be given slices (None when allocation is set)
    created: datetime
    bound: datetime | None  # PodScheduled's transition time: when the Binding was written
    resource_version: int | None
    terminal: bool  # finished (Succeeded/Failed): holds nothing
    deleting: bool  # being deleted: still holds its slices until gone, but is never admitted
    seen_by_kubelet: bool  # it reported container statuses: its admission is over

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def admission_order(self) -> tuple[datetime, float, datetime, str]:
        """The kubelet admits pods in the order they reach it, i.e. in bind order. The bind
        time has one-second resolution; within a second, the resourceVersion of the bind
        (the last write before the kubelet's own) orders them as the kubelet's watch did."""
        rv = float("inf") if self.resource_version is None else float(self.resource_version)
        return (self.bound or self.created, rv, self.created, self.uid)

    @staticmethod
    def parse(pod: Mapping[str, Any], node: str, cards: Sequence[Card] | None = None) -> BoundPod | None:
        """None for pods that ask for no vGPU (the agent ignores them). ``cards``: this
        node's cards, which the allocation must name; None only to read pods for display."""
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        namespace = str(meta.get("namespace") or "default")
        name = str(meta.get("name") or "")
        uid = str(meta.get("uid") or "")
        error: str | None = None
        try:
            request = parse_pod(pod, BOUND_RULES)
        except RequestError as e:
            request = None
            error = f"pod {namespace}/{name}: invalid vGPU request: {e}"
        if request is not None and not request.wants_gpu:
            return None
        by_name = {c.name: c.vgpus for c in (*request.init_containers, *request.containers)} if request else {}
        order = [str(c.get("name")) for key in ("initContainers", "containers") for c in _list(pod.get("spec"), key)]
        allocation = None
        if request is not None:
            allocation, error = _allocation(meta, namespace, name, uid)
        if request is not None and allocation is not None:
            problems = check_allocation(request, allocation, cards, node)
            if problems:
                error = f"pod {namespace}/{name}: {ann.POD_ALLOCATION} is not what the pod asks for: " + "; ".join(
                    map(str, problems)
                )
        containers = tuple(
            GpuContainer(
                cname, by_name[cname], tuple(s for s in allocation.slices if s.container == cname) if allocation else ()
            )
            for cname in order
            if by_name.get(cname)
        )
        phase = status.get("phase")
        return BoundPod(
            namespace=namespace,
            name=name,
            uid=uid,
            containers=tuple(containers),
            allocation=allocation if error is None else None,
            error=error,
            created=_time(meta.get("creationTimestamp")) or _EPOCH,
            bound=_bind_time(status),
            resource_version=_int(meta.get("resourceVersion")),
            terminal=phase in ("Succeeded", "Failed"),
            deleting=bool(meta.get("deletionTimestamp")),
            seen_by_kubelet=_seen_by_kubelet(status),
        )


def _allocation(meta: Mapping[str, Any], namespace: str, name: str, uid: str) -> tuple[Allocation | None, str | None]:
    text = (meta.get("annotations") or {}).get(ann.POD_ALLOCATION)
    if text is None:
        return None, f"pod {namespace}/{name}: no {ann.POD_ALLOCATION} annotation (was it scheduled by flexai-sched?)"
    try:
        return ann.decode_allocation(namespace, name, uid, text), None
    except ann.EncodingError as e:
        return None, f"pod {namespace}/{name}: malformed allocation: {e}"


def _list(spec: object, key: str) -> list[Mapping[str, Any]]:
    items = spec.get(key) if isinstance(spec, Mapping) else None
    return [c for c in items or [] if isinstance(c, Mapping)] if isinstance(items, list) else []


def _bind_time(status: Mapping[str, Any]) -> datetime | None:
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "PodScheduled" and cond.get("status") == "True":
            return _time(cond.get("lastTransitionTime"))
    return None


def _seen_by_kubelet(status: Mapping[str, Any]) -> bool:
    # The kubelet writes container statuses only once a pod's worker runs, after admission.
    return bool(status.get("initContainerStatuses") or status.get("containerStatuses"))


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return ann.parse_time(value)
    except ValueError:
        return None


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None
