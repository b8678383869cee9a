"""Helpers of the Kubernetes-backend e2e tests: GPU nodes, vGPU pods, and the capacity check.

The capacity check reads every pod's allocation annotation from the apiserver, never
the extender's own view: it is what the device plugins would enforce on the nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from flexai_core import annotations as ann
from flexai_core import resources as res
from flexai_core.model import FULL_CORES, Allocation, Card, CardUsage

from .controlplane import ControlPlane, flexai_sched_extender, make_fake_node, wait_until

NS = "default"
GIB = 1024


def cards(
    n: int, model: str = "NVIDIA H200", memory_gib: int = 80, max_vgpus: int = 5, prefix: str = "GPU"
) -> tuple[Card, ...]:
    return tuple(Card(i, f"{prefix}-{i}", model, memory_gib * GIB, max_vgpus) for i in range(n))


def gpu_node(
    core: k8s.CoreV1Api,
    name: str,
    node_cards: Sequence[Card],
    heartbeat: datetime | None = None,
    wait_ready: float = 30.0,
) -> None:
    """A kwok node annotated exactly as flexai_node writes it."""
    text = ann.encode_inventory(tuple(node_cards), heartbeat or datetime.now(UTC))
    make_fake_node(core, name, annotations={ann.NODE_INVENTORY: text}, wait_ready=wait_ready)


def set_inventory(core: k8s.CoreV1Api, name: str, text: str | None) -> None:
    core.patch_node(name, {"metadata": {"annotations": {ann.NODE_INVENTORY: text}}})


def vgpu_limits(number: int, cores: int | None = None, memory_gib: int | None = None) -> dict[str, str]:
    limits = {res.VGPU_NUMBER: str(number)}
    if cores is not None:
        limits[res.VGPU_CORES] = str(cores)
    if memory_gib is not None:
        limits[res.VGPU_MEMORY] = str(memory_gib)
    return limits


def pod_body(
    name: str,
    containers: Mapping[str, Mapping[str, str]],
    init_containers: Mapping[str, Mapping[str, str]] | None = None,
    annotations: Mapping[str, str] | None = None,
    scheduler: str | None = None,
) -> k8s.V1Pod:
    """A pod left for the scheduler (``scheduler``: another name, that none serves);
    container name -> resource limits."""

    def one(cname: str, limits: Mapping[str, str]) -> k8s.V1Container:
        return k8s.V1Container(
            name=cname,
            image="registry.invalid/fake:1",
            resources=k8s.V1ResourceRequirements(limits=dict(limits) or None),
        )

    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, annotations=dict(annotations) if annotations else None),
        spec=k8s.V1PodSpec(
            containers=[one(n, lim) for n, lim in containers.items()],
            init_containers=[one(n, lim) for n, lim in (init_containers or {}).items()] or None,
            scheduler_name=scheduler,
            termination_grace_period_seconds=0,
        ),
    )


def vgpu_pod(
    core: k8s.CoreV1Api,
    name: str,
    number: int = 1,
    cores: int | None = None,
    memory_gib: int | None = None,
    annotations: Mapping[str, str] | None = None,
    scheduler: str | None = None,
) -> str:
    """A one-container vGPU pod; returns its UID."""
    pod: k8s.V1Pod = core.create_namespaced_pod(
        NS,
        pod_body(name, {"main": vgpu_limits(number, cores, memory_gib)}, annotations=annotations, scheduler=scheduler),
    )
    assert pod.metadata is not None and pod.metadata.uid is not None
    return pod.metadata.uid


# ---------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class PodView:
    name: str
    uid: str
    node: str | None
    phase: str | None
    allocation: Allocation | None


def pods(core: k8s.CoreV1Api) -> dict[str, PodView]:
    """Every pod of the namespace as the apiserver has it, allocation decoded."""
    out = {}
    for p in core.list_namespaced_pod(NS).items:
        meta, spec, status = p.metadata, p.spec, p.status
        assert meta is not None and meta.name is not None and spec is not None
        text = (meta.annotations or {}).get(ann.POD_ALLOCATION)
        alloc = ann.decode_allocation(NS, meta.name, meta.uid or "", text) if text else None
        out[meta.name] = PodView(meta.name, meta.uid or "", spec.node_name, status.phase if status else None, alloc)
    return out


def bound(core: k8s.CoreV1Api) -> dict[str, PodView]:
    return {n: p for n, p in pods(core).items() if p.node}


def wait_bound(core: k8s.CoreV1Api, names: Iterable[str], timeout: float = 60.0) -> dict[str, PodView]:
    want = set(names)

    def done() -> dict[str, PodView] | None:
        now = bound(core)
        return now if want <= set(now) else None

    result: dict[str, PodView] = wait_until(done, timeout, f"pods bound: {sorted(want)[:5]}...", interval=0.25)
    return result


def assert_within_capacity(
    core: k8s.CoreV1Api, inventory: Mapping[str, Sequence[Card]]
) -> dict[tuple[str, int], CardUsage]:
    """No card over 100% cores, over its memory or over its vGPU count; exclusive cards alone.

    Every bound vGPU pod must carry an allocation naming its own node and real cards.
    Returns the usage per (node, card index).
    """
    usage: dict[tuple[str, int], CardUsage] = {}
    holders: dict[tuple[str, int], list[tuple[str, CardUsage]]] = {}
    for p in pods(core).values():
        if p.allocation is None:
            continue
        a = p.allocation
        assert p.node == a.node, f"pod {p.name}: bound to {p.node}, allocation names {a.node}"
        node_cards = {c.index: c for c in inventory[a.node]}
        for s in a.slices:
            card = node_cards.get(s.card_index)
            assert card is not None and card.uuid == s.card_uuid, f"pod {p.name}: slice on unknown card {s}"
        for index, held in a.card_usage.items():
            usage[(a.node, index)] = usage.get((a.node, index), CardUsage()).plus(held)
            holders.setdefault((a.node, index), []).append((p.name, held))
    for (node, index), u in usage.items():
        card = {c.index: c for c in inventory[node]}[index]
        who = holders[(node, index)]
        assert u.cores <= FULL_CORES, f"{node} card {index}: {u.cores}% cores: {who}"
        assert u.memory_mib <= card.memory_mib - card.used_outside_mib, (
            f"{node} card {index}: {u.memory_mib} MiB: {who}"
        )
        assert u.vgpus <= card.max_vgpus, f"{node} card {index}: {u.vgpus} vGPUs: {who}"
        if any(h.cores >= FULL_CORES for _, h in who):
            assert len(who) == 1, f"{node} card {index}: an exclusive slice shares the card: {who}"
    return usage


def failed_scheduling_messages(core: k8s.CoreV1Api, pod: str) -> list[str]:
    events = core.list_namespaced_event(NS, field_selector=f"involvedObject.name={pod}").items
    return [e.message or "" for e in events if e.reason == "FailedScheduling"]


def delete_pods(core: k8s.CoreV1Api, names: Iterable[str]) -> None:
    for name in names:
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(name, NS, grace_period_seconds=0)


# ---------------------------------------------------------------------------- the extender


def extender_get(plane: ControlPlane, path: str) -> object:
    return json.loads(extender_text(plane, path))


def extender_text(plane: ControlPlane, path: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(plane.extender_url + path, timeout=5) as resp:
        return resp.read().decode()  # type: ignore[no-any-return]


@contextlib.contextmanager
def extender_running(plane: ControlPlane, *args: str, node_cache_capable: bool | None = None) -> Iterator[ControlPlane]:
    """Our extender (Kubernetes backend) with ``args``, and kube-scheduler using it;
    afterwards the plane is left as the session expects it: no extender."""
    # /readyz, not /healthz: ready means the first lists are applied.
    plane.start_extender(dataclasses.replace(flexai_sched_extender(*args), health_path="/readyz"))
    try:
        plane.restart_scheduler(with_extender=True, node_cache_capable=node_cache_capable)
        yield plane
    finally:
        plane.kill_extender()
        plane.restart_scheduler(with_extender=False)


def set_phase(core_api: k8s.CoreV1Api, name: str, phase: str) -> None:
    """The pod's status.phase, as its kubelet would write it. A merge patch, not read-modify-
    replace: KWOK updates bound pods' status meanwhile, and a replace then gets 409 Conflict.
    KWOK takes a bound pod to Running on its own schedule and would overwrite a phase written
    before that: wait for it (briefly: a node KWOK does not manage never does), then write
    until the phase reads back."""

    def read() -> str | None:
        return core_api.read_namespaced_pod(name, NS).status.phase

    with contextlib.suppress(TimeoutError):
        wait_until(lambda: read() in ("Running", phase), 5, f"KWOK to start {name}", interval=0.1)
    for _ in range(3):
        core_api.patch_namespaced_pod_status(name, NS, {"status": {"phase": phase}})
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: read() == phase, 2, f"{name} {phase}", interval=0.1)
            return
    raise AssertionError(f"pod {name}: phase {phase} did not hold (now {read()})")
