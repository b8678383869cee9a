"""The refresh between calls (``Extender.refresh_step``, run by ``fastpath`` after each reply):
the nodes changed since a lately asked table's last call are decided before its next one,
as that call would have decided them; the call then decides nothing."""

from __future__ import annotations

import threading
import time
from typing import Any

from flexai_sched import extender as extender_module
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender, FilterOutcome, _Asked
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod

NAMES = [f"n{i}" for i in range(6)]


class Cluster:
    def __init__(self, answer: str = "best") -> None:
        self.state = ClusterState()
        self.backend = MemoryBackend([node(n, 4) for n in NAMES], heartbeat_every=None)
        self.backend.start(self.state)
        self.ext = Extender(self.state, self.backend, Settings(filter_answer=answer))
        self.ext.filler.background = False
        self.mono = 1000.0
        self.ext.clock = lambda: self.mono
        self.count = 0
        self.decided: list[str] = []
        real = self.ext._decide

        def decide(table: Any, names: list[str], ask: _Asked, until: float | None, found: bool) -> list[str]:
            self.decided += names
            return real(table, names, ask, until, found)

        self.ext._decide = decide  # type: ignore[method-assign]

    def new_pod(self, cards: int, cores: int) -> dict[str, Any]:
        self.count += 1
        p = pod(f"p{self.count}", limits(cards, cores=cores))
        self.backend.create_pod(p)
        return p

    def filter(self, p: dict[str, Any]) -> FilterOutcome:
        self.decided = []
        return self.ext.filter(p, NAMES)

    def bind(self, p: dict[str, Any], where: str) -> None:
        meta = p["metadata"]
        self.ext.bind(meta["namespace"], meta["name"], meta["uid"], where)

    def refresh(self) -> None:
        """Steps until every lately asked table is current, as the loop runs them."""
        while not self.ext.refresh_step():
            pass

    def table_of(self, p: dict[str, Any]) -> Any:
        req = self.ext.parse(p)
        key = self.ext._key(req)
        policy = self.ext._policy(req.node_policy, self.ext._node_policy)
        return self.ext.caches.tables[(key, self.ext._host_key(req, key, policy))]

    def reference(self, p: dict[str, Any]) -> FilterOutcome:
        """The same filter, node by node (no table), on the same state."""
        self.ext.tables = False
        try:
            return self.ext.filter(p, NAMES)
        finally:
            self.ext.tables = True


def test_the_next_call_finds_the_changed_nodes_decided_and_answers_as_node_by_node() -> None:
    c = Cluster("all")
    small, big = c.new_pod(1, 20), c.new_pod(2, 60)
    c.filter(small), c.filter(big)  # two tables, every node decided
    for where in ("n1", "n1", "n1", "n2"):  # n1 no longer fits the big pod; n2 changed too
        c.bind(c.new_pod(1, 90), where)
    c.refresh()
    for p in (c.new_pod(1, 20), c.new_pod(2, 60)):  # new pods of the same two shapes
        got = c.filter(p)
        assert c.decided == []  # nothing left to decide: the refresh did it
        want = c.reference(p)
        assert (got.fits, got.failed, got.unresolvable) == (want.fits, want.failed, want.unresolvable)
        assert c.table_of(p).seq == c.state.change_seq()
    assert "n1" not in got.fits and "n1" in got.failed  # the big pod's answer for n1 went from fit to not


def test_without_the_refresh_the_call_decides_them() -> None:
    """The control for the test above: the changed nodes are the call's to decide."""
    c = Cluster("all")
    c.filter(c.new_pod(1, 20))
    for where in ("n1", "n2"):
        c.bind(c.new_pod(1, 50), where)
    c.filter(c.new_pod(1, 20))
    assert sorted(c.decided) == ["n1", "n2"]


def test_the_best_node_is_picked_from_refreshed_scores() -> None:
    c = Cluster("best")
    c.filter(c.new_pod(1, 20))
    c.bind(c.new_pod(1, 90), "n3")  # n3's score for the shape changed
    c.refresh()
    p = c.new_pod(1, 20)  # the table's shape
    req = c.ext.parse(p)
    c.ext.tables = False  # the reference: raw scores node by node
    raw = c.ext._raw_scores(req, NAMES)
    c.ext.tables = True
    c.decided = []
    got = c.ext.filter(p, NAMES, bounded=True)  # kube-scheduler's call: the best node alone
    assert c.decided == []
    assert got.fits == [NAMES[raw.index(max(raw))]]


def test_a_table_not_asked_about_lately_is_left_to_its_next_call() -> None:
    c = Cluster("all")
    old = c.new_pod(1, 20)
    c.filter(old)
    c.mono += extender_module.REFRESH_RECENT_S + 1
    c.filter(c.new_pod(2, 60))  # a recent table beside the old one
    c.bind(c.new_pod(1, 50), "n1")
    seq = c.table_of(old).seq
    c.refresh()
    assert c.table_of(old).seq == seq  # untouched
    assert c.table_of(c.new_pod(2, 60)).seq == c.state.change_seq()


def test_a_step_stops_at_its_budget_and_the_next_goes_on() -> None:
    c = Cluster("all")
    shapes = [(1, 20), (2, 60), (1, 70)]
    for cards, cores in shapes:
        c.filter(c.new_pod(cards, cores))
    c.bind(c.new_pod(1, 50), "n4")
    ticks = iter(range(0, 10_000))
    c.ext.budget_clock = lambda: float(next(ticks))  # every read a second later: one table a step
    steps = 1
    while not c.ext.refresh_step():
        steps += 1
    assert steps == len(shapes) + 1  # a table a step, then one that finds nothing left
    assert all(c.table_of(c.new_pod(n, k)).seq == c.state.change_seq() for n, k in shapes)


def test_nodes_a_call_forgot_are_decided_over_several_steps() -> None:
    """A call forgets every node changed since its table's last use and decides only those it
    was sent: the refresh decides the rest (the holes), a few names a step."""
    c = Cluster("all")
    p = c.new_pod(1, 5)
    c.filter(p)
    for i in range(extender_module.HOLES_MAX + 1):
        c.bind(c.new_pod(1, 5), NAMES[i % len(NAMES)])
    c.ext.filter(c.new_pod(1, 5), NAMES[:1])
    with c.ext.caches.tables_mu:  # the table read now, as the shape's next call would: current, with holes
        key = c.ext._key(c.ext.parse(p))
        table = c.ext.caches.table(key, c.ext._host_key(c.ext.parse(p), key, c.ext._node_policy), c.state)
    assert table is c.table_of(p) and table.seq == c.state.change_seq() and len(table.holes) == len(NAMES)
    ticks = iter(range(0, 10_000))
    c.ext.budget_clock = lambda: float(next(ticks))  # every read a second later: 8 names a step
    steps = 1
    while not c.ext.refresh_step():
        steps += 1
    assert steps > 1 and not table.holes and set(table.verdicts) == set(c.state.nodes_by_name())


def test_a_step_never_waits_for_the_tables() -> None:
    c = Cluster("all")
    p = c.new_pod(1, 20)
    c.filter(p)
    c.bind(c.new_pod(1, 50), "n1")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with c.ext.caches.tables_mu:  # the filler's batch, say
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    began = time.monotonic()
    assert c.ext.refresh_step() is True  # gives up at once: the next call decides
    assert time.monotonic() - began < 0.5
    release.set()
    t.join()
    assert c.table_of(p).seq < c.state.change_seq()
