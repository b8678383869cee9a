"""The page's feed (/v1/dashboard), stranded capacity, and the demo cluster's placed pods."""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flexai_core.model import Card, CardSelector, CardUsage
from flexai_sched import capacity, dashboard, demo
from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.capacity import Shape
from flexai_sched.cli import make_backend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.state import ClusterState
from flexai_sched.workload import DEFAULT_WORKLOAD

from .fixtures import limits, node, pod

GIB = 1024


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, MemoryBackend, ClusterState, Extender]]:
    monkeypatch.setattr(dashboard.Feed, "min_interval", 0.0)  # every request sees the state as it is
    monkeypatch.setattr(dashboard.Feed, "pending_interval", 0.0)
    state = ClusterState()
    backend = MemoryBackend([node("a", 2), node("b", 2)], heartbeat_every=None)
    ext = Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack"))
    with TestClient(create_app(ext)) as client:
        yield client, backend, state, ext


def bind(client: TestClient, backend: MemoryBackend, name: str, node_name: str, *containers: dict[str, Any]) -> None:
    backend.create_pod(pod(name, *containers, namespace="team"))
    body = {"PodName": name, "PodNamespace": "team", "PodUID": f"uid-{name}", "Node": node_name}
    assert client.post("/bind", json=body).json()["Error"] == ""


def test_the_feed_draws_what_v1_nodes_says(env: Any) -> None:
    client, backend, _, _ = env
    bind(client, backend, "p", "a", limits(2, cores=30, memory_gib=8))
    got = client.get("/v1/dashboard").json()
    assert got["full"] is True and {n["name"] for n in got["nodes"]} == {"a", "b"}
    for n in got["nodes"]:
        detail = client.get(f"/v1/nodes/{n['name']}").json()
        for card, want in zip(n["cards"], detail["card_details"], strict=True):
            assert (card["i"], card["cores"], card["used"], card["mib"]) == (
                want["index"],
                want["cores_allocated"],
                want["memory_mib_allocated"],
                want["memory_mib_total"],
            )
            assert [(f"{s['ns']}/{s['pod']}", s["c"], s["cores"], s["mib"]) for s in card["slices"]] == [
                (s["pod"], s["container"], s["cores"], s["memory_mib"]) for s in want["slices"]
            ]
    assert got["summary"]["cores_allocated"] == 60 and got["summary"]["memory_mib_allocated"] == 16 * GIB


def test_the_feed_sends_only_what_changed(env: Any) -> None:
    client, backend, state, _ = env
    first = client.get("/v1/dashboard").json()
    same = client.get(f"/v1/dashboard?since={first['serial']}").json()
    assert same["full"] is False and same["nodes"] == [] and same["gone"] == []
    bind(client, backend, "p", "b", limits(1, cores=50))
    after = client.get(f"/v1/dashboard?since={first['serial']}").json()
    assert [n["name"] for n in after["nodes"]] == ["b"]
    assert after["nodes"][0]["cards"][0]["slices"][0]["pod"] == "p"
    backend.heartbeat()
    beat = client.get(f"/v1/dashboard?since={after['serial']}").json()
    assert beat["nodes"] == [] and {n for n, _ in beat["beats"]} == {"a", "b"}
    state.remove_node("a")
    gone = client.get(f"/v1/dashboard?since={beat['serial']}").json()
    assert gone["gone"] == ["a"]
    # A serial the server never gave (it restarted): everything again.
    assert client.get("/v1/dashboard?since=999999").json()["full"] is True


def test_a_large_feed_is_gzipped_when_asked(env: Any) -> None:
    client, backend, _, _ = env
    for i in range(60):
        backend.add_node(node(f"n{i:03d}", 8))
    r = client.get("/v1/dashboard", headers={"accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and len(r.json()["nodes"]) == 62
    raw = client.get("/v1/dashboard", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in raw.headers and len(gzip.compress(raw.content)) < len(raw.content)


def test_the_page_and_its_files_are_served_and_nothing_else(env: Any) -> None:
    client, _, _, _ = env
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/ui/dashboard.js">' in page.text
    assert client.get("/ui/dashboard.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/dashboard.css").status_code == 200
    assert client.get("/ui/index.html").status_code == 404
    assert client.get("/ui/..%2Fapp.py").status_code == 404


# ---- stranded capacity ----

H200 = Card(0, "G0", "NVIDIA H200", 80 * GIB)


@pytest.mark.parametrize(
    ("usage", "shapes", "stranded"),
    [
        # 95% cores taken: 5% and 70 GiB free, no typical shape (10% at least) fits: all stranded.
        pytest.param(CardUsage(95, 10 * GIB, 1), [Shape(1, 10)], (5, 70 * GIB), id="5-percent-left"),
        # 50% free: a 50% shape (40 GiB, in proportion) fits: nothing stranded.
        pytest.param(CardUsage(50, 10 * GIB, 1), [Shape(1, 50)], (0, 0), id="a-shape-fits"),
        # 50% free but 75 of 80 GiB taken: a 25% shape in proportion wants 20 GiB: stranded.
        pytest.param(CardUsage(50, 75 * GIB, 1), [Shape(1, 25)], (50, 5 * GIB), id="memory-short"),
        # ... unless a waiting pod asks 25% with 4 GiB.
        pytest.param(CardUsage(50, 75 * GIB, 1), [Shape(1, 25), Shape(1, 25, 4 * GIB)], (0, 0), id="waiting-pod-fits"),
        # Every vGPU slot used: the free part is stranded whatever the shapes.
        pytest.param(CardUsage(50, 10 * GIB, 5), [Shape(1, 10, GIB)], (50, 70 * GIB), id="slots-full"),
    ],
)
def test_stranded_is_free_capacity_no_shape_can_use(
    usage: CardUsage, shapes: list[Shape], stranded: tuple[int, int]
) -> None:
    got = capacity.node_capacity([H200], [usage], shapes)
    assert (got.cores_stranded, got.memory_mib_stranded) == stranded
    assert (got.cores_free, got.memory_mib_free) == (100 - usage.cores, 80 * GIB - usage.memory_mib)


def test_a_multi_card_shape_needs_enough_cards_on_the_node() -> None:
    cards = [Card(i, f"G{i}", "NVIDIA H200", 80 * GIB) for i in range(2)]
    usage = [CardUsage(), CardUsage(100, 80 * GIB, 1)]
    # Only 2-card shapes: one free card is not enough, so it is stranded.
    assert capacity.node_capacity(cards, usage, [Shape(2, 100)]).cores_stranded == 100
    assert capacity.node_capacity(cards, usage, [Shape(2, 100), Shape(1, 100)]).cores_stranded == 0


def test_essential_shapes_strand_exactly_what_all_shapes_strand() -> None:
    rng = random.Random(5)
    models = ["NVIDIA H200", "Tesla T4"]
    for _ in range(300):
        cards = [Card(i, f"G{i}", rng.choice(models), rng.choice([16, 80]) * GIB, rng.choice([2, 5])) for i in range(4)]
        usage = []
        for c in cards:
            v = rng.randint(0, c.max_vgpus)
            usage.append(
                CardUsage(rng.choice([0, 5, 30, 55, 90, 100]) if v else 0, rng.randint(0, c.memory_mib) if v else 0, v)
            )
        shapes = [
            Shape(
                rng.choice([1, 1, 2, 3]),
                rng.choice([0, 5, 10, 25, 50, 100]),
                rng.choice([None, GIB, 8 * GIB, 40 * GIB]),
                rng.choice([CardSelector(), CardSelector(models=frozenset({rng.choice(models)}))]),
            )
            for _ in range(rng.randint(1, 6))
        ]
        kept = capacity.essential(shapes)
        assert len(kept) <= len(set(shapes))
        assert capacity.node_capacity(cards, usage, kept) == capacity.node_capacity(cards, usage, shapes)


def test_typical_shapes_come_from_the_planned_workload() -> None:
    shapes = capacity.typical_shapes(DEFAULT_WORKLOAD)
    assert {(s.vgpus, s.cores) for s in shapes} >= {(1, 100), (1, 10), (8, 100)}


def test_the_summary_counts_a_waiting_pods_shape(env: Any) -> None:
    client, backend, _, ext = env
    # a: both cards at 95%; 5% each stranded by the typical shapes (10% and up).
    for n in ("x", "y"):
        bind(client, backend, n, "a", limits(1, cores=95, memory_gib=10))
    assert client.get("/v1/dashboard").json()["summary"]["cores_stranded"] == 10
    # A pod waits for 5%: those 5% are no longer stranded.
    client.post("/filter", json={"Pod": pod("w", limits(1, cores=5, memory_gib=1)), "NodeNames": ["a"]})
    got = client.get("/v1/dashboard").json()
    assert got["summary"]["cores_stranded"] == 0 and got["summary"]["pending"] == 1
    assert got["pending"][0]["pod"] == "default/w"


# ---- the demo ----


def test_the_demo_starts_with_pods_placed_and_one_waiting() -> None:
    backend = make_backend(Settings())
    assert isinstance(backend, MemoryBackend)
    state = ClusterState(max_vgpus_per_card=5)
    ext = Extender(state, backend, Settings())
    for p in backend.waiting:
        ext.parse(p)
    with TestClient(create_app(ext)) as client:
        allocs = client.get("/v1/allocations").json()
        assert len(allocs) == len(demo.BUILTIN["pods"]) and all(a["state"] == "bound" for a in allocs)
        assert client.get("/v1/nodes/gpu-h200-a").json()["cores_allocated_pct"] > 0
        assert client.get("/v1/nodes/gpu-t4").json()["pods"] == 0  # the README's curl session binds there
        why = client.get("/v1/explain/research/finetune-70b").json()
        assert why["fits"] == [] and why["plan"] is not None
        assert client.get("/v1/pods/alice/notebook").json()["slices"][0]["card"] == 2


@pytest.mark.parametrize(
    ("pods", "message"),
    [
        pytest.param(
            "[{name: p, node: nope, containers: [{name: c, cards: [0], cores: 10}]}]",
            r"pods\[0\].node: 'nope' is not a demo node",
            id="unknown-node",
        ),
        pytest.param(
            "[{name: p, node: a, containers: [{name: c, cards: [5], cores: 10}]}]",
            r"pods\[0\].containers\[0\].cards: 5 is not a card of a",
            id="unknown-card",
        ),
        pytest.param(
            "[{name: p, node: a, containers: [{name: c, cards: [0], cores: 60}]},"
            " {name: q, node: a, containers: [{name: c, cards: [0], cores: 60}]}]",
            r"pods\[1\].containers\[0\]: 60% / 15360 MiB does not fit card 0 of a",
            id="over-full",
        ),
        pytest.param(
            "[{name: p, node: a, containers: [{name: c, cards: [0], cores: 130}]}]",
            r"pods\[0\].containers\[0\].cores: must be an integer from 0 to 100",
            id="bad-cores",
        ),
    ],
)
def test_demo_pods_are_checked(tmp_path: Path, pods: str, message: str) -> None:
    f = tmp_path / "demo.yaml"
    f.write_text(f"nodes: [{{name: a, cards: [{{model: T4, memoryMiB: 15360, count: 2}}]}}]\npods: {pods}\n")
    doc = demo.read_file(f)
    with pytest.raises(ValueError, match=message):
        demo.pods(doc, demo.inventory(doc))
