"""Prometheus metrics of the scheduler: call latencies, bind failures, per-card allocation,
and the allocations the cluster shows that the scheduler does not count (by reason).

The per-card gauges (four per card: 160,000 samples at 5,000 nodes x 8 cards) are written
by ``CardText``, each node's lines rendered again only when its cards or usage change:
prometheus_client renders every sample on every scrape, 1.5 s of CPU holding the GIL at
that size, during which filter and prioritize wait (bench/results/extender-latency.md).
``Metrics.exposition`` is the registry's text followed by theirs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_float

from flexai_core.allocation_check import REASONS

from .state import ClusterState, NodeState

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
        self.deferred = Counter(
            "flexai_filter_deferred_names",
            "Names a bounded filter call left undecided (filter_budget_ms): answered 'not yet evaluated', "
            "or not considered for the best node",
            registry=self.registry,
        )
        self.registry.register(_RejectedCollector(state))
        self.cards = CardText(state)

    def exposition(self) -> bytes:
        """What /metrics serves: the registry's families, then the per-card gauges."""
        return generate_latest(self.registry) + self.cards.render()


_go_float = cast(Callable[[float], str], _untyped_go_float)  # a value as prometheus_client writes it
CARD_FAMILIES = (
    ("flexai_card_allocated_cores_percent", "Cores allocated on a card (percent)"),
    ("flexai_card_allocated_memory_mib", "Memory allocated on a card (MiB)"),
    ("flexai_card_memory_mib", "Memory of a card (MiB)"),
    ("flexai_card_vgpus_used", "vGPU slices on a card"),
)


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class CardText:
    """The per-card gauges in the text format, as prometheus_client would write them (labels
    sorted by name, values as Go floats), from a per-node cache of rendered lines."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        # Node name -> (its cards, its allocated usage, its lines per family); a node's cards and usage
        # tuples are replaced, never mutated, when they change (``ClusterState._rebuild``).
        self._lines: dict[str, tuple[object, object, tuple[str, ...]]] = {}
        self._mu = threading.Lock()  # two scrapes at once share the cache

    def render(self) -> bytes:
        parts: list[list[str]] = [[] for _ in CARD_FAMILIES]
        with self._mu:
            kept: dict[str, tuple[object, object, tuple[str, ...]]] = {}
            for node in self._state.nodes():
                hit = self._lines.get(node.name)
                if hit is None or hit[0] is not node.cards or hit[1] is not node.allocated:
                    hit = (node.cards, node.allocated, _node_lines(node))
                kept[node.name] = hit
                for part, text in zip(parts, hit[2], strict=True):
                    part.append(text)
            self._lines = kept  # nodes gone are dropped
        out: list[str] = []
        for (name, doc), part in zip(CARD_FAMILIES, parts, strict=True):
            out.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
            out.extend(part)
        return "".join(out).encode()


def _node_lines(node: NodeState) -> tuple[str, ...]:
    """The node's samples of each family in ``CARD_FAMILIES``, one string per family."""
    per: list[list[str]] = [[] for _ in CARD_FAMILIES]
    n = _label(node.name)
    for c, u in zip(node.cards, node.allocated, strict=True):
        labels = f'{{card="{c.index}",model="{_label(c.model)}",node="{n}",uuid="{_label(c.uuid)}"}}'
        for part, (name, _), value in zip(
            per, CARD_FAMILIES, (u.cores, u.memory_mib, c.memory_mib, u.vgpus), strict=True
        ):
            part.append(f"{name}{labels} {_go_float(value)}\n")
    return tuple("".join(p) for p in per)


class CardSamples(Collector):
    """The per-card gauges through prometheus_client's families, sample by sample: not served,
    the reference ``CardText`` is tested against byte for byte and the baseline
    bench/metrics_scrape.py times it against."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["node", "card", "uuid", "model"]
        families = [GaugeMetricFamily(name, doc, labels=labels) for name, doc in CARD_FAMILIES]
        for n in self._state.nodes():
            for c, u in zip(n.cards, n.allocated, strict=True):
                lv = [n.name, str(c.index), c.uuid, c.model]
                for family, value in zip(families, (u.cores, u.memory_mib, c.memory_mib, u.vgpus), strict=True):
                    family.add_metric(lv, value)
        yield from families

    def render(self) -> bytes:
        registry = CollectorRegistry()
        registry.register(self)
        return generate_latest(registry)


class ReservationCollector(Collector):
    """How binds met the reservations (``reserving``): on a node reserved for the pod, on
    another, or with none; and the reservations that ran out unbound."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self._counts()
        binds = CounterMetricFamily(
            "flexai_reserved_binds",
            "Successful binds by where the pod was reserved: there (as predicted), elsewhere, none",
            labels=["reservation"],
        )
        for outcome in ("there", "elsewhere", "none"):
            binds.add_metric([outcome], counts.get(outcome, 0))
        expired = CounterMetricFamily(
            "flexai_reservations_expired", "Reservations that ran out with no bind of their pod"
        )
        expired.add_metric([], counts.get("expired", 0))
        yield from (binds, expired)


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
