"""Read-only REST views of the scheduler's state (what operators curl): the models, and the
router of ``/v1/nodes``, ``/v1/nodes/{name}``, ``/v1/allocations``, ``/v1/pods/{ns}/{name}``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from flexai_core.model import FULL_CORES, Allocation

from .allocator import free_memory
from .state import AllocState, ClusterState, NodeState


class SliceView(BaseModel):
    pod: str
    container: str
    cores: int
    memory_mib: int
    init: bool
    state: str


class CardView(BaseModel):
    index: int
    uuid: str
    model: str
    healthy: bool
    numa: int | None
    cores_total: int
    cores_allocated: int
    cores_free: int
    memory_mib_total: int
    memory_mib_allocated: int
    memory_mib_free: int
    memory_mib_used_outside: int
    vgpus_total: int
    vgpus_used: int
    slices: list[SliceView]


class HostView(BaseModel):
    """The node's host as the scheduler counts it: allocatable, and what bound pods request."""

    cpu_milli_allocatable: int
    cpu_milli_requested: int
    cpu_milli_free: int
    memory_mib_allocatable: int
    memory_mib_requested: int
    memory_mib_free: int


class NodeSummary(BaseModel):
    name: str
    heartbeat: datetime | None
    heartbeat_age_s: float | None
    cards: int
    healthy_cards: int
    cores_allocated_pct: float
    memory_allocated_pct: float
    pods: int
    host: HostView | None = None  # None: the node's allocatable CPU/memory is not known (scores read cards only)


class NodeDetail(NodeSummary):
    card_details: list[CardView]


class AllocationView(BaseModel):
    namespace: str
    name: str
    uid: str
    node: str
    state: str
    slices: list[dict[str, object]]


class Refused(BaseModel):
    """404, 413, 503: why."""

    detail: str


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Refused, "description": "Not known to the scheduler"}}


def router(state: ClusterState) -> APIRouter:
    r = APIRouter()

    @r.get("/v1/nodes", response_model=list[NodeSummary], tags=["views"])
    def list_nodes() -> list[NodeSummary]:
        return [node_summary(n) for n in sorted(state.nodes(), key=lambda n: n.name)]

    @r.get("/v1/nodes/{name}", response_model=NodeDetail, responses=NOT_FOUND, tags=["views"])
    def get_node(name: str) -> NodeDetail:
        node = state.node(name)
        if node is None:
            raise HTTPException(404, f"node {name!r}: not known to the scheduler")
        return node_detail(node, state)

    @r.get("/v1/allocations", response_model=list[AllocationView], tags=["views"])
    def list_allocations() -> list[AllocationView]:
        return [allocation_view(a, st) for a, st in sorted(state.allocations(), key=lambda x: x[0].key)]

    @r.get("/v1/pods/{namespace}/{name}", response_model=AllocationView, responses=NOT_FOUND, tags=["views"])
    def get_pod(namespace: str, name: str) -> AllocationView:
        key = f"{namespace}/{name}"
        a = state.allocation(key)
        if a is None:
            raise HTTPException(404, f"pod {key}: has no vGPU allocation")
        return allocation_view(a, state.state_of(key))

    return r


def node_summary(node: NodeState) -> NodeSummary:
    total_cores = FULL_CORES * len(node.cards) or 1
    total_mem = sum(c.memory_mib for c in node.cards) or 1
    hb = node.heartbeat
    return NodeSummary(
        name=node.name,
        heartbeat=hb,
        heartbeat_age_s=(datetime.now(UTC) - hb).total_seconds() if hb else None,
        cards=len(node.cards),
        healthy_cards=sum(c.healthy for c in node.cards),
        cores_allocated_pct=round(100 * sum(u.cores for u in node.allocated) / total_cores, 2),
        memory_allocated_pct=round(100 * sum(u.memory_mib for u in node.allocated) / total_mem, 2),
        pods=len(node.pods),
        host=None
        if node.host is None
        else HostView(
            cpu_milli_allocatable=node.host.cpu_milli,
            cpu_milli_requested=node.host.cpu_used,
            cpu_milli_free=node.host.cpu_free,
            memory_mib_allocatable=node.host.memory_mib,
            memory_mib_requested=node.host.memory_used,
            memory_mib_free=node.host.memory_free,
        ),
    )


def node_detail(node: NodeState, state: ClusterState) -> NodeDetail:
    slices: dict[int, list[SliceView]] = {}
    for a in node.pods.values():
        st = state.state_of(a.key) or AllocState.BOUND
        for s in a.slices:
            slices.setdefault(s.card_index, []).append(
                SliceView(
                    pod=a.key,
                    container=s.container,
                    cores=s.cores,
                    memory_mib=s.memory_mib,
                    init=s.init,
                    state=st.value,
                )
            )
    cards = [
        CardView(
            index=c.index,
            uuid=c.uuid,
            model=c.model,
            healthy=c.healthy,
            numa=c.numa,
            cores_total=FULL_CORES,
            cores_allocated=u.cores,
            cores_free=max(0, FULL_CORES - u.cores),
            memory_mib_total=c.memory_mib,
            memory_mib_allocated=u.memory_mib,
            memory_mib_free=max(0, free_memory(c, u)),
            memory_mib_used_outside=c.used_outside_mib,
            vgpus_total=c.max_vgpus,
            vgpus_used=u.vgpus,
            slices=slices.get(c.index, []),
        )
        for c, u in zip(node.cards, node.allocated, strict=True)
    ]
    return NodeDetail(**node_summary(node).model_dump(), card_details=cards)


def allocation_view(a: Allocation, st: AllocState | None) -> AllocationView:
    return AllocationView(
        namespace=a.namespace,
        name=a.name,
        uid=a.uid,
        node=a.node,
        state=(st or AllocState.BOUND).value,
        slices=[
            {
                "container": s.container,
                "card": s.card_index,
                "uuid": s.card_uuid,
                "cores": s.cores,
                "memory_mib": s.memory_mib,
                "init": s.init,
            }
            for s in a.slices
        ],
    )
