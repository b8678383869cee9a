"""Bounded filter calls (``Extender.filter_request(bounded=True)``, kube-scheduler's verb): new
verdicts for at most the budget, the other names deferred as "not yet evaluated", never as
"does not fit"; the table completed off the request path (``filling.Filler``).

The budget's clock is replaced by one that has always run out, so what a call decides is
fixed by the rule alone: at least ``min_decided`` names, and on until one fits.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient

from flexai_sched import dashboard
from flexai_sched.answers import NOT_EVALUATED
from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.fastpath import Hot
from flexai_sched.metrics import Metrics
from flexai_sched.state import ClusterState

from .fixtures import Ticks, limits, node, pod

NODES = 30


class Cluster:
    def __init__(self, nodes: int = NODES, least: int = 5, background: bool = False) -> None:
        self.state = ClusterState()
        inv = [node(f"n{i:02d}", 2) for i in range(nodes)]
        self.backend = MemoryBackend(inv, heartbeat_every=None)
        self.backend.start(self.state)
        self.ext = Extender(self.state, self.backend, Settings(filter_budget_ms=5, filter_answer="all"))
        self.ext.budget_clock = Ticks()
        self.ext.min_decided = least
        self.ext.filler.background = background
        self.names = [n.name for n in inv]
        self.serial = 0
        self.started: list[list[str]] = []  # the extender's own preemptions, by the names they were given
        self.ext.preempting.start = lambda req, names: self.started.append(list(names))  # type: ignore[method-assign]

    def fill(self, name: str) -> None:
        """Take both cards of ``name``."""
        self.serial += 1
        p = pod(f"full{self.serial}", limits(2, cores=100))
        self.backend.create_pod(p)
        self.ext.parse(p)
        self.ext.bind("default", f"full{self.serial}", f"uid-full{self.serial}", name)

    def reference(self, p: dict[str, Any]) -> tuple[list[str], dict[str, str], dict[str, str]]:
        """The node-by-node answer (no table, no budget)."""
        self.ext.tables = False
        try:
            got = self.ext.filter(p, self.names)
        finally:
            self.ext.tables = True
        return got.fits, got.failed, got.unresolvable


def whole(name: str, priority: int = 0) -> dict[str, Any]:
    p = pod(name, limits(1, cores=100))
    p["spec"]["priority"] = priority
    return p


def test_a_bounded_call_defers_once_a_name_fits_and_the_fill_completes_the_table() -> None:
    c = Cluster()
    hot = Hot(c.ext, Metrics(c.state), limit=64 << 20)
    p = pod("a", limits(1, cores=20, memory_gib=3))
    body = msgspec.json.encode({"Pod": p, "NodeNames": c.names})
    reply = msgspec.json.decode(hot("/filter", body))  # type: ignore[arg-type]
    assert reply["NodeNames"] == c.names[:5]  # the least a call decides; every empty node fits
    assert reply["FailedNodes"] == {}  # deferred names are never "does not fit"
    assert reply["FailedAndUnresolvableNodes"] == dict.fromkeys(c.names[5:], NOT_EVALUATED)
    assert c.ext.filler.pending() == 1
    c.ext.filler.drain()
    (table,) = c.ext.caches.tables.values()
    assert set(table.verdicts) == set(c.names) and set(table.scores) == set(c.names)
    reply = msgspec.json.decode(hot("/filter", body))  # type: ignore[arg-type]
    fits, failed, unresolvable = c.reference(p)
    assert (reply["NodeNames"], reply["FailedNodes"], reply["FailedAndUnresolvableNodes"]) == (
        fits,
        failed,
        unresolvable,
    )


@pytest.mark.parametrize("where", [0, 1, 4, 17, NODES - 1])
def test_a_pod_is_never_refused_while_a_node_fits(where: int) -> None:
    c = Cluster(least=1)
    for i, name in enumerate(c.names):
        if i != where:
            c.fill(name)
    got = c.ext.filter(whole("hi", priority=1000), c.names, bounded=True)
    assert got.fits == [c.names[where]]  # decided past the budget until the one fitting node came
    assert not set(got.deferred) & set(got.failed)
    assert not c.started  # a pod that fits somewhere starts no preemption of ours


def test_when_nothing_fits_every_name_is_decided_and_preemption_sees_every_node() -> None:
    c = Cluster(least=1)
    for name in c.names:
        c.fill(name)
    got = c.ext.filter(whole("hi", priority=1000), c.names, bounded=True)
    assert not got.fits and not got.deferred
    assert sorted(got.failed) == c.names  # real reasons: kube-scheduler's preemption may act on each
    assert NOT_EVALUATED not in got.failed.values() and NOT_EVALUATED not in got.unresolvable.values()
    assert c.started == [list(got.failed)]


def test_deferred_names_never_reach_explain_or_an_unbounded_call() -> None:
    c = Cluster(least=1)
    p = pod("e", limits(1, cores=50))
    for outcome in (c.ext.filter(p, c.names), c.ext.filter_request(c.ext.parse(p), c.names)):
        assert sorted(outcome.fits) == c.names and not outcome.deferred
    q = pod("f", limits(1, cores=55))  # a shape whose table is empty
    why = dashboard.explain_json(c.ext, q)
    assert all(n["fits"] and NOT_EVALUATED != n["reason"] for n in why["nodes"])
    assert len(why["nodes"]) == NODES


def test_bounded_calls_start_where_the_last_one_stopped() -> None:
    c = Cluster(least=5)
    first = c.ext.filter(pod("a", limits(1, cores=10)), c.names, bounded=True)
    second = c.ext.filter(pod("b", limits(1, cores=15)), c.names, bounded=True)
    assert first.fits == c.names[:5] and second.fits == c.names[5:10]


def test_a_deferred_name_is_decided_by_the_next_call_when_the_fill_has_not_run() -> None:
    c = Cluster(least=5)
    p = pod("a", limits(1, cores=10))
    decided: set[str] = set()
    for _ in range(NODES // 5):
        got = c.ext.filter(p, c.names, bounded=True)
        assert len(got.fits) == len(decided) + 5  # the table keeps what earlier calls decided
        decided = set(got.fits)
    assert decided == set(c.names)
    assert not c.ext.filter(p, c.names, bounded=True).deferred


def test_the_filler_runs_between_calls_and_never_during_one() -> None:
    c = Cluster(background=True)
    p = pod("a", limits(1, cores=20))
    with c.ext.filler.call():
        got = c.ext.filter(p, c.names, bounded=True)
        assert got.deferred
        time.sleep(0.2)
        assert c.ext.filler.pending() == 1  # waits for the call to end
        (table,) = c.ext.caches.tables.values()
        assert len(table.verdicts) == 5
    assert c.ext.filler.wait_idle(10)
    assert set(table.verdicts) == set(c.names)
    assert c.ext.filter(p, c.names, bounded=True).fits == c.names


def test_the_fill_decides_from_the_state_as_it_is_when_it_runs() -> None:
    c = Cluster(least=1)
    p = whole("w")
    got = c.ext.filter(p, c.names, bounded=True)
    assert got.fits == c.names[:1]
    c.fill(c.names[3])  # changes after the call: the fill must not answer from before
    c.ext.filler.drain()
    got = c.ext.filter(p, c.names, bounded=True)
    assert got.fits == [n for n in c.names if n != c.names[3]]
    assert got.failed == c.reference(p)[1]


def test_the_apps_filter_route_is_bounded_too_and_counts_what_it_deferred() -> None:
    c = Cluster()
    client = TestClient(create_app(c.ext))
    items = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in c.names]
    args = {"Pod": pod("a", limits(1, cores=30)), "Nodes": {"kind": "NodeList", "items": items}, "NodeNames": None}
    body = client.post("/filter", json=args).json()  # full-NodeList mode: the app answers, not the fast path
    assert [n["metadata"]["name"] for n in body["Nodes"]["items"]] == c.names[:5]
    assert body["FailedAndUnresolvableNodes"] == dict.fromkeys(c.names[5:], NOT_EVALUATED)
    metrics = client.get("/metrics").text
    assert f"flexai_filter_deferred_names_total {float(NODES - 5)}" in metrics
