"""Prometheus metrics of the scheduler: call latencies, bind failures, per-card allocation,
and the allocations the cluster shows that the scheduler does not count (by reason)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from flexai_core.allocation_check import REASONS

from .state import ClusterState

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, state: ClusterState) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "flexai_extender_request_seconds",
            "Time to answer one kube-scheduler extender call",
            ["verb"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.bind_failures = Counter(
            "flexai_bind_failures", "Binds that failed (the pod is requeued)", ["reason"], registry=self.registry
        )
        self.binds = Counter("flexai_binds", "Pods bound through the extender", registry=self.registry)
        self.registry.register(_CardCollector(state))
        self.registry.register(_RejectedCollector(state))


class _CardCollector(Collector):
    def __init__(self, state: ClusterState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["node", "card", "uuid", "model"]
        cores = GaugeMetricFamily(
            "flexai_card_allocated_cores_percent", "Cores allocated on a card (percent)", labels=labels
        )
        mem = GaugeMetricFamily("flexai_card_allocated_memory_mib", "Memory allocated on a card (MiB)", labels=labels)
        total = GaugeMetricFamily("flexai_card_memory_mib", "Memory of a card (MiB)", labels=labels)
        vgpus = GaugeMetricFamily("flexai_card_vgpus_used", "vGPU slices on a card", labels=labels)
        for node in self._state.nodes():
            for c, u in zip(node.cards, node.usage, strict=True):
                lv = [node.name, str(c.index), c.uuid, c.model]
                cores.add_metric(lv, u.cores)
                mem.add_metric(lv, u.memory_mib)
                total.add_metric(lv, c.memory_mib)
                vgpus.add_metric(lv, u.vgpus)
        yield from (cores, mem, total, vgpus)


class _RejectedCollector(Collector):
    def __init__(self, state: ClusterState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = GaugeMetricFamily(
            "flexai_rejected_allocations",
            "Bound pods whose allocation annotation is not counted (not what the pod asks for, malformed, changed)",
            labels=["reason"],
        )
        ever = CounterMetricFamily(
            "flexai_allocation_rejections", "Allocation annotations found not counted, since start", labels=["reason"]
        )
        counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        for r in self._state.rejected():
            counts[r.reason] = counts.get(r.reason, 0) + 1
        total = dict.fromkeys(REASONS, 0) | self._state.rejections()
        for reason in sorted(counts):
            now.add_metric([reason], counts[reason])
        for reason in sorted(total):
            ever.add_metric([reason], total[reason])
        yield from (now, ever)
