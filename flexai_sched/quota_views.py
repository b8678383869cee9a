"""vGPU quotas over REST (``/v1/quotas``) and in /metrics: limits, usage and member namespaces.

Its own router, so the quota edge does not touch the extender verbs' module: ``install``
adds the routes and the Prometheus collector to an app.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, FastAPI, HTTPException
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel

from flexai_core import resources as res

from .quota import QuotaBook, QuotaStatus

_GIB = 1024


class QuotaAmounts(BaseModel):
    """Amounts by resource name: vGPUs, card-% summed over vGPUs, GiB summed over vGPUs."""

    vgpus: int | None
    cores: int | None
    memory_gib: float | None


class QuotaView(BaseModel):
    name: str
    source: str  # namespace/ConfigMap that declares it
    namespace: str | None  # the one namespace, or None for a group
    namespace_selector: dict[str, str] | None  # matchLabels of a group
    namespaces: list[str]  # the namespaces it counts (a group: those whose labels match now)
    hard: QuotaAmounts  # None: not limited
    used: QuotaAmounts
    used_memory_mib: int


class QuotaNotDeclared(BaseModel):
    """404: why."""

    detail: str


class QuotaList(BaseModel):
    quotas: list[QuotaView]
    errors: dict[str, str]  # source -> why its quotas are not applied


def quota_view(s: QuotaStatus) -> QuotaView:
    q = s.quota
    return QuotaView(
        name=q.name,
        source=q.source,
        namespace=q.namespace,
        namespace_selector=dict(q.selector) if q.selector is not None else None,
        namespaces=list(s.namespaces),
        hard=QuotaAmounts(vgpus=q.vgpus, cores=q.cores, memory_gib=q.memory_gib),
        used=QuotaAmounts(vgpus=s.used.vgpus, cores=s.used.cores, memory_gib=round(s.used.memory_mib / _GIB, 3)),
        used_memory_mib=s.used.memory_mib,
    )


def router(book: QuotaBook) -> APIRouter:
    r = APIRouter(tags=["quotas"])

    @r.get("/v1/quotas", response_model=QuotaList)
    def list_quotas() -> QuotaList:
        return QuotaList(quotas=[quota_view(s) for s in book.status()], errors=book.errors())

    @r.get(
        "/v1/quotas/{name}",
        response_model=QuotaView,
        responses={404: {"model": QuotaNotDeclared, "description": "No quota of that name is declared"}},
    )
    def get_quota(name: str) -> QuotaView:
        for s in book.status():
            if s.quota.name == name:
                return quota_view(s)
        raise HTTPException(404, f"quota {name!r}: not declared")

    return r


class QuotaCollector(Collector):
    """flexai_quota_hard / flexai_quota_used {quota, resource}; memory in GiB."""

    def __init__(self, book: QuotaBook) -> None:
        self._book = book

    def collect(self) -> Iterator[GaugeMetricFamily]:
        hard = GaugeMetricFamily(
            "flexai_quota_hard",
            "vGPU quota limit (vGPUs; card-% or GiB summed over vGPUs)",
            labels=["quota", "resource"],
        )
        used = GaugeMetricFamily(
            "flexai_quota_used",
            "vGPU quota usage (vGPUs; card-% or GiB summed over vGPUs)",
            labels=["quota", "resource"],
        )
        for s in self._book.status():
            q = s.quota
            for name, limit, value in (
                (res.VGPU_NUMBER, q.vgpus, s.used.vgpus),
                (res.VGPU_CORES, q.cores, s.used.cores),
                (res.VGPU_MEMORY, q.memory_gib, s.used.memory_mib / _GIB),
            ):
                if limit is not None:
                    hard.add_metric([q.name, name], limit)
                used.add_metric([q.name, name], value)
        yield from (hard, used)


def install(app: FastAPI, book: QuotaBook, registry: CollectorRegistry) -> None:
    app.include_router(router(book))
    registry.register(QuotaCollector(book))
