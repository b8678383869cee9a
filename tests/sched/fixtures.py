"""Builders for pods and nodes shaped exactly like the Kubernetes JSON the extender receives."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flexai_core import resources as res
from flexai_core.model import Card, NodeInventory

H200_MIB = 143771


def node(
    name: str,
    cards: int = 8,
    memory_mib: int = H200_MIB,
    model: str = "NVIDIA H200",
    max_vgpus: int = 5,
    heartbeat: datetime | None = None,
) -> NodeInventory:
    return NodeInventory(
        name,
        tuple(Card(i, f"GPU-{name}-{i}", model, memory_mib, max_vgpus) for i in range(cards)),
        heartbeat or datetime.now(UTC),
    )


def limits(
    number: int | None = None, cores: int | None = None, memory_gib: int | None = None, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if number is not None:
        out[res.VGPU_NUMBER] = str(number)
    if cores is not None:
        out[res.VGPU_CORES] = str(cores)
    if memory_gib is not None:
        out[res.VGPU_MEMORY] = str(memory_gib)
    out.update(extra)
    return out


def pod(
    name: str,
    *containers: dict[str, Any],
    init: tuple[dict[str, Any], ...] = (),
    uid: str | None = None,
    namespace: str = "default",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``containers`` are limit dicts (from ``limits``) or full container dicts."""

    def container(i: int, c: dict[str, Any], prefix: str) -> dict[str, Any]:
        if "resources" in c or "name" in c:
            return c
        return {"name": f"{prefix}{i}", "image": "x", "resources": {"limits": c}}

    spec: dict[str, Any] = {"containers": [container(i, c, "c") for i, c in enumerate(containers)]}
    if init:
        spec["initContainers"] = [container(i, c, "init") for i, c in enumerate(init)]
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}"}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


class Ticks:
    """A budget clock moving one unit a read: ``until=ticks() + n`` runs out after n reads
    (a budget of 0 has run out at the second read)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t
