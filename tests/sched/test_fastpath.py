"""filter and prioritize below FastAPI (fastpath.Hot, as the ASGI middleware HotVerbs), and verdicts shared
between alike nodes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flexai_core import annotations as ann
from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.fastpath import Hot, HotVerbs
from flexai_sched.metrics import Metrics
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod

NAMES = ["a", "b", "c", "d"]


def cluster(settings: Settings | None = None) -> tuple[Extender, MemoryBackend]:
    state = ClusterState()
    backend = MemoryBackend([node(n, 4) for n in NAMES], heartbeat_every=None)
    backend.start(state)
    return Extender(state, backend, settings or Settings()), backend


@pytest.fixture
def small_limit() -> Iterator[TestClient]:
    ext, _ = cluster()
    app = HotVerbs(create_app(ext), Hot(ext, Metrics(ext.state), limit=1000))
    with TestClient(app) as client:
        yield client


def test_a_chunked_body_over_the_limit_is_refused(small_limit: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 100

    r = small_limit.post("/filter", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "1000" in r.json()["detail"]


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (b'{"Pod": {}, "NodeNames": "a"}', ["body", "NodeNames"]),
        (b'{"Pod": {}, "NodeNames": ["a", 5]}', ["body", "NodeNames", 1]),
        (b'{"Pod": null, "NodeNames": []}', ["body", "Pod"]),
        (b'{"NodeNames": []}', ["body", "Pod"]),
        (b'{"Pod": {}, "NodeNames": ["\\ud800"]}', ["body"]),
    ],
)
def test_a_body_the_fast_path_refuses_gets_the_apps_422_naming_the_field(
    small_limit: TestClient, raw: bytes, loc: list[object]
) -> None:
    for verb in ("/filter", "/prioritize"):
        r = small_limit.post(verb, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"][: len(loc)] == loc


def test_invalid_json_gets_the_apps_422(small_limit: TestClient) -> None:
    r = small_limit.post("/prioritize", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]


def test_full_node_list_mode_is_answered_by_the_app() -> None:
    ext, _ = cluster()
    with TestClient(create_app(ext)) as client:
        items = [{"metadata": {"name": n}} for n in ("a", "zz")]
        r = client.post("/filter", json={"Pod": pod("p", limits(1, cores=10)), "Nodes": {"items": items}})
        assert r.status_code == 200
        assert [n["metadata"]["name"] for n in r.json()["Nodes"]["items"]] == ["a"]
        r = client.post("/prioritize", json={"Pod": pod("p", limits(1, cores=10)), "Nodes": {"items": items}})
        assert r.status_code == 200 and [h["Host"] for h in r.json()] == ["a", "zz"]


def test_the_fast_path_answers_as_the_extender_does() -> None:
    ext, backend = cluster(Settings(filter_answer="all"))
    p = pod("q", limits(2, cores=30, memory_gib=8))
    with TestClient(create_app(ext)) as client:
        backend.create_pod(pod("x", limits(4, cores=80)))
        ext.parse(pod("x", limits(4, cores=80)))
        ext.bind("default", "x", "uid-x", "a")
        r = client.post("/filter", json={"Pod": p, "Nodes": None, "NodeNames": [*NAMES, "ghost"]}).json()
        want = ext.filter(p, [*NAMES, "ghost"])
        assert r["NodeNames"] == want.fits == ["b", "c", "d"]
        assert r["FailedNodes"] == want.failed and "a" in r["FailedNodes"]
        assert r["FailedAndUnresolvableNodes"] == want.unresolvable and "ghost" in want.unresolvable
        r = client.post("/prioritize", json={"Pod": p, "Nodes": None, "NodeNames": NAMES}).json()
        assert [(h["Host"], h["Score"]) for h in r] == ext.prioritize(p, NAMES)


def scores(ext: Extender, p: dict[str, Any], names: list[str]) -> dict[str, Any]:
    out = ext.filter(p, names)
    got = {"fits": out.fits, "failed": out.failed, "prio": ext.prioritize(p, names)}
    ext.reserving.end(f"default/{p['metadata']['name']}")  # never bound: its cycle ends, its reservation with it
    return got


@pytest.mark.parametrize("policy", ["fragmentation", "binpack", "spread"])
def test_alike_nodes_share_answers_that_equal_their_own(policy: str) -> None:
    """Nodes a and c hold the same pods (on the same cards), b and d are empty: each gets
    the answers a cluster of that node alone would give it."""
    settings = Settings(node_policy=policy, card_policy=policy)
    ext, backend = cluster(settings)
    for i, n in enumerate(["a", "c"]):
        for j, cores in enumerate((30, 60)):
            q = pod(f"f{i}{j}", limits(1, cores=cores, memory_gib=10))
            backend.create_pod(q)
            ext.parse(q)
            ext.bind("default", f"f{i}{j}", f"uid-f{i}{j}", n)
    shapes = [
        pod("p1", limits(1, cores=20)),
        pod("p2", limits(4, cores=50)),
        pod("p3", limits(2, cores=100)),
        pod("p4", limits(1, cores=70, memory_gib=100)),
    ]
    for p in shapes:
        got = scores(ext, p, NAMES)
        for n in NAMES:  # each node on its own, in a cluster that never saw the others' answers
            alone, backend2 = cluster(settings)
            for a, _ in ext.state.allocations():
                if a.node == n:
                    q = pod(a.name, limits(1, cores=a.slices[0].cores, memory_gib=10))
                    backend2.create_pod(q)
                    alone.parse(q)
                    alone.bind("default", a.name, a.uid, n)
            own = alone.filter(p, [n])
            assert (n in got["fits"]) == (own.fits == [n])
            assert got["failed"].get(n) == own.failed.get(n)
        assert ext.state.node("a").content == ext.state.node("c").content  # type: ignore[union-attr]
        assert ext.state.node("b").content == ext.state.node("d").content  # type: ignore[union-attr]
        prio = dict(got["prio"])
        assert prio["a"] == prio["c"] and prio["b"] == prio["d"]


def test_shared_outcomes_are_bounded_and_answers_unchanged_across_their_clears(monkeypatch: pytest.MonkeyPatch) -> None:
    from flexai_sched import extender_caches

    def run() -> tuple[list[Any], Extender]:
        ext, backend = cluster()
        for i, n in enumerate(NAMES):  # four node contents: 0, 1, 2 and 3 pods of 20%
            for j in range(i):
                q = pod(f"f{i}{j}", limits(1, cores=20, memory_gib=10))
                backend.create_pod(q)
                ext.parse(q)
                ext.bind("default", f"f{i}{j}", f"uid-f{i}{j}", n)
        shapes = [limits(1, cores=c) for c in (10, 50, 90)] + [limits(4, cores=100), limits(2, cores=85)]
        return [scores(ext, pod(f"p{k}", lim), NAMES) for k, lim in enumerate(shapes)], ext

    unbounded, _ = run()
    monkeypatch.setattr(extender_caches, "MAX_SHARED", 3)
    bounded, ext = run()
    assert bounded == unbounded
    assert ext.caches.shared_count <= 3 and sum(map(len, ext.caches.shared.values())) <= 3


def test_a_uuid_selector_is_not_shared_between_alike_nodes() -> None:
    ext, _ = cluster()
    p = pod("u", limits(1, cores=10), annotations={ann.GPU_UUIDS: "GPU-b-2"})
    assert ext.filter(p, NAMES).fits == ["b"]
    ext.reserving.end("default/u")  # never bound: its cycle ends, its reservation with it
    p = pod("v", limits(4, cores=10), annotations={ann.GPU_UUIDS_EXCLUDE: "GPU-c-0"})
    out = ext.filter(p, NAMES)
    assert out.fits == ["a", "b", "d"] and "c" in out.unresolvable | out.failed


def test_a_reservation_left_due_is_made_before_the_next_call_decides() -> None:
    """``Hot.answer`` leaves filter's reservation due (the protocol writes the reply first);
    the next call makes it before it decides, so two pods are never answered the same room."""
    state = ClusterState()
    backend = MemoryBackend([node("a", 4)], heartbeat_every=None)
    backend.start(state)
    ext = Extender(state, backend, Settings())
    hot = Hot(ext, Metrics(state), limit=1 << 20)
    pods = [pod(f"p{i}", limits(4, cores=100)) for i in range(3)]  # each takes the whole node
    for p in pods:
        backend.create_pod(p)

    def ask(answer: Any, p: dict[str, Any]) -> list[str]:
        got: list[str] = json.loads(answer("/filter", json.dumps({"Pod": p, "NodeNames": ["a"]}).encode()))["NodeNames"]
        return got

    assert ask(hot.answer, pods[0]) == ["a"] and state.reservations("default/p0") == ()
    assert ask(hot.answer, pods[1]) == []  # p0's room was reserved first
    assert state.reservations("default/p0")[0].node == "a"
    ext.reserving.end("default/p0")
    assert ask(hot, pods[2]) == ["a"] and state.reservations("default/p2")  # ``__call__``: at once
