"""The agent's Prometheus metrics, from the latest snapshot the agent took.

Per card (labels node, uuid): utilisation, memory used and total, what our pods hold
(cores, memory) and health. Per vGPU (labels node, uuid, namespace, pod, container):
its limits (from the pod's allocation) and its usage (from the hook's shared region in
the container's directory, through ``VgpuUsageReader``). A collector that renders the
snapshot on each scrape, so series of gone pods and cards vanish with them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .inventory import CardReading
from .pods import BoundPod
from .reporter import allocated_by_card

__all__ = ["AgentMetrics", "Snapshot", "VgpuUsage", "VgpuUsageReader"]

CARD_LABELS = ["node", "uuid"]
VGPU_LABELS = ["node", "uuid", "namespace", "pod", "container"]


@dataclass(frozen=True, slots=True)
class VgpuUsage:
    memory_used_mib: int
    utilisation_pct: float | None = None


class VgpuUsageReader(Protocol):
    def read(self, uid: str, container: str) -> Mapping[str, VgpuUsage]:
        """Card UUID -> usage of that container's vGPU on it; empty when unknown."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    node: str
    readings: tuple[CardReading, ...] = ()
    pods: tuple[BoundPod, ...] = ()
    usage: dict[tuple[str, str], Mapping[str, VgpuUsage]] = field(default_factory=dict)  # (uid, container)


class AgentMetrics(Collector):
    def __init__(self, node: str) -> None:
        self._mu = threading.Lock()
        self._snap = Snapshot(node)

    def update(self, snap: Snapshot) -> None:
        with self._mu:
            self._snap = snap

    def collect(self) -> Iterator[Metric]:
        with self._mu:
            s = self._snap
        yield from _cards(s)
        yield from _vgpus(s)


def _cards(s: Snapshot) -> Iterator[Metric]:
    util = GaugeMetricFamily("flexai_card_utilisation_percent", "GPU utilisation (NVML)", labels=CARD_LABELS)
    used = GaugeMetricFamily("flexai_card_memory_used_mib", "Card memory in use, by anyone (NVML)", labels=CARD_LABELS)
    total = GaugeMetricFamily("flexai_card_memory_total_mib", "Card memory", labels=CARD_LABELS)
    cores = GaugeMetricFamily("flexai_card_allocated_cores_percent", "Compute held by vGPU pods", labels=CARD_LABELS)
    mem = GaugeMetricFamily("flexai_card_allocated_memory_mib", "Memory held by vGPU pods", labels=CARD_LABELS)
    health = GaugeMetricFamily("flexai_card_healthy", "1 healthy, 0 unhealthy", labels=CARD_LABELS)
    allocated = allocated_by_card(s.pods)
    for r in s.readings:
        labels = [s.node, r.card.uuid]
        if r.utilisation_pct is not None:
            util.add_metric(labels, r.utilisation_pct)
        if r.memory_used_mib is not None:
            used.add_metric(labels, r.memory_used_mib)
        total.add_metric(labels, r.card.memory_mib)
        held = allocated.get(r.card.index)
        cores.add_metric(labels, held.cores if held else 0)
        mem.add_metric(labels, held.memory_mib if held else 0)
        health.add_metric(labels, 1 if r.card.healthy else 0)
    yield from (util, used, total, cores, mem, health)


def _vgpus(s: Snapshot) -> Iterator[Metric]:
    core_limit = GaugeMetricFamily("flexai_vgpu_cores_limit_percent", "vGPU compute limit", labels=VGPU_LABELS)
    mem_limit = GaugeMetricFamily("flexai_vgpu_memory_limit_mib", "vGPU memory limit", labels=VGPU_LABELS)
    mem_used = GaugeMetricFamily("flexai_vgpu_memory_used_mib", "vGPU memory in use (hook region)", labels=VGPU_LABELS)
    util = GaugeMetricFamily("flexai_vgpu_utilisation_percent", "vGPU compute use (hook region)", labels=VGPU_LABELS)
    for p in s.pods:
        if p.terminal or p.allocation is None:
            continue
        for c in p.containers:
            usage = s.usage.get((p.uid, c.name), {})
            for sl in c.slices:
                labels = [s.node, sl.card_uuid, p.namespace, p.name, c.name]
                core_limit.add_metric(labels, sl.cores)
                mem_limit.add_metric(labels, sl.memory_mib)
                u = usage.get(sl.card_uuid)
                if u is not None:
                    mem_used.add_metric(labels, u.memory_used_mib)
                    if u.utilisation_pct is not None:
                        util.add_metric(labels, u.utilisation_pct)
    yield from (core_limit, mem_limit, mem_used, util)
