"""vGPU quotas and quota-aware preemption over HTTP, on the in-memory backend."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flexai_core import resources as res
from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.preemption import Budget
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod

NODES = ["big", "small"]
QUOTA_A = f"""
quotas:
  - name: team-a
    namespace: a
    hard: {{{res.VGPU_NUMBER}: 3, {res.VGPU_CORES}: 100, {res.VGPU_MEMORY}: 30}}
"""


@pytest.fixture
def env() -> Iterator[tuple[TestClient, MemoryBackend, ClusterState]]:
    state = ClusterState()
    backend = MemoryBackend([node("big", 8), node("small", 2)], heartbeat_every=None)
    app = create_app(
        Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack", filter_answer="all"))
    )
    with TestClient(app) as client:
        yield client, backend, state


def filter_(client: TestClient, p: dict[str, Any], names: list[str] = NODES) -> dict[str, Any]:
    r = client.post("/filter", json={"Pod": p, "Nodes": None, "NodeNames": names})
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def bind(client: TestClient, backend: MemoryBackend, p: dict[str, Any], node_name: str) -> str:
    backend.create_pod(p)
    meta = p["metadata"]
    body = {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node_name}
    return str(client.post("/bind", json=body).json()["Error"])


def with_priority(p: dict[str, Any], priority: int, **labels: str) -> dict[str, Any]:
    p["spec"]["priority"] = priority
    if labels:
        p["metadata"]["labels"] = labels
    return p


def test_a_pod_over_quota_is_refused_with_the_numbers_and_fits_when_usage_falls(env: Any) -> None:
    client, backend, _ = env
    assert backend.declare_quotas(QUOTA_A) == ""
    # a1: 2 x 30% / 10 GiB = 60 card-%, 20 GiB, 2 vGPUs.
    assert bind(client, backend, pod("a1", limits(2, cores=30, memory_gib=10), namespace="a"), "big") == ""
    # a2 asks 1 x 50% / 5 GiB: cores 60 + 50 = 110 > 100.
    a2 = pod("a2", limits(1, cores=50, memory_gib=5), namespace="a")
    body = filter_(client, a2)
    want = f"namespace a: over vGPU quota team-a: {res.VGPU_CORES} in use 60 + this pod 50 = 110 > limit 100 (card-%)"
    assert body["NodeNames"] == [] and body["FailedNodes"] == {"big": want, "small": want}
    # Another namespace is not limited.
    assert filter_(client, pod("b1", limits(1, cores=50, memory_gib=5), namespace="b"))["NodeNames"] == NODES
    # Usage shows over REST and in /metrics.
    q = client.get("/v1/quotas/team-a").json()
    assert q["used"] == {"vgpus": 2, "cores": 60, "memory_gib": 20.0} and q["namespaces"] == ["a"]
    assert q["hard"] == {"vgpus": 3, "cores": 100, "memory_gib": 30}
    metrics = client.get("/metrics").text
    assert f'flexai_quota_used{{quota="team-a",resource="{res.VGPU_CORES}"}} 60.0' in metrics
    assert f'flexai_quota_hard{{quota="team-a",resource="{res.VGPU_MEMORY}"}} 30.0' in metrics
    assert client.get("/v1/quotas/nope").status_code == 404
    # a1 goes: a2 fits (0 + 50 <= 100).
    backend.delete_pod("a", "a1")
    assert filter_(client, a2)["NodeNames"] == NODES
    assert client.get("/v1/quotas/team-a").json()["used"] == {"vgpus": 0, "cores": 0, "memory_gib": 0.0}


def test_a_quota_change_applies_at_once(env: Any) -> None:
    client, backend, _ = env
    backend.declare_quotas(QUOTA_A)
    assert bind(client, backend, pod("a1", limits(3, cores=20, memory_gib=5), namespace="a"), "big") == ""
    p = pod("a2", limits(1, cores=20, memory_gib=5), namespace="a")
    assert "vgpu-number in use 3 + this pod 1 = 4 > limit 3" in filter_(client, p)["FailedNodes"]["big"]
    backend.declare_quotas(QUOTA_A.replace(f"{res.VGPU_NUMBER}: 3", f"{res.VGPU_NUMBER}: 4"))
    assert filter_(client, p)["NodeNames"] == NODES
    # A bad edit is reported, not applied half-way: no quota is left from that source.
    err = backend.declare_quotas("quotas: [{name: x}]")
    assert "quotas[0]: give exactly one of namespace and namespaceSelector" in err
    listed = client.get("/v1/quotas").json()
    assert listed["quotas"] == [] and "demo/quotas" in listed["errors"]
    backend.declare_quotas("")
    assert client.get("/v1/quotas").json() == {"quotas": [], "errors": {}}


def test_a_label_group_shares_one_quota(env: Any) -> None:
    client, backend, _ = env
    backend.declare_quotas(f"""
quotas:
  - name: research
    namespaceSelector: {{matchLabels: {{group: research}}}}
    hard: {{{res.VGPU_NUMBER}: 2}}
""")
    backend.label_namespace("r1", {"group": "research"})
    backend.label_namespace("r2", {"group": "research"})
    assert bind(client, backend, pod("x", limits(1, cores=10, memory_gib=1), namespace="r1"), "big") == ""
    assert bind(client, backend, pod("y", limits(1, cores=10, memory_gib=1), namespace="r2"), "big") == ""
    reason = filter_(client, pod("z", limits(1, cores=10, memory_gib=1), namespace="r2"))["FailedNodes"]["big"]
    assert reason.startswith("namespace r2 (in quota research's group): over vGPU quota research: ")
    assert "in use 2 + this pod 1 = 3 > limit 2" in reason
    assert client.get("/v1/quotas/research").json()["namespaces"] == ["r1", "r2"]


def test_a_pod_that_gives_no_memory_under_a_memory_quota_is_unresolvable(env: Any) -> None:
    client, backend, _ = env
    backend.declare_quotas(QUOTA_A)
    body = filter_(client, pod("whole", limits(1), namespace="a"))
    assert body["FailedNodes"] == {}
    assert "must give huawei.com/vgpu-memory-1Gi" in body["FailedAndUnresolvableNodes"]["big"]


def test_bind_rechecks_the_quota_so_two_pods_filtered_together_cannot_overshoot(env: Any) -> None:
    client, backend, state = env
    backend.declare_quotas(QUOTA_A)
    p1 = pod("p1", limits(1, cores=60, memory_gib=5), namespace="a")
    p2 = pod("p2", limits(1, cores=60, memory_gib=5), namespace="a")
    assert filter_(client, p1)["NodeNames"] == NODES and filter_(client, p2)["NodeNames"] == NODES
    assert bind(client, backend, p1, "big") == ""
    err = bind(client, backend, p2, "small")
    assert "over vGPU quota team-a: huawei.com/vgpu-cores in use 60 + this pod 60 = 120 > limit 100" in err
    assert state.allocation("a/p2") is None


def preempt(client: TestClient, p: dict[str, Any], proposed: dict[str, list[str]]) -> dict[str, Any]:
    args = {
        "Pod": p,
        "NodeNameToVictims": None,
        "NodeNameToMetaVictims": {
            n: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": 0} for n, uids in proposed.items()
        },
    }
    r = client.post("/preempt", json=args)
    assert r.status_code == 200
    got: dict[str, Any] = r.json()["NodeNameToMetaVictims"]
    return {n: sorted(p["UID"] for p in v["Pods"]) for n, v in got.items()}


def test_a_pod_over_quota_preempts_only_in_its_namespace_and_that_frees_quota(env: Any) -> None:
    client, backend, _ = env
    backend.declare_quotas(QUOTA_A)
    # small: card 0 a-low (ns a, 50%), card 1 b-low (ns b, 100%); big holds a-mid (ns a, 40%).
    assert (
        bind(client, backend, with_priority(pod("a-low", limits(1, cores=50, memory_gib=5), namespace="a"), 1), "small")
        == ""
    )
    assert (
        bind(
            client, backend, with_priority(pod("b-low", limits(1, cores=100, memory_gib=1), namespace="b"), 1), "small"
        )
        == ""
    )
    assert (
        bind(client, backend, with_priority(pod("a-mid", limits(1, cores=40, memory_gib=5), namespace="a"), 50), "big")
        == ""
    )
    # hi (ns a, priority 100) asks 1 x 60% / 5 GiB: quota cores 90 + 60 = 150 > 100.
    hi = with_priority(pod("hi", limits(1, cores=60, memory_gib=5), namespace="a"), 100)
    # On small, evicting a-low frees 50 card-% of the quota (90 - 50 + 60 = 100) and card 0
    # (0 + 60 <= 100): one victim. b-low would free a card but no quota: never chosen.
    # On big (7 empty cards), a-mid frees 40 (90 - 40 + 60 = 110 > 100): not enough.
    assert preempt(client, hi, {"small": [], "big": []}) == {"small": ["uid-a-low"]}
    # Its filter still says why (and starts no preemption of its own: one is under way).
    assert "over vGPU quota team-a" in filter_(client, hi)["FailedNodes"]["small"]
    # Without a quota any namespace's pods may go, and the fewest cores x GiB win: each frees a
    # card on its own; b-low costs 100% x 1 GiB = 100 < a-low's 50% x 5 GiB = 250.
    backend.declare_quotas("")
    hi2 = with_priority(pod("hi2", limits(1, cores=100, memory_gib=5), namespace="a"), 200)
    assert preempt(client, hi2, {"small": []}) == {"small": ["uid-b-low"]}


def test_preempt_respects_a_pdb_and_holds_the_freed_cards_for_the_preemptor(env: Any) -> None:
    client, backend, state = env
    # small: card 0 db (protected, 100%), card 1 w1 + w2 (50% each).
    assert (
        bind(client, backend, with_priority(pod("db", limits(1, cores=100, memory_gib=5)), 1, app="db"), "small") == ""
    )
    for n in ("w1", "w2"):
        assert bind(client, backend, with_priority(pod(n, limits(1, cores=50, memory_gib=5)), 1), "small") == ""
    state.set_budget(Budget("default", "db", (("app", "db"),), (), 0))
    hi = with_priority(pod("hi", limits(1, cores=100, memory_gib=5)), 100)
    # db alone would do (1 victim) but violates its budget: w1 + w2 (0 violations) instead.
    assert preempt(client, hi, {"small": []}) == {"small": ["uid-w1", "uid-w2"]}
    backend.delete_pod("default", "w1")
    backend.delete_pod("default", "w2")
    # Card 1 is free now, but held for hi: a lower-priority pod does not get it ...
    low = with_priority(pod("low", limits(1, cores=100, memory_gib=5)), 5)
    body = filter_(client, low, ["small"])
    assert body["NodeNames"] == [] and "held for a preempting pod" in body["FailedNodes"]["small"]
    # ... a higher-priority one would (kube-scheduler counts nominated pods of >= priority only) ...
    assert filter_(client, with_priority(pod("top", limits(1, cores=100, memory_gib=5)), 500), ["small"])["NodeNames"]
    state.unreserve("default/top")  # never bound: its cycle ends, its reservation with it
    # ... and hi itself fits, binds there, and the hold ends.
    assert filter_(client, hi, ["small"])["NodeNames"] == ["small"]
    assert bind(client, backend, hi, "small") == ""
    assert state.allocation("default/hi") is not None
    assert "held" not in str(filter_(client, low, ["small"]))


def test_the_demo_quota_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "quotas.yaml"
    f.write_text(QUOTA_A)
    state = ClusterState()
    backend = MemoryBackend([node("big", 8)], heartbeat_every=None, quota_file=str(f))
    backend.start(state)
    assert [s.quota.vgpus for s in state.quotas.status()] == [3]
    f.write_text(QUOTA_A.replace(f"{res.VGPU_NUMBER}: 3", f"{res.VGPU_NUMBER}: 7"))
    os.utime(f, (1, 1))  # a new mtime whatever the clock's resolution
    backend.reload_quota_file()
    assert [s.quota.vgpus for s in state.quotas.status()] == [7]


def test_a_pod_contending_only_for_vgpus_preempts_through_filter(env: Any) -> None:
    # kube-scheduler never calls the preempt verb for such a pod (its own filters need no victim),
    # so the extender's filter starts the preemption itself, in the background.
    client, backend, state = env
    for n, prio in (("x", 1), ("y", 1)):  # small: card 0 x (100%), card 1 y (60% / 20 GiB)
        assert (
            bind(
                client,
                backend,
                with_priority(pod(n, limits(1, cores=100 if n == "x" else 60, memory_gib=20)), prio),
                "small",
            )
            == ""
        )
    # big is out of the picture: kube-scheduler's filters (node selector, say) passed small only.
    hi = with_priority(pod("hi", limits(1, cores=100, memory_gib=5)), 100)
    body = filter_(client, hi, ["small"])
    assert body["NodeNames"] == []
    # Either card would do with one victim: x costs 100 x 20 = 2000, y 60 x 20 = 1200: y goes.
    wait_preemptions()
    assert backend.evicted == ["default/y"]
    # The freed card is held for hi: a lower-priority pod does not get it (and, of x's priority,
    # may not evict x), hi does.
    low = with_priority(pod("low", limits(1, cores=100, memory_gib=5)), 1)
    assert "held for a preempting pod" in filter_(client, low, ["small"])["FailedNodes"]["small"]
    assert filter_(client, hi, ["small"])["NodeNames"] == ["small"]
    assert bind(client, backend, hi, "small") == ""
    assert backend.evicted == ["default/y"] and state.allocation("default/x") is not None


def test_filter_never_preempts_a_pdb_protected_pod_or_for_a_pod_without_priority(env: Any) -> None:
    client, backend, state = env
    assert (
        bind(client, backend, with_priority(pod("db", limits(2, cores=100, memory_gib=5)), 1, app="db"), "small") == ""
    )
    state.set_budget(Budget("default", "db", (("app", "db"),), (), 0))
    hi = with_priority(pod("hi", limits(1, cores=100, memory_gib=5)), 100)
    assert filter_(client, hi, ["small"])["NodeNames"] == []
    plain = pod("plain", limits(1, cores=100, memory_gib=5))  # priority 0: never preempts
    assert filter_(client, plain, ["small"])["NodeNames"] == []
    wait_preemptions()  # the background choice found only a PDB-violating set: nothing evicted
    assert backend.evicted == [] and state.allocation("default/db") is not None


def wait_preemptions(timeout: float = 10.0) -> None:
    """Until the extender's background preemption threads have ended."""
    deadline = time.monotonic() + timeout
    while any(t.name.startswith("preempt-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a preemption thread still runs"
        time.sleep(0.01)


def test_a_refusal_for_quota_reads_the_namespace_back_when_the_watch_lags(env: Any) -> None:
    # kube-scheduler retries the pod on the deletion that freed the quota; our watch may not
    # have seen it yet: the refusal reads the namespace's pods back first.
    client, backend, state = env
    backend.declare_quotas(QUOTA_A)
    assert bind(client, backend, pod("a1", limits(3, cores=20, memory_gib=5), namespace="a"), "big") == ""
    p = pod("a2", limits(1, cores=20, memory_gib=5), namespace="a")
    assert "4 > limit 3" in filter_(client, p)["FailedNodes"]["big"]
    backend.delete_pod("a", "a1", notify=False)
    assert state.allocation("a/a1") is not None  # the watch has not said so yet
    assert filter_(client, p)["NodeNames"] == NODES
    assert state.allocation("a/a1") is None
