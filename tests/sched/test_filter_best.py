"""kube-scheduler's filter answered with the best node alone (``filter_answer`` "best", the
default): the fitting node prioritize would score highest, reserved for the pod, no reasons;
a pod no node fits gets every node's reason, as with "all"."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient

from flexai_sched.answers import NOT_EVALUATED
from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings, load
from flexai_sched.extender import Extender
from flexai_sched.fastpath import Hot
from flexai_sched.filling import FillJob
from flexai_sched.metrics import Metrics
from flexai_sched.state import ClusterState

from .fixtures import Ticks, limits, node, pod

SHAPES = [(1, 20, 3), (1, 50, None), (2, 30, 16), (1, 100, None), (4, 25, 20), (1, 5, 1)]


def cluster(answer: str, seed: int, nodes: int = 12, **settings: Any) -> tuple[Extender, list[str]]:
    """``nodes`` nodes of 2-8 cards, filled at random (the same for the same seed)."""
    rng = random.Random(seed)
    state = ClusterState()
    inv = [node(f"n{i:02d}", rng.choice((2, 4, 8))) for i in range(nodes)]
    backend = MemoryBackend(inv, heartbeat_every=None)
    backend.start(state)
    ext = Extender(state, backend, Settings(filter_answer=answer, **settings))
    for i in range(nodes * 3):
        n, cores, mem = rng.choice(SHAPES)
        p = pod(f"fill{i}", limits(n, cores=cores, memory_gib=mem))
        backend.create_pod(p)
        fits = ext.filter(p, [rng.choice(inv).name]).fits
        if fits:
            ext.bind("default", f"fill{i}", f"uid-fill{i}", fits[0])
    return ext, [n.name for n in inv]


def reply(ext: Extender, p: dict[str, Any], names: list[str]) -> dict[str, Any]:
    hot = Hot(ext, Metrics(ext.state), limit=64 << 20)
    raw = hot("/filter", msgspec.json.encode({"Pod": p, "NodeNames": names}))
    assert raw is not None
    return msgspec.json.decode(raw)  # type: ignore[no-any-return]


@pytest.mark.parametrize("seed", range(8))
def test_the_answer_is_the_fitting_node_prioritize_scores_highest(seed: int) -> None:
    best, names = cluster("best", seed)
    every, _ = cluster("all", seed)
    rng = random.Random(100 + seed)
    for i, (n, cores, mem) in enumerate(SHAPES):
        p = pod(f"p{i}", limits(n, cores=cores, memory_gib=mem))
        sent = rng.sample(names, len(names))  # kube-scheduler's order moves between cycles
        want = reply(every, p, sent)
        every.reserving.end(f"default/p{i}")
        got = reply(best, p, sent)
        best.reserving.end(f"default/p{i}")
        if not want["NodeNames"]:  # nothing fits: every node's reason, as "all" gives them
            assert got == want
            continue
        raw = dict(zip(want["NodeNames"], every._raw_scores(every.parse(p), want["NodeNames"]), strict=True))
        top = max(raw.values())
        first = min(name for name in want["NodeNames"] if raw[name] == top)
        assert got["NodeNames"] == [first]  # the best; of equals, the first by name
        assert got["FailedNodes"] == {} and got["FailedAndUnresolvableNodes"] == {}
        prio = dict(every.prioritize(p, sent))
        every.reserving.end(f"default/p{i}")  # prioritize reserves too
        assert prio[first] == max(prio.values())


def test_the_node_answered_is_reserved_for_the_pod() -> None:
    state = ClusterState()
    backend = MemoryBackend([node("a", 1), node("b", 1)], heartbeat_every=None)
    backend.start(state)
    ext = Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack"))
    first = reply(ext, pod("p", limits(1, cores=100)), ["a", "b"])["NodeNames"]
    assert len(first) == 1
    assert state.reservations("default/p")[0].node == first[0]
    other = reply(ext, pod("q", limits(1, cores=100)), ["a", "b"])["NodeNames"]
    assert other == [n for n in ("a", "b") if n != first[0]]  # the first pod's room is taken
    assert reply(ext, pod("r", limits(1, cores=100)), ["a", "b"])["FailedNodes"].keys() == {"a", "b"}


def test_a_bounded_first_call_picks_among_what_it_decided_and_defers_nothing_in_the_reply() -> None:
    ext, names = cluster("best", 3, nodes=30, filter_budget_ms=5)
    ext.budget_clock = Ticks()  # always out of budget: the call decides the least it may
    ext.min_decided = 5
    ext.filler.background = False
    p = pod("new", limits(1, cores=5, memory_gib=1))
    metrics = Metrics(ext.state)
    raw = Hot(ext, metrics, limit=64 << 20)("/filter", msgspec.json.encode({"Pod": p, "NodeNames": names}))
    assert raw is not None
    got = msgspec.json.decode(raw)
    assert len(got["NodeNames"]) == 1
    assert metrics.deferred._value.get() == len(names) - 5  # counted, though not in the reply
    assert NOT_EVALUATED not in got["FailedAndUnresolvableNodes"].values()
    assert got["FailedAndUnresolvableNodes"] == {} and got["FailedNodes"] == {}


def test_the_apps_filter_route_and_the_full_node_list_answer_the_same_node() -> None:
    ext, names = cluster("best", 5)
    p = pod("p", limits(1, cores=20, memory_gib=3))
    want = reply(ext, p, names)["NodeNames"]
    ext.reserving.end("default/p")
    items = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in names]
    with TestClient(create_app(ext)) as client:
        body = {"Pod": p, "Nodes": {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items}}
        got = client.post("/filter", json=body).json()
    assert [n["metadata"]["name"] for n in got["Nodes"]["items"]] == want


def test_filter_answer_must_be_best_or_all(tmp_path: Any) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("filter_answer: first\n")
    with pytest.raises(ValueError, match="filter_answer='first': must be best or all"):
        load(f)
    assert load(None).filter_answer == "best"


@pytest.mark.parametrize("complete", [True, False])
def test_among_equal_nodes_the_first_by_name_is_answered_whatever_the_order_sent(complete: bool) -> None:
    """A complete table answers from its ranked list, where equals are in name order; the
    names looked up one by one (a table still missing nodes) answer the same."""
    state = ClusterState()
    backend = MemoryBackend([node(n, 8) for n in "abcde"], heartbeat_every=None)
    backend.start(state)
    ext = Extender(state, backend, Settings())
    if not complete:
        state.upsert_node(node("z", 8))  # a node filter is never sent: the table lacks it
    for i, sent in enumerate((["d", "c", "a", "e", "b"], ["e", "b", "d", "c"], ["e", "d", "c"])):
        assert reply(ext, pod(f"p{i}", limits(1, cores=10)), sent)["NodeNames"] == [min(sent)]
        ext.reserving.end(f"default/p{i}")
    (table,) = ext.caches.tables.values()
    assert (len(table.verdicts) == len(state.nodes_by_name())) is complete  # the path each took


def test_a_table_missing_nodes_is_not_answered_from_its_ranked_list() -> None:
    """A call may send names the shape's table has never decided (an earlier call sent only
    some): the best of those must count, so the pick looks each name up then."""
    state = ClusterState()
    backend = MemoryBackend([node(n, 8) for n in "abcde"], heartbeat_every=None)
    backend.start(state)
    ext = Extender(state, backend, Settings(node_policy="binpack"))
    first = pod("first", limits(1, cores=50))
    backend.create_pod(first)
    ext.filter(first, ["e"])
    ext.bind("default", "first", "uid-first", "e")  # binpack: the used node "e" is the best now
    assert reply(ext, pod("p0", limits(1, cores=10)), ["a", "b"])["NodeNames"] == ["a"]
    ext.reserving.end("default/p0")
    (table,) = [t for t in ext.caches.tables.values() if "e" not in t.verdicts]
    assert table.ranked  # what a pick from the list alone would answer from
    assert reply(ext, pod("p1", limits(1, cores=10)), ["a", "b", "e"])["NodeNames"] == ["e"]


def test_a_stale_node_with_the_best_score_is_never_the_answer() -> None:
    """prioritize scores a node's cards whatever its heartbeat: the table may hold a score for
    a node filter refuses as stale, and that score may be the best."""
    state = ClusterState()
    backend = MemoryBackend([node("a", 2), node("b", 2)], heartbeat_every=None)
    backend.start(state)
    a = state.node("a")
    assert a is not None
    state.upsert_node(replace(a.inventory, heartbeat=datetime.now(UTC) - timedelta(hours=1)))
    ext = Extender(state, backend, Settings(node_policy="spread", card_policy="spread"))
    q = pod("q", limits(1, cores=50))
    backend.create_pod(q)
    ext.parse(q)
    ext.bind("default", "q", "uid-q", "b")
    p = pod("p", limits(1, cores=10))
    assert ext.priorities(ext.parse(p), ["a", "b"]) == [10, 0]  # the empty node is the better spread
    (table,) = ext.caches.tables.values()
    assert table.scores["a"] > table.scores["b"]
    assert reply(ext, p, ["a", "b"])["NodeNames"] == ["b"]


def test_the_fill_leaves_stale_nodes_unscored() -> None:
    """A node filter refuses as stale gets no score from the fill, so it cannot be a call's
    best score (which would send every call the long way)."""
    ext, names = cluster("best", 2, nodes=6)
    stale = ext.state.node(names[0])
    assert stale is not None
    ext.state.upsert_node(replace(stale.inventory, heartbeat=datetime.now(UTC) - timedelta(hours=1)))
    ext.filler.background = False
    p = pod("p", limits(1, cores=10))
    req = ext.parse(p)
    key = ext._key(req)
    policy = ext._policy(None, ext._node_policy)
    hkey = ext._host_key(req, key, policy)
    with ext.caches.tables_mu:
        table = ext.caches.table(key, hkey, ext.state)
    ext.filler.want(FillJob(key, hkey, req, policy))
    ext.filler.drain()
    assert names[0] in table.stale and names[0] not in table.scores
    assert set(table.scores) == set(names[1:])
