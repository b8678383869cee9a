"""Why pending: the filter's own reasons, the closest card, the fewest moves; over HTTP and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from flexai_core.model import FULL_CORES, Card, CardSelector, CardUsage, ContainerRequest
from flexai_sched import explain
from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.cli import explain_text, main
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod

GIB = 1024
NODES = ["big", "small", "t4", "old"]


@pytest.fixture
def env() -> Iterator[tuple[TestClient, MemoryBackend, ClusterState]]:
    state = ClusterState()
    backend = MemoryBackend(
        [
            node("big", 8),
            node("small", 2),
            node("t4", 2, memory_mib=15360, model="Tesla T4"),
            node("old", 2, heartbeat=datetime.now(UTC) - timedelta(minutes=5)),
        ],
        heartbeat_every=None,
    )
    ext = Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack", filter_answer="all"))
    with TestClient(create_app(ext)) as client:
        backend.add_node(node("old", 2, heartbeat=datetime.now(UTC) - timedelta(minutes=5)))  # start() beat it
        yield client, backend, state


def bind(
    client: TestClient,
    backend: MemoryBackend,
    name: str,
    node_name: str,
    *containers: dict[str, Any],
    namespace: str = "default",
) -> None:
    backend.create_pod(pod(name, *containers, namespace=namespace))
    body = {"PodName": name, "PodNamespace": namespace, "PodUID": f"uid-{name}", "Node": node_name}
    assert client.post("/bind", json=body).json()["Error"] == ""


def filter_reasons(client: TestClient, p: dict[str, Any]) -> dict[str, str]:
    body = client.post("/filter", json={"Pod": p, "NodeNames": NODES}).json()
    return {**body["FailedNodes"], **body["FailedAndUnresolvableNodes"]}


def explained_reasons(got: dict[str, Any]) -> dict[str, str]:
    return {n["node"]: n["reason"] for n in got["nodes"] if not n["fits"]}


@pytest.mark.parametrize(
    "p",
    [
        pytest.param(pod("fits", limits(1, cores=20, memory_gib=3)), id="fits-everywhere-fresh"),
        pytest.param(pod("three", limits(3, cores=10, memory_gib=1)), id="more-cards-than-small-nodes"),
        pytest.param(pod("huge", limits(1, cores=10, memory_gib=100)), id="memory-beyond-t4"),
        pytest.param(
            pod("model", limits(1, cores=10), annotations={"vgpu.flexai.io/gpu-models": "B200"}), id="model-nobody-has"
        ),
        pytest.param(pod("bad", limits(1, cores=130)), id="invalid-request"),
        pytest.param(pod("whole", limits(2)), id="whole-cards-taken"),
    ],
)
def test_explain_gives_the_filters_reasons_node_by_node(env: Any, p: dict[str, Any]) -> None:
    client, backend, _ = env
    bind(client, backend, "w1", "small", limits(1, cores=50))
    bind(client, backend, "w2", "t4", limits(1, cores=50))
    got = client.post("/v1/explain", json=p).json()
    assert explained_reasons(got) == filter_reasons(client, p)
    assert "old" in explained_reasons(got)  # the stale node, as filter says
    # YAML is the same pod, and JSON with tabs (not YAML) too
    assert client.post("/v1/explain", content=yaml.safe_dump(p)).json()["nodes"] == got["nodes"]
    assert client.post("/v1/explain", content=json.dumps(p, indent="\t")).json()["nodes"] == got["nodes"]


def test_the_closest_card_names_what_is_missing() -> None:
    card = Card(0, "GPU-0", "NVIDIA H200", 80 * GIB)
    used = CardUsage(cores=70, memory_mib=50 * GIB, vgpus=2)
    # 50% / 40 GiB asked: 70 + 50 = 120 -> 20% short; 80 - 50 = 30 GiB free -> 10 GiB short.
    gap = explain.card_gap("n", card, used, ContainerRequest("main", 1, 50, 40 * GIB), CardSelector())
    assert gap is not None
    assert (gap.missing_cores, gap.missing_memory_mib, gap.missing_slot) == (20, 10 * GIB, False)
    assert gap.missing == (
        "20% more cores (30% free, 50% asked)",
        "10.0 GiB more memory (30.0 GiB free, 40.0 GiB asked)",
    )
    # 0.2 cards of cores + 10/80 of the memory
    assert gap.size == pytest.approx(0.2 + 0.125)
    # A whole card needs the card empty; a slot-full card lacks a slot; another model never fits.
    whole = explain.card_gap("n", card, used, ContainerRequest("main", 1, FULL_CORES, None), CardSelector())
    assert (
        whole is not None and whole.must_be_empty and (whole.missing_cores, whole.missing_memory_mib) == (70, 50 * GIB)
    )
    full = explain.card_gap("n", card, CardUsage(10, GIB, 5), ContainerRequest("m", 1, 10, GIB), CardSelector())
    assert full is not None and full.missing == ("a vGPU slot (5 of 5 used)",)
    assert (
        explain.card_gap("n", card, used, ContainerRequest("m", 1, 10, GIB), CardSelector(models=frozenset({"T4"})))
        is None
    )


def test_explain_points_at_the_closest_card_in_the_cluster(env: Any) -> None:
    client, backend, _ = env
    bind(client, backend, "a", "small", limits(1, cores=60, memory_gib=10))  # small card 0: 60%
    bind(client, backend, "b", "small", limits(1, cores=90, memory_gib=10))  # small card 1: 90%
    for i in range(8):
        bind(client, backend, f"f{i}", "big", limits(1, cores=80, memory_gib=10))
    bind(client, backend, "t", "t4", limits(2, cores=70, memory_gib=2))
    got = client.post("/v1/explain", json=pod("p", limits(1, cores=50, memory_gib=5))).json()
    assert got["fits"] == []
    # small card 0 lacks 10%, every big card 30%, t4 cards 20%, small card 1 40%.
    assert got["closest"]["node"] == "small" and got["closest"]["card"] == 0
    assert got["closest"]["missing"] == ["10% more cores (40% free, 50% asked)"]


def test_the_plan_moves_the_fewest_pods_and_every_move_lands(env: Any) -> None:
    client, backend, state = env
    pin = "vgpu.flexai.io/gpu-uuids"
    half = limits(1, cores=50, memory_gib=5)
    # small: x (50%) on card 0, y (50%) on card 1. big: 6 whole cards, w6 and w7 (50%) on cards
    # 6 and 7. t4: a whole card and v (50%). Nowhere two empty cards.
    backend.create_pod(pod("x", half, annotations={pin: "GPU-small-0"}))
    backend.create_pod(pod("y", half, annotations={pin: "GPU-small-1"}))
    for name in ("x", "y"):
        assert (
            client.post(
                "/bind", json={"PodName": name, "PodNamespace": "default", "PodUID": f"uid-{name}", "Node": "small"}
            ).json()["Error"]
            == ""
        )
    for i in range(6):
        bind(client, backend, f"w{i}", "big", limits(1))
    bind(client, backend, "w6", "big", half)
    backend.create_pod(pod("w7", half, annotations={pin: "GPU-big-7"}))
    assert (
        client.post(
            "/bind", json={"PodName": "w7", "PodNamespace": "default", "PodUID": "uid-w7", "Node": "big"}
        ).json()["Error"]
        == ""
    )
    bind(client, backend, "tt", "t4", limits(1))
    bind(client, backend, "v", "t4", half)
    p = pod("p", limits(2))  # two whole cards on one node
    got = client.post("/v1/explain", json=p).json()
    assert got["fits"] == []
    # One move empties one card, never two. Two: big and small are as close (a 50% slice in
    # the way on each card), big first by name; w6 and w7 leave, p takes cards 6 and 7, and
    # they go to small's cards (50 + 50 each). A move keeps a pod on its model: v (on a T4)
    # could never go to an H200, nor x or y to t4.
    assert got["plan"] == {
        "node": "big",
        "cards": [6, 7],
        "moves": [
            {"pod": "default/w6", "from_node": "big", "from_cards": [6], "to_node": "small", "to_cards": [0]},
            {"pod": "default/w7", "from_node": "big", "from_cards": [7], "to_node": "small", "to_cards": [1]},
        ],
    }
    check_plan(state, got, p)


def check_plan(state: ClusterState, got: dict[str, Any], p: dict[str, Any]) -> None:
    """Replay the plan card by card: no card ever over 100% cores, the pod's cards end with room."""
    usage = {(n.name, c.index): u for n in state.nodes() for c, u in zip(n.cards, n.usage, strict=True)}
    plan = got["plan"]
    for m in plan["moves"]:
        a = state.allocation(m["pod"])
        assert a is not None and a.node == m["from_node"]
        for index, held in a.card_usage.items():
            usage[(a.node, index)] = usage[(a.node, index)].minus(held)
    cores = int(p["spec"]["containers"][0]["resources"]["limits"].get("huawei.com/vgpu-cores", FULL_CORES))
    for index in plan["cards"]:
        usage[(plan["node"], index)] = usage[(plan["node"], index)].plus(CardUsage(cores, 0, 1))
    for m in plan["moves"]:
        a = state.allocation(m["pod"])
        assert a is not None
        for index, held in zip(m["to_cards"], a.card_usage.values(), strict=True):
            usage[(m["to_node"], index)] = usage[(m["to_node"], index)].plus(held)
    assert all(u.cores <= FULL_CORES for u in usage.values()), usage


def test_one_move_when_one_is_enough_and_none_when_nothing_can_move(env: Any) -> None:
    client, backend, state = env
    small = limits(1, cores=10, memory_gib=5)
    # big and t4: every card at 95%. small: a (50%) and c (10%) on card 0, b (60%) on card 1.
    for i in range(8):
        bind(client, backend, f"w{i}", "big", limits(1, cores=95, memory_gib=5))
    bind(client, backend, "tt", "t4", limits(2, cores=95, memory_gib=5))
    bind(client, backend, "a", "small", limits(1, cores=50, memory_gib=5))
    bind(client, backend, "c", "small", small)
    bind(client, backend, "b", "small", limits(1, cores=60, memory_gib=5))
    assert [u.cores for u in state.node("small").usage] == [60, 60]
    p = pod("p", limits(1, cores=50, memory_gib=5))
    got = client.post("/v1/explain", json=p).json()
    assert got["fits"] == []
    # c off card 0 leaves 50%: p takes it (100%), and c goes to card 1 (60 + 10).
    assert got["plan"] == {
        "node": "small",
        "cards": [0],
        "moves": [{"pod": "default/c", "from_node": "small", "from_cards": [0], "to_node": "small", "to_cards": [1]}],
    }
    check_plan(state, got, p)
    # b grows to 95%: c has nowhere to go, nor a, nor b; no set of up to 3 moves helps.
    backend.delete_pod("default", "b")
    bind(client, backend, "b2", "small", limits(1, cores=95, memory_gib=5))
    got = client.post("/v1/explain", json=p).json()
    assert got["fits"] == [] and got["plan"] is None and got["plan_complete"] is True


def test_explain_by_name(env: Any) -> None:
    client, backend, _ = env
    assert client.get("/v1/explain/default/ghost").status_code == 404
    assert "not found" in client.get("/v1/explain/default/ghost").json()["detail"]
    backend.create_pod(pod("waits", limits(4, cores=100)))
    got = client.get("/v1/explain/default/waits").json()
    assert got["pod"] == "default/waits" and explained_reasons(got) == filter_reasons(
        client, pod("waits", limits(4, cores=100))
    )
    bind(client, backend, "runs", "small", limits(1, cores=10))
    assert client.get("/v1/explain/default/runs").json()["bound_node"] == "small"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"a: [", "body: not a YAML or JSON document", id="broken-yaml"),
        pytest.param(b"- 1\n- 2\n", "body: must be a pod manifest", id="a-list"),
        pytest.param(
            b"kind: Deployment\nmetadata: {name: x}\nspec: {}\n", "kind: 'Deployment': must be Pod", id="not-a-pod"
        ),
        pytest.param(b"metadata: {name: x}\n", "spec: must be a mapping", id="no-spec"),
        pytest.param(b"metadata: {}\nspec: {}\n", "metadata.name: must be a non-empty string", id="no-name"),
        pytest.param(b"\xff\xfe", "body: not a YAML or JSON document", id="not-utf8"),
        pytest.param(b'{"metadata": {"name": "x"}, "spec": ', "body: not a YAML or JSON document", id="cut-json"),
    ],
)
def test_a_bad_manifest_gets_a_4xx_naming_the_field(env: Any, body: bytes, message: str) -> None:
    client, _, _ = env
    r = client.post("/v1/explain", content=body, headers={"content-type": "application/yaml"})
    assert r.status_code == 422 and message in r.json()["detail"]


def test_an_oversized_manifest_is_refused(env: Any) -> None:
    client, _, _ = env
    r = client.post("/v1/explain", content=b"#" * (2 << 20))
    assert r.status_code == 413 and "body:" in r.json()["detail"]


def test_explain_text_reads_as_the_api_says() -> None:
    d: dict[str, object] = {
        "pod": "ns/p",
        "bound_node": None,
        "fits": [],
        "reasons": {"needs room": 2},
        "closest": {"node": "a", "card": 1, "model": "H200", "container": "c", "missing": ["10% more cores"]},
        "plan": {
            "node": "a",
            "cards": [1],
            "moves": [{"pod": "ns/q", "from_node": "a", "from_cards": [1], "to_node": "b", "to_cards": [0]}],
        },
        "plan_complete": True,
        "plan_searched": 1,
    }
    assert explain_text(d) == (
        "ns/p: fits on no node now\n"
        "reasons (the filter's, as kube-scheduler was told):\n"
        "  2 node(s): needs room\n"
        'closest card: a card 1 (H200), container "c": missing 10% more cores\n'
        "plan (1 move(s)):\n"
        "  move ns/q from a card(s) 1 to b card(s) 0\n"
        "  then ns/p fits on a card(s) 1"
    )


def test_cli_explain_needs_one_pod_and_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain"]) == 2
    assert "give NAMESPACE/NAME or -f FILE" in capsys.readouterr().err
    assert main(["explain", "a/b", "--url", "http://127.0.0.1:9"]) == 1  # nothing listens on port 9
    assert "http://127.0.0.1:9" in capsys.readouterr().err
