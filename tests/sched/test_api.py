"""The extender over HTTP, with bodies shaped exactly like kube-scheduler's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.state import AllocState, ClusterState

from .fixtures import limits, node, pod

NODES = ["big", "small", "t4"]


@pytest.fixture
def env() -> Iterator[tuple[TestClient, MemoryBackend, ClusterState]]:
    state = ClusterState()
    backend = MemoryBackend(
        [node("big", 8), node("small", 2), node("t4", 2, memory_mib=15360, model="Tesla T4")], heartbeat_every=None
    )
    settings = Settings(node_policy="binpack", card_policy="binpack", filter_answer="all")
    app = create_app(Extender(state, backend, settings))
    with TestClient(app) as client:
        yield client, backend, state


def node_obj(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"x": "y"}}, "status": {}}


def cache_args(p: dict[str, Any], names: list[str] = NODES) -> dict[str, Any]:
    return {"Pod": p, "Nodes": None, "NodeNames": names}


def full_args(p: dict[str, Any], names: list[str] = NODES) -> dict[str, Any]:
    return {
        "Pod": p,
        "Nodes": {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": [node_obj(n) for n in names]},
        "NodeNames": None,
    }


def test_filter_node_cache_capable_returns_every_fitting_node(env: Any) -> None:
    client, _, _ = env
    r = client.post("/filter", json=cache_args(pod("p", limits(4, cores=20, memory_gib=3))))
    assert r.status_code == 200
    body = r.json()
    assert body["NodeNames"] == ["big"]
    assert body["Nodes"] is None
    assert "asks for 4 vGPUs, node has 2 cards" in body["FailedAndUnresolvableNodes"]["small"]
    assert body["Error"] == ""


def test_filter_full_node_list_mode_answers_with_nodes(env: Any) -> None:
    client, _, _ = env
    body = client.post("/filter", json=full_args(pod("p", limits(1, cores=20)))).json()
    assert [n["metadata"]["name"] for n in body["Nodes"]["items"]] == NODES
    assert body["Nodes"]["items"][0]["metadata"]["labels"] == {"x": "y"}  # objects passed through whole
    assert body["NodeNames"] is None


def test_invalid_request_is_an_unresolvable_reason_not_a_500(env: Any) -> None:
    client, _, _ = env
    r = client.post("/filter", json=cache_args(pod("p", limits(1, cores=130))))
    assert r.status_code == 200
    reasons = r.json()["FailedAndUnresolvableNodes"]
    assert set(reasons) == set(NODES)
    assert 'container "c0": huawei.com/vgpu-cores=130: must be at most 100' in reasons["big"]


def test_model_nobody_has(env: Any) -> None:
    client, _, _ = env
    p = pod("p", limits(1, cores=10) | {"huawei.com/vgpu-type.B200": "1"})
    reasons = client.post("/filter", json=cache_args(p)).json()["FailedAndUnresolvableNodes"]
    assert "no node has a card of model B200 (models in the cluster: NVIDIA H200, Tesla T4)" in reasons["t4"]


def bind(client: TestClient, backend: MemoryBackend, name: str, node_name: str, *containers: dict[str, Any]) -> str:
    backend.create_pod(pod(name, *containers))
    body = {"PodName": name, "PodNamespace": "default", "PodUID": f"uid-{name}", "Node": node_name}
    return str(client.post("/bind", json=body).json()["Error"])


def test_prioritize_scores_0_to_10_binpack_prefers_the_fuller_node(env: Any) -> None:
    client, backend, _ = env
    # Fill half of "big" first; binpack then ranks it above the empty "small".
    for i in range(4):
        assert bind(client, backend, f"f{i}", "big", limits(1)) == ""
    r = client.post("/prioritize", json=cache_args(pod("p", limits(1, cores=50, memory_gib=10)), ["big", "small"]))
    scores = {h["Host"]: h["Score"] for h in r.json()}
    assert all(0 <= s <= 10 for s in scores.values())
    assert scores["big"] == 10 and scores["small"] < 10


def test_prioritize_respects_a_per_pod_policy_override(env: Any) -> None:
    client, backend, _ = env
    for i in range(4):
        assert bind(client, backend, f"f{i}", "big", limits(1)) == ""
    p = pod("p", limits(1, cores=50, memory_gib=10), annotations={"vgpu.flexai.io/node-policy": "spread"})
    scores = {h["Host"]: h["Score"] for h in client.post("/prioritize", json=cache_args(p, ["big", "small"])).json()}
    assert scores["small"] > scores["big"]


def test_bind_records_the_allocation_and_views_show_it(env: Any) -> None:
    client, backend, _ = env
    p = pod("train", limits(2, cores=30, memory_gib=8))
    backend.create_pod(p)
    client.post("/filter", json=cache_args(p))
    r = client.post(
        "/bind", json={"PodName": "train", "PodNamespace": "default", "PodUID": "uid-train", "Node": "small"}
    )
    assert r.json() == {"Error": ""}
    stored = backend.get_pod("default", "train")
    assert stored is not None and stored["spec"]["nodeName"] == "small"
    assert '"cores":30' in stored["metadata"]["annotations"]["vgpu.flexai.io/allocation"]
    view = client.get("/v1/pods/default/train").json()
    assert view["state"] == "bound" and {s["card"] for s in view["slices"]} == {0, 1}
    detail = client.get("/v1/nodes/small").json()
    assert [c["cores_allocated"] for c in detail["card_details"]] == [30, 30]
    assert detail["card_details"][0]["memory_mib_allocated"] == 8192
    assert detail["card_details"][0]["slices"][0]["pod"] == "default/train"
    assert [a["name"] for a in client.get("/v1/allocations").json()] == ["train"]
    assert "flexai_card_allocated_cores_percent" in client.get("/metrics").text


def test_bind_of_a_pod_that_no_longer_fits_is_a_bind_error(env: Any) -> None:
    client, backend, state = env
    # t4 has 2 cards: two whole cards fit, the third pod (bound as if filter ran earlier) does not.
    assert bind(client, backend, "a", "t4", limits(1)) == ""
    assert bind(client, backend, "b", "t4", limits(1)) == ""
    err = bind(client, backend, "c", "t4", limits(1))
    assert 'node t4: container "c0": needs 1 cards with room' in err
    assert state.allocation("default/c") is None


def test_bind_of_an_unknown_pod_is_a_bind_error(env: Any) -> None:
    client, _, _ = env
    r = client.post("/bind", json={"PodName": "ghost", "PodNamespace": "d", "PodUID": "u", "Node": "t4"})
    assert r.status_code == 200 and r.json()["Error"] == "pod d/ghost: not found"


def test_a_repeated_bind_is_idempotent_and_a_second_node_is_refused(env: Any) -> None:
    client, backend, state = env
    assert bind(client, backend, "a", "big", limits(1, cores=50)) == ""
    again = {"PodName": "a", "PodNamespace": "default", "PodUID": "uid-a", "Node": "big"}
    assert client.post("/bind", json=again).json()["Error"] == ""
    assert "already" in client.post("/bind", json={**again, "Node": "small"}).json()["Error"]
    assert sum(u.cores for u in state.node("big").usage) == 50


def test_failed_commit_leaves_nothing_allocated(env: Any) -> None:
    client, backend, state = env
    p = pod("p", limits(1, cores=50))
    backend.create_pod(p)
    backend.fail_next_commit = "apiserver said no"
    r = client.post("/bind", json={"PodName": "p", "PodNamespace": "default", "PodUID": "uid-p", "Node": "big"})
    assert "apiserver said no" in r.json()["Error"]
    assert state.allocation("default/p") is None
    assert sum(u.cores for u in state.node("big").usage) == 0
    assert "flexai_bind_failures_total" in client.get("/metrics").text


def failures(client: TestClient) -> dict[str, float]:
    """``flexai_bind_failures_total`` by its reason label."""
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("flexai_bind_failures_total{"):
            label, value = line.split("} ")
            out[label.split('reason="')[1].rstrip('"')] = float(value)
    return out


def test_bind_failures_are_counted_by_their_reason_code(env: Any) -> None:
    client, backend, _ = env
    assert bind(client, backend, "a", "t4", limits(1)) == ""
    assert bind(client, backend, "b", "t4", limits(1)) == ""
    assert bind(client, backend, "c", "t4", limits(1)) != ""  # no card left
    ghost = {"PodName": "ghost", "PodNamespace": "d", "PodUID": "u", "Node": "t4"}
    assert client.post("/bind", json=ghost).json()["Error"] != ""
    again = {"PodName": "a", "PodNamespace": "default", "PodUID": "uid-a", "Node": "big"}
    assert client.post("/bind", json=again).json()["Error"] != ""  # bound to t4 already
    backend.create_pod(pod("n", limits(1)))
    nowhere = {"PodName": "n", "PodNamespace": "default", "PodUID": "uid-n", "Node": "no-such-node"}
    assert client.post("/bind", json=nowhere).json()["Error"] != ""
    # A message that names another failure's word does not change the label.
    backend.create_pod(pod("p", limits(1, cores=50)))
    backend.fail_next_commit = "pod not found, already invalid: no longer fits"
    r = client.post("/bind", json={"PodName": "p", "PodNamespace": "default", "PodUID": "uid-p", "Node": "big"})
    assert "no longer fits" in r.json()["Error"]
    assert failures(client) == {"no_fit": 1.0, "pod_gone": 1.0, "duplicate": 1.0, "unknown_node": 1.0, "backend": 1.0}


@pytest.fixture
def held() -> Iterator[tuple[TestClient, MemoryBackend, ClusterState, Extender, list[float]]]:
    """The env above with its extender and a clock the test moves (bind_hold_s 5)."""
    state = ClusterState()
    backend = MemoryBackend([node("small", 2)], heartbeat_every=None)
    ext = Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack", bind_hold_s=5))
    now = [1000.0]
    ext.clock = lambda: now[0]
    with TestClient(create_app(ext)) as client:
        yield client, backend, state, ext, now


def fits_two_whole_cards(client: TestClient) -> bool:
    body = client.post("/filter", json=cache_args(pod("q", limits(2, cores=100)), ["small"])).json()
    return bool(body["NodeNames"] == ["small"])


def test_unanswered_bind_keeps_its_slice_until_the_pod_shows_bound(held: Any) -> None:
    client, backend, state, _, _ = held
    backend.lose_next_reply = "read timed out"
    err = bind(client, backend, "a", "small", limits(1, cores=100))
    assert "read timed out" in err and "stays reserved" in err
    # The Binding may still land: its card is not offered to anyone else.
    assert state.state_of("default/a") is AllocState.ASSUMED
    assert not fits_two_whole_cards(client)
    again = {"PodName": "a", "PodNamespace": "default", "PodUID": "uid-a", "Node": "small"}
    assert "already in progress" in client.post("/bind", json=again).json()["Error"]
    backend.deliver_late()  # it landed; the watch says so
    assert state.state_of("default/a") is AllocState.BOUND
    assert client.post("/bind", json=again).json()["Error"] == ""  # kube-scheduler's retry: done
    assert not fits_two_whole_cards(client)
    assert sum(u.cores for u in state.node("small").usage) == 100


def test_unanswered_bind_that_never_lands_is_released_after_the_hold(held: Any) -> None:
    client, backend, state, _, now = held
    backend.lose_next_reply = "connection reset"
    assert "stays reserved" in bind(client, backend, "a", "small", limits(1, cores=100))
    now[0] += 4.9
    assert not fits_two_whole_cards(client)
    now[0] += 0.2  # past bind_hold_s: the Binding never landed, the card is free again
    assert fits_two_whole_cards(client)
    assert state.allocation("default/a") is None
    # The pod can be bound afresh.
    again = {"PodName": "a", "PodNamespace": "default", "PodUID": "uid-a", "Node": "small"}
    assert client.post("/bind", json=again).json()["Error"] == ""
    assert state.state_of("default/a") is AllocState.BOUND


def test_preempt_answers_one_node_whose_victims_free_a_fitting_slice(env: Any) -> None:
    client, backend, _ = env
    for name in ("v1", "v2"):
        assert bind(client, backend, name, "small", limits(1, cores=100)) == ""
    preemptor = pod("hi", limits(1, cores=60))
    preemptor["spec"]["priority"] = 1000
    args: dict[str, Any] = {
        "Pod": preemptor,
        "NodeNameToVictims": None,
        "NodeNameToMetaVictims": {
            "small": {"Pods": [{"UID": "uid-v1"}], "NumPDBViolations": 0},  # frees a whole card
            "t4": {"Pods": [{"UID": "cpu-pod"}], "NumPDBViolations": 1},  # no vGPU victim, but a PDB violation
        },
    }
    kept = client.post("/preempt", json=args).json()["NodeNameToMetaVictims"]
    # One node only (kube-scheduler would otherwise pick by its own order): fewest PDB violations.
    assert kept == {"small": {"Pods": [{"UID": "uid-v1"}], "NumPDBViolations": 0}}
    # Two cards needed: the proposed victim frees one, so the other lower-priority pod joins.
    # (Priority 2000: above "hi", whose nomination holds 60% of a card on small for it.)
    args["Pod"] = pod("hi2", limits(2, cores=60))
    args["Pod"]["spec"]["priority"] = 2000
    del args["NodeNameToMetaVictims"]["t4"]
    kept = client.post("/preempt", json=args).json()["NodeNameToMetaVictims"]
    assert kept == {"small": {"Pods": [{"UID": "uid-v1"}, {"UID": "uid-v2"}], "NumPDBViolations": 0}}
    # Not above the bound pods' priority (0): nothing may go beyond what kube-scheduler proposed,
    # and that alone frees only one card.
    args["Pod"]["spec"]["priority"] = 0
    assert client.post("/preempt", json=args).json()["NodeNameToMetaVictims"] == {}


def test_preempt_with_full_victim_pods(env: Any) -> None:
    client, backend, _ = env
    backend.create_pod(pod("v", limits(2, cores=100)))
    client.post("/bind", json={"PodName": "v", "PodNamespace": "default", "PodUID": "uid-v", "Node": "small"})
    args = {
        "Pod": pod("hi", limits(1, cores=100)),
        "NodeNameToVictims": {"small": {"Pods": [pod("v", limits(2, cores=100))], "NumPDBViolations": 0}},
    }
    kept = client.post("/preempt", json=args).json()["NodeNameToMetaVictims"]
    assert kept == {"small": {"Pods": [{"UID": "uid-v"}], "NumPDBViolations": 0}}


def test_stale_heartbeat_node_gets_no_new_pods(env: Any) -> None:
    client, backend, _ = env
    backend.heartbeat(datetime.now(UTC) - timedelta(seconds=120))
    body = client.post("/filter", json=cache_args(pod("p", limits(1, cores=10)))).json()
    assert body["NodeNames"] == []
    assert "heartbeat is stale" in body["FailedAndUnresolvableNodes"]["big"]


def test_unknown_node_has_a_reason(env: Any) -> None:
    client, _, _ = env
    body = client.post("/filter", json=cache_args(pod("p", limits(1, cores=10)), ["cpu-only"])).json()
    assert "no vGPU inventory" in body["FailedAndUnresolvableNodes"]["cpu-only"]


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        pytest.param("/filter", b"{not json", id="invalid-json"),
        pytest.param("/filter", b'{"NodeNames": ["a"]}', id="missing-pod"),
        pytest.param("/filter", b'{"Pod": null, "NodeNames": ["a"]}', id="null-pod"),
        pytest.param("/filter", b'{"Pod": {}, "NodeNames": "a"}', id="names-not-a-list"),
        pytest.param("/prioritize", b'{"Pod": 5}', id="pod-wrong-type"),
        pytest.param("/bind", b'{"PodName": "a"}', id="bind-missing-fields"),
        pytest.param(
            "/preempt", b'{"Pod": {}, "NodeNameToMetaVictims": {"a": {"Pods": [{"X": 1}]}}}', id="victim-no-uid"
        ),
    ],
)
def test_malformed_bodies_get_4xx_naming_the_field(env: Any, path: str, raw: bytes) -> None:
    client, _, _ = env
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    assert r.json()["detail"]


def test_huge_node_lists_are_answered(env: Any) -> None:
    client, _, _ = env
    names = [f"ghost-{i}" for i in range(50_000)]
    r = client.post("/filter", json=cache_args(pod("p", limits(1, cores=10)), names))
    assert r.status_code == 200 and len(r.json()["FailedAndUnresolvableNodes"]) == 50_000


def test_oversized_body_is_refused(env: Any) -> None:
    client, _, _ = env
    r = client.post("/filter", content=b" " * (65 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_health_ready_docs(env: Any) -> None:
    client, _, _ = env
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert "/filter" in client.get("/openapi.json").json()["paths"]
    assert client.get("/v1/nodes/nope").status_code == 404


# ---- a bind for a pod that is already bound (replays, forged or stale UIDs) ----


def exclusive_cards_used(state: ClusterState, name: str) -> int:
    node = state.node(name)
    assert node is not None
    return sum(1 for u in node.usage if u.cores >= 100)


@pytest.mark.parametrize(
    ("uid", "node_name"),
    [
        pytest.param("", "small", id="empty-uid-same-node"),
        pytest.param("", "big", id="empty-uid-other-node"),
        pytest.param("uid-forged", "small", id="other-uid-same-node"),
        pytest.param("uid-forged", "big", id="other-uid-other-node"),
    ],
)
def test_a_bind_for_a_bound_pod_never_removes_its_allocation(env: Any, uid: str, node_name: str) -> None:
    client, backend, state = env
    assert bind(client, backend, "a", "small", limits(1, cores=100)) == ""
    before = client.get("/v1/pods/default/a").json()
    replay = {"PodName": "a", "PodNamespace": "default", "PodUID": uid, "Node": node_name}
    err = client.post("/bind", json=replay).json()["Error"]
    assert "pod default/a" in err and "already bound to small" in err
    # The allocation is still there, unchanged, and still counted.
    assert client.get("/v1/pods/default/a").json() == before
    assert exclusive_cards_used(state, "small") == 1
    # Its card is not handed out again: only one of small's two cards is free.
    assert "needs 2 cards with room" in bind(client, backend, "b", "small", limits(2, cores=100))
    assert bind(client, backend, "c", "small", limits(1, cores=100)) == ""
    assert exclusive_cards_used(state, "small") == 2
    stored = backend.get_pod("default", "a")
    assert stored is not None and stored["spec"]["nodeName"] == "small"


def test_a_bind_with_another_uid_while_the_first_bind_is_held_keeps_the_hold(held: Any) -> None:
    client, backend, state, _, _ = held
    backend.lose_next_reply = "read timed out"
    assert "stays reserved" in bind(client, backend, "a", "small", limits(1, cores=100))
    for uid in ("", "uid-forged"):
        replay = {"PodName": "a", "PodNamespace": "default", "PodUID": uid, "Node": "small"}
        err = client.post("/bind", json=replay).json()["Error"]
        assert "pod default/a" in err and "small" in err
        assert state.state_of("default/a") is AllocState.ASSUMED
        assert state.allocation("default/a").uid == "uid-a"
    assert not fits_two_whole_cards(client)


def test_a_new_pod_under_an_old_name_replaces_the_old_allocation_once_the_old_pod_is_gone(env: Any) -> None:
    client, backend, state = env
    assert bind(client, backend, "a", "small", limits(1, cores=100)) == ""
    # The old pod is deleted and a new one made under its name; the scheduler has not heard
    # of the deletion yet (its watch is late), but the apiserver shows the new pod, unbound.
    backend.create_pod(pod("a", limits(2, cores=100), uid="uid-a2"))
    r = client.post("/bind", json={"PodName": "a", "PodNamespace": "default", "PodUID": "uid-a2", "Node": "small"})
    assert r.json() == {"Error": ""}
    a = state.allocation("default/a")
    assert a is not None and a.uid == "uid-a2" and len(a.slices) == 2
    assert exclusive_cards_used(state, "small") == 2  # the old pod's card was freed, not double counted
    # And a replay of the old UID now finds the new pod bound: refused, nothing moves.
    old = {"PodName": "a", "PodNamespace": "default", "PodUID": "uid-a", "Node": "big"}
    assert "already bound to small" in client.post("/bind", json=old).json()["Error"]
    assert state.allocation("default/a").uid == "uid-a2"


def test_a_bind_for_a_pod_the_apiserver_shows_bound_is_refused_before_any_write(env: Any) -> None:
    client, backend, state = env
    p = pod("a", limits(1, cores=100))
    p["spec"]["nodeName"] = "small"  # bound by someone else; the scheduler has no record of it
    backend.create_pod(p)
    err = client.post("/bind", json={"PodName": "a", "PodNamespace": "default", "PodUID": "", "Node": "big"}).json()[
        "Error"
    ]
    assert "pod default/a" in err and "already bound to small" in err
    assert state.allocation("default/a") is None
    assert exclusive_cards_used(state, "big") == 0
