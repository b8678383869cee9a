"""Prioritize with the node's host (CPU, memory) for a host-aware policy, and its caches."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from flexai_sched import policies
from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.policies.fragmentation import Fragmentation
from flexai_sched.state import ClusterState
from flexai_sched.workload import NodeKind, TaskClass, Workload

from .fixtures import limits, node, pod

CPU = 64_000  # each node's allocatable millicores
# A target workload whose tasks ask for CPU (8 cores per GPU), as the trace replay gives it.
CPU_WORKLOAD = Workload.of([TaskClass(1, 100, 1.0, 8000), TaskClass(1, 50, 1.0, 4000), TaskClass(2, 100, 1.0, 16000)])


def gpu_pod(name: str, cpu: str = "1") -> dict[str, Any]:
    return pod(
        name,
        {
            "name": "m",
            "image": "x",
            "resources": {"limits": limits(1, cores=50, memory_gib=1), "requests": {"cpu": cpu}},
        },
    )


def make(policy: str = "fragmentation", hosts: bool = True) -> tuple[Extender, ClusterState]:
    state = ClusterState()
    backend = MemoryBackend([node("a"), node("b")], heartbeat_every=None)
    ext = Extender(state, backend, Settings(node_policy=policy))
    backend.start(state)
    if hosts:
        for n in ("a", "b"):
            state.set_host_capacity(n, CPU, 1024 * 1024)
    return ext, state


def ranks(ext: Extender, p: dict[str, Any]) -> dict[str, int]:
    return dict(ext.prioritize(p, ["a", "b"]))


@pytest.fixture
def cpu_aware(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fragmentation`` planning for a workload that asks for CPU (the default prior asks none)."""
    monkeypatch.setitem(policies._REGISTRY, "fragmentation", lambda: Fragmentation(CPU_WORKLOAD))


def test_default_fragmentation_ranks_a_host_the_pod_would_overcommit_below_an_identical_node() -> None:
    ext, state = make()
    p = gpu_pod("p", cpu="4")
    assert ranks(ext, p) == {"a": 10, "b": 10}  # identical nodes
    state.set_pod_host("ns/cpu-hog", "b", CPU - 2000, 0)  # 2 cores left on b's host
    assert ranks(ext, p) == {"a": 10, "b": 0}
    state.drop_pod_host("ns/cpu-hog")
    assert ranks(ext, p) == {"a": 10, "b": 10}  # the cached score went with the host change


def test_a_pod_that_would_strand_a_hosts_gpus_goes_to_the_node_with_cpu_to_spare(cpu_aware: None) -> None:
    ext, state = make()
    p = gpu_pod("p", cpu="1")
    state.set_pod_host("ns/cpu-only", "b", 56_000, 0)  # a CPU-only pod: 8 cores left for 8 free GPUs
    assert ranks(ext, p) == {"a": 10, "b": 0}
    # The host usage moves to a: the cached scores follow (no stale score on either node).
    state.set_pod_host("ns/cpu-only", "a", 56_000, 0)
    assert ranks(ext, p) == {"a": 0, "b": 10}


def test_scores_are_cached_per_host_request_and_filter_fills_them(cpu_aware: None) -> None:
    ext, state = make()
    state.set_pod_host("ns/cpu-only", "b", 56_000, 0)
    assert ext.filter(gpu_pod("p"), ["a", "b"]).fits == ["a", "b"]
    b = state.node("b")
    assert b is not None and len(b.host_cache) == 1  # filter scored with the host on its way
    small, big = ranks(ext, gpu_pod("p", cpu="1")), ranks(ext, gpu_pod("q", cpu="7"))
    assert len(b.host_cache) == 2  # same GPU shape, another host request: its own entry
    assert small == {"a": 10, "b": 0} and big == {"a": 10, "b": 0}
    raw = {n: state.node(n).host_cache for n in ("a", "b")}  # type: ignore[union-attr]
    assert raw["b"] != raw["a"] and len(set(raw["b"].values())) == 2  # the request changes b's score


def test_unknown_hosts_and_cards_only_policies_score_as_before() -> None:
    p = gpu_pod("p", cpu="4")
    for policy, hosts in (("fragmentation", False), ("binpack", True)):
        ext, state = make(policy, hosts)
        state.set_pod_host("ns/cpu-hog", "b", CPU - 2000, 0)
        assert ranks(ext, p) == {"a": 10, "b": 10}
        assert all(not state.node(n).host_cache for n in ("a", "b"))  # type: ignore[union-attr]


def test_bind_counts_the_pods_host_request_and_views_show_the_host() -> None:
    state = ClusterState()
    backend = MemoryBackend([node("a")], heartbeat_every=None)
    ext = Extender(state, backend, Settings())
    p = gpu_pod("p", cpu="1500m")
    backend.create_pod(p)
    with TestClient(create_app(ext)) as client:
        state.set_host_capacity("a", CPU, 2048)
        assert client.post(
            "/bind", json={"PodName": "p", "PodNamespace": "default", "PodUID": "uid-p", "Node": "a"}
        ).json() == {"Error": ""}
        host = client.get("/v1/nodes/a").json()["host"]
        assert host == {
            "cpu_milli_allocatable": CPU,
            "cpu_milli_requested": 1500,
            "cpu_milli_free": CPU - 1500,
            "memory_mib_allocatable": 2048,
            "memory_mib_requested": 0,
            "memory_mib_free": 2048,
        }
        backend.delete_pod("default", "p")
        assert client.get("/v1/nodes").json()[0]["host"]["cpu_milli_requested"] == 0


def test_learned_workload_turns_on_the_host_terms() -> None:
    """With the built-in prior (no CPU per class) a CPU-short host ranks like any other; once
    the target workload is learned from bound pods that ask 8 cores per GPU, it ranks lower."""
    ext, state = make()
    p = gpu_pod("p", cpu="1")
    state.set_pod_host("ns/cpu-only", "b", 56_000, 0)  # 8 cores left on b for 8 free GPUs
    assert ranks(ext, p) == {"a": 10, "b": 10}
    assert ext.learn_workload(min_pods=5) == 0  # one pod bound: the prior stays
    for i in range(4):  # GPU pods with 8 cores per GPU, bound on a
        q = gpu_pod(f"g{i}", cpu="4")
        assert ext.filter(q, ["a"]).fits == ["a"]
        ext.bind(q["metadata"]["namespace"], q["metadata"]["name"], q["metadata"]["uid"], "a")
    assert ext.learn_workload(min_pods=5) == 5
    assert all(not n.fit_cache and not n.host_cache for n in state.nodes())  # old scores went
    assert ranks(ext, p) == {"a": 10, "b": 0}


def test_relearning_the_same_workload_keeps_every_cached_answer() -> None:
    """learn_workload runs every 300 s: when no pod came or went, the target is the same and
    the caches (per node, per shape) stay; a pod more makes a new target, and they go."""
    ext, state = make()
    for i in range(5):
        q = gpu_pod(f"g{i}", cpu="4")
        assert ext.filter(q, ["a"]).fits == ["a"]
        ext.bind(q["metadata"]["namespace"], q["metadata"]["name"], q["metadata"]["uid"], "a")
    assert ext.learn_workload(min_pods=5) == 5
    p = gpu_pod("p", cpu="1")
    first = ranks(ext, p)
    caches = [(n.fit_cache, dict(n.fit_cache), n.host_cache, dict(n.host_cache)) for n in state.nodes()]
    seq, policy = state.change_seq(), ext._node_policy._m  # type: ignore[attr-defined]
    assert ext.learn_workload(min_pods=5) == 0
    assert state.change_seq() == seq and ext._node_policy._m is policy  # type: ignore[attr-defined]
    assert [(n.fit_cache, dict(n.fit_cache), n.host_cache, dict(n.host_cache)) for n in state.nodes()] == caches
    assert all(a is n.fit_cache for (a, *_), n in zip(caches, state.nodes(), strict=True))
    assert ranks(ext, p) == first
    q = gpu_pod("g9", cpu="16")
    assert ext.filter(q, ["a", "b"]).fits
    ext.bind(q["metadata"]["namespace"], q["metadata"]["name"], q["metadata"]["uid"], "b")
    assert ext.learn_workload(min_pods=5) == 6
    assert all(not n.fit_cache and not n.host_cache for n in state.nodes())


def test_a_policy_named_by_pods_is_one_object_that_learns_too() -> None:
    """A policy a pod names in its annotation keeps its memos and learned workload across calls."""
    ext, state = make(policy="binpack")
    first = ext._policy("fragmentation", ext._node_policy)
    assert ext._policy("fragmentation", ext._node_policy) is first
    for i in range(3):
        q = gpu_pod(f"g{i}", cpu="4")
        assert ext.filter(q, ["a"]).fits == ["a"]
        ext.bind(q["metadata"]["namespace"], q["metadata"]["name"], q["metadata"]["uid"], "a")
    before = first._m  # type: ignore[attr-defined]
    assert ext.learn_workload(min_pods=3) == 3
    assert first._m is not before  # type: ignore[attr-defined]


def test_prioritize_without_a_prior_filter_scores_a_node_that_no_longer_fits() -> None:
    # A bind between filter and prioritize empties the node's caches; if the pod no longer
    # fits, prioritize must say so (0), not fail looking for a score that was never made.
    ext, _ = make()
    too_big = pod(
        "big",
        {
            "name": "m",
            "image": "x",
            "resources": {"limits": limits(9, cores=50, memory_gib=1), "requests": {"cpu": "1"}},
        },
    )
    assert ranks(ext, too_big) == {"a": 0, "b": 0}


def test_the_learned_workload_keeps_the_gpu_models_pods_asked_for() -> None:
    """A pod bound with a model selector is learned as a task of that model, and the policy
    learns how many cards each model has: with pods that may only use the demo's T4 cards
    asking more than there are, T4 cards get a price (``Fragmentation.PRICE``)."""
    state = ClusterState()
    backend = MemoryBackend([node("a", cards=8, model="H200"), node("t", cards=1, model="T4")], heartbeat_every=None)
    ext = Extender(state, backend, Settings(node_policy="fragmentation"))
    backend.start(state)
    for n in ("a", "t"):
        state.set_host_capacity(n, CPU, 1024 * 1024)
    for i, model in enumerate(["T4", "T4", ""]):
        lim = limits(1, cores=20, memory_gib=1) | ({f"huawei.com/vgpu-type.{model}": "1"} if model else {})
        q = pod(f"q{i}", {"name": "m", "image": "x", "resources": {"limits": lim, "requests": {"cpu": "1"}}})
        fits = ext.filter(q, ["a", "t"]).fits
        assert fits == (["t"] if model else ["a", "t"])
        ext.bind(q["metadata"]["namespace"], q["metadata"]["name"], q["metadata"]["uid"], fits[0])
    assert ext.learn_workload(min_pods=3) == 3
    policy = ext._node_policy
    assert isinstance(policy, Fragmentation)
    models = {c.models for c in policy._workload.classes}
    assert models == {frozenset(), frozenset({"T4"})}
    # T4-only: 2/3 of the demand against 1/9 of the cards: pressure 6, price capped at PRICE,
    # on the kind of node "t" (the policy learned each node's cards and host).
    assert policy._m.price.exact == {
        ("T4", 1, CPU, 1024 * 1024): pytest.approx(Fragmentation.PRICE),
        ("H200", 8, CPU, 1024 * 1024): 0.0,
    }


def test_filter_shows_the_policy_each_pod_and_a_reprice_drops_the_cached_scores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default policy plans for no constraint; T4-only pods arrive. Filter hands each to
    the policy (``Observing``); after ``REPRICE_EVERY`` of them it prices T4 against the
    cards left, and every cached score goes."""
    state = ClusterState()
    backend = MemoryBackend([node("a", cards=8, model="H200"), node("t", cards=1, model="T4")], heartbeat_every=None)
    ext = Extender(state, backend, Settings(node_policy="fragmentation"))
    backend.start(state)
    for n in ("a", "t"):
        state.set_host_capacity(n, CPU, 1024 * 1024)
    policy = ext._node_policy
    assert isinstance(policy, Fragmentation)
    policy.use_workload(Workload.of([TaskClass(1, 20, 1.0)]))  # planned: shares that go anywhere
    policy.use_capacity(
        {"H200": 8, "T4": 1}, {NodeKind("H200", 8, CPU, 1024 * 1024): 1, NodeKind("T4", 1, CPU, 1024 * 1024): 1}
    )
    assert not policy._m.price
    lim = limits(1, cores=20, memory_gib=1) | {"huawei.com/vgpu-type.T4": "1"}
    q = pod("q", {"name": "m", "image": "x", "resources": {"limits": lim, "requests": {"cpu": "1"}}})
    for _ in range(Fragmentation.REPRICE_EVERY - 1):
        assert ext.filter(q, ["a", "t"]).fits == ["t"]
    assert not policy._m.price
    drops: list[int] = []
    monkeypatch.setattr(state, "drop_scores", lambda: drops.append(1))
    ext.filter(q, ["a", "t"])  # the last one: re-priced, cached scores dropped
    assert policy._m.price.exact == {
        ("T4", 1, CPU, 1024 * 1024): pytest.approx(Fragmentation.PRICE),
        ("H200", 8, CPU, 1024 * 1024): 0.0,
    }
    assert drops == [1]


def test_the_repricing_pass_counts_the_cards_a_bind_took_since_the_last_pass() -> None:
    """The pass over the nodes sums again only the nodes changed since the last one: a bind
    in between must still show in the free cards handed to the policy."""
    state = ClusterState()
    backend = MemoryBackend([node("a", cards=8, model="H200"), node("t", cards=1, model="T4")], heartbeat_every=None)
    ext = Extender(state, backend, Settings(node_policy="fragmentation"))
    backend.start(state)
    for n in ("a", "t"):
        state.set_host_capacity(n, CPU, 1024 * 1024)
    policy = ext._node_policy
    assert isinstance(policy, Fragmentation)
    t4, h200 = NodeKind("T4", 1, CPU, 1024 * 1024), NodeKind("H200", 8, CPU, 1024 * 1024)
    policy.use_capacity({"H200": 8, "T4": 1}, {h200: 1, t4: 1})
    ext.reprice()
    assert policy._free == {h200: 8.0, t4: 1.0}
    q = pod("q", {"name": "m", "image": "x", "resources": {"limits": limits(1, cores=40, memory_gib=1)}})
    assert ext.filter(q, ["t"]).fits == ["t"]
    ext.bind(q["metadata"]["namespace"], q["metadata"]["name"], q["metadata"]["uid"], "t")
    ext.reprice()
    assert policy._free == {h200: 8.0, t4: pytest.approx(0.6)}
