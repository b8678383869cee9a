"""KubeBackend against the real kube-apiserver: its watches and its one-write commit.

No scheduler takes part: the pods name a scheduler that does not exist, and the tests
call the backend as the extender does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import urllib3
from kubernetes import client as k8s
from prometheus_client import generate_latest

from flexai_core import annotations as ann
from flexai_core.model import Allocation, CardUsage, Slice
from flexai_sched.backend import CommitError, CommitUnknown
from flexai_sched.config import Settings
from flexai_sched.extender import BindError, Extender
from flexai_sched.kube import KubeBackend
from flexai_sched.metrics import Metrics
from flexai_sched.state import AllocState, ClusterState
from flexai_sched.workload import Host

from .controlplane import ControlPlane, wait_until
from .helpers_kube import NS, cards, gpu_node, pod_body, pods, set_inventory, set_phase, vgpu_pod

pytestmark = pytest.mark.e2e

NOBODY = "flexai-e2e-no-scheduler"
H200 = cards(2)


@pytest.fixture
def state() -> ClusterState:
    return ClusterState()


@pytest.fixture
def backend(control_plane: ControlPlane, core_api: k8s.CoreV1Api, state: ClusterState) -> Iterator[KubeBackend]:
    b = KubeBackend(kubeconfig=str(control_plane.kubeconfig))
    b.start(state)
    assert b.ready()
    yield b
    b.stop()


def alloc_for(name: str, uid: str, node: str = "g1", card: int = 0, cores: int = 30, gib: int = 4) -> Allocation:
    s = Slice("main", card, H200[card].uuid, cores, gib * 1024)
    return Allocation.build(NS, name, uid, node, (s,))


def bind_as_another(core_api: k8s.CoreV1Api, name: str, node: str) -> None:
    """Bind the pod as some other scheduler would: a plain Binding, no allocation annotation."""
    core_api.create_namespaced_pod_binding(
        name,
        NS,
        {"metadata": {"name": name}, "target": {"kind": "Node", "name": node}},  # type: ignore[arg-type]
        _preload_content=False,
    )


def wait_state(what: str, pred: object) -> None:
    assert callable(pred)
    wait_until(pred, 15, what, interval=0.05)


def test_commit_binds_and_annotates_in_one_write(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    gpu_node(core_api, "g1", H200)
    uid = vgpu_pod(core_api, "p", 1, 30, 4, scheduler=NOBODY)
    a = alloc_for("p", uid)
    backend.commit(a)
    p = pods(core_api)["p"]
    assert p.node == "g1"
    assert p.allocation == a
    # The watch shows it bound: counted on card 0 (30% + 4 GiB, one vGPU).
    wait_state("allocation observed", lambda: state.state_of("default/p") is AllocState.BOUND)
    node = state.node("g1")
    assert node is not None and node.usage[0] == CardUsage(30, 4096, 1)


def test_commit_refuses_a_recreated_pod(backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api) -> None:
    gpu_node(core_api, "g1", H200)
    old_uid = vgpu_pod(core_api, "p", 1, 30, 4, scheduler=NOBODY)
    core_api.delete_namespaced_pod("p", NS, grace_period_seconds=0)
    wait_until(lambda: "p" not in pods(core_api), 15, "pod deleted")
    new_uid = vgpu_pod(core_api, "p", 1, 30, 4, scheduler=NOBODY)
    assert new_uid != old_uid
    with pytest.raises(CommitError, match="UID"):
        backend.commit(alloc_for("p", old_uid))
    p = pods(core_api)["p"]
    assert p.node is None and p.allocation is None  # nothing half-written


def test_commit_refuses_a_pod_bound_elsewhere_and_writes_nothing(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    gpu_node(core_api, "g1", H200)
    gpu_node(core_api, "g2", H200)
    uid = vgpu_pod(core_api, "p", 1, 30, 4, scheduler=NOBODY)
    # Someone else binds it first (no allocation annotation).
    bind_as_another(core_api, "p", "g2")
    with pytest.raises(CommitError, match="already assigned"):
        backend.commit(alloc_for("p", uid, node="g1"))
    p = pods(core_api)["p"]
    assert p.node == "g2" and p.allocation is None
    assert state.allocation("default/p") is None


def test_commit_without_an_answer_is_unknown_not_refused(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Binding's answer is lost (a read timeout injected in the client, before sending);
    the pod, read back from the real apiserver, is not bound: the outcome is unknown, which
    the extender must treat differently from a refusal (it keeps the slice reserved)."""
    gpu_node(core_api, "g1", H200)
    uid = vgpu_pod(core_api, "p", 1, 30, 4, scheduler=NOBODY)

    def no_answer(*args: Any, **kwargs: Any) -> Any:
        raise urllib3.exceptions.ReadTimeoutError(None, "/binding", "read timed out")  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "_post", no_answer)
    with pytest.raises(CommitUnknown, match="does not show it bound"):
        backend.commit(alloc_for("p", uid))
    assert pods(core_api)["p"].node is None


def test_commit_whose_answer_is_lost_but_landed_counts_as_done(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Binding lands but its answer is lost: the read-back shows the pod bound as asked."""
    gpu_node(core_api, "g1", H200)
    uid = vgpu_pod(core_api, "p", 1, 30, 4, scheduler=NOBODY)
    real = backend._post

    def lands_then_times_out(*args: Any, **kwargs: Any) -> Any:
        assert real(*args, **kwargs)[0] == 201  # landed
        raise urllib3.exceptions.ReadTimeoutError(None, "/binding", "read timed out")  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "_post", lands_then_times_out)
    a = alloc_for("p", uid)
    backend.commit(a)  # no exception: the pod says it is done
    assert pods(core_api)["p"].allocation == a


def test_finished_and_deleted_pods_free_their_slices(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    gpu_node(core_api, "g1", H200)
    uid_a = vgpu_pod(core_api, "a", 1, 30, 4, scheduler=NOBODY)
    uid_b = vgpu_pod(core_api, "b", 1, 30, 4, scheduler=NOBODY)
    backend.commit(alloc_for("a", uid_a, card=0))
    backend.commit(alloc_for("b", uid_b, card=1))
    wait_state("both counted", lambda: len(list(state.keys())) == 2)
    # a: Succeeded (its containers ended) frees card 0 at once.
    set_phase(core_api, "a", "Succeeded")
    wait_state("a released", lambda: state.allocation("default/a") is None)
    # b: deleted frees card 1.
    core_api.delete_namespaced_pod("b", NS, grace_period_seconds=0)
    wait_state("b released", lambda: state.allocation("default/b") is None)
    node = state.node("g1")
    assert node is not None and node.usage == (CardUsage(), CardUsage())


def test_unbound_pod_events_never_release_an_assumed_allocation(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    gpu_node(core_api, "g1", H200)
    uid = vgpu_pod(core_api, "inflight", 1, 30, 4, scheduler=NOBODY)
    wait_state("node known", lambda: state.node("g1") is not None)
    a = alloc_for("inflight", uid)
    state.assume(a, lambda n: True)  # as the extender's bind does before its commit
    core_api.patch_namespaced_pod("inflight", NS, {"metadata": {"labels": {"touched": "yes"}}})
    core_api.delete_namespaced_pod("inflight", NS, grace_period_seconds=0)
    # A marker bound after those events: once it is counted, the events above were handled.
    uid_m = vgpu_pod(core_api, "marker", 1, 30, 4, scheduler=NOBODY)
    backend.commit(alloc_for("marker", uid_m, card=1))
    wait_state("marker counted", lambda: state.state_of("default/marker") is AllocState.BOUND)
    assert state.state_of("default/inflight") is AllocState.ASSUMED


def test_node_inventory_decides_whether_a_node_is_known(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    gpu_node(core_api, "g1", H200)
    wait_state("node known", lambda: state.node("g1") is not None)
    set_inventory(core_api, "g1", '{"v": 1, "cards": [{"index": 0}]}')  # malformed: no uuid
    wait_state("malformed: left out", lambda: state.node("g1") is None)
    set_inventory(core_api, "g1", ann.encode_inventory(cards(3), datetime.now(UTC)))
    wait_state("readable again, 3 cards", lambda: (n := state.node("g1")) is not None and len(n.cards) == 3)
    set_inventory(core_api, "g1", None)  # the agent's annotation removed
    wait_state("no annotation: left out", lambda: state.node("g1") is None)
    set_inventory(core_api, "g1", ann.encode_inventory(H200, datetime.now(UTC)))
    wait_state("back", lambda: state.node("g1") is not None)
    core_api.delete_node("g1")
    wait_state("deleted: gone", lambda: state.node("g1") is None)


def test_a_new_backend_rebuilds_the_same_state(
    backend: KubeBackend, state: ClusterState, control_plane: ControlPlane, core_api: k8s.CoreV1Api
) -> None:
    gpu_node(core_api, "g1", H200)
    gpu_node(core_api, "g2", H200)
    made = []
    for i, (node, card) in enumerate([("g1", 0), ("g1", 0), ("g1", 1), ("g2", 1)]):
        uid = vgpu_pod(core_api, f"p{i}", 1, 30, 4, scheduler=NOBODY)
        a = alloc_for(f"p{i}", uid, node=node, card=card)
        backend.commit(a)
        made.append(a)
    # A finished pod and an unbound one must not count after the restart either.
    vgpu_pod(core_api, "pending", 1, 30, 4, scheduler=NOBODY)
    set_phase(core_api, "p3", "Failed")
    fresh = ClusterState()
    again = KubeBackend(kubeconfig=str(control_plane.kubeconfig))
    again.start(fresh)
    try:
        assert again.ready()
        got = {a.key: a for a, st in fresh.allocations() if st is AllocState.BOUND}
        assert got == {a.key: a for a in made[:3]}
        g1, g2 = fresh.node("g1"), fresh.node("g2")
        assert g1 is not None and g2 is not None
        # g1: card 0 holds p0 + p1 (60%, 8 GiB, 2 vGPUs), card 1 holds p2.
        assert g1.usage == (CardUsage(60, 8192, 2), CardUsage(30, 4096, 1))
        assert g2.usage == (CardUsage(), CardUsage())
    finally:
        again.stop()


class Faults:
    """Wraps the backend's list/watch calls to the real apiserver and injects one fault."""

    def __init__(self, real: Callable[..., Any], fault: str) -> None:
        self.real, self.fault = real, fault
        self.lists = self.watches = 0
        self.paused, self.resume = threading.Event(), threading.Event()

    def __call__(self, api: k8s.CoreV1Api, **kw: Any) -> Any:
        if not kw.get("watch"):
            self.lists += 1
            return self.real(api, **kw)
        self.watches += 1
        if self.watches == 1 and self.fault == "expired":
            kw["resource_version"] = "1"  # far older than the apiserver's watch window: 410 Gone
        if self.watches == 1 and self.fault == "dropped":
            raise urllib3.exceptions.ProtocolError("connection dropped (injected)")
        if self.watches == 2 and self.fault == "missed":
            # Between two watches the test deletes a pod; then the window has expired.
            self.paused.set()
            self.resume.wait(30)
            kw["resource_version"] = "1"
        return self.real(api, **kw)


@pytest.mark.parametrize("fault", ["expired", "dropped"])
def test_pod_watch_relists_when_expired_and_reconnects_when_dropped(
    control_plane: ControlPlane, core_api: k8s.CoreV1Api, fault: str
) -> None:
    gpu_node(core_api, "g1", H200)
    state = ClusterState()
    b = KubeBackend(kubeconfig=str(control_plane.kubeconfig), backoff_s=(0.05, 0.5))
    faults = Faults(KubeBackend._list_pods, fault)
    b._list_pods = faults  # type: ignore[method-assign]
    b.start(state)
    try:
        # Bound after the first list: only a working watch (or a relist) can show it.
        uid = vgpu_pod(core_api, "late", 1, 30, 4, scheduler=NOBODY)
        b.commit(alloc_for("late", uid))
        wait_state("late counted", lambda: state.state_of("default/late") is AllocState.BOUND)
        core_api.delete_namespaced_pod("late", NS, grace_period_seconds=0)
        wait_state("late released", lambda: state.allocation("default/late") is None)
        if fault == "expired":
            assert faults.lists == 2, "410 Gone must lead to a fresh list"
        else:
            assert faults.lists == 1 and faults.watches >= 2, "a dropped watch resumes, no relist"
    finally:
        b.stop()


def test_a_relist_releases_pods_deleted_while_no_watch_ran(
    control_plane: ControlPlane, core_api: k8s.CoreV1Api
) -> None:
    gpu_node(core_api, "g1", H200)
    state = ClusterState()
    # The server ends each watch after 1 s, so a second watch call comes soon.
    b = KubeBackend(kubeconfig=str(control_plane.kubeconfig), watch_timeout_s=1, backoff_s=(0.05, 0.5))
    faults = Faults(KubeBackend._list_pods, "missed")
    b._list_pods = faults  # type: ignore[method-assign]
    b.start(state)
    try:
        uid = vgpu_pod(core_api, "gone", 1, 30, 4, scheduler=NOBODY)
        b.commit(alloc_for("gone", uid))
        wait_state("gone counted", lambda: state.state_of("default/gone") is AllocState.BOUND)
        assert faults.paused.wait(30), "no second watch"
        core_api.delete_namespaced_pod("gone", NS, grace_period_seconds=0)
        wait_until(lambda: "gone" not in pods(core_api), 15, "pod deleted")
        assert state.allocation("default/gone") is not None  # no watch ran: not seen yet
        faults.resume.set()
        wait_state("released by the relist", lambda: state.allocation("default/gone") is None)
        assert faults.lists == 2
    finally:
        faults.resume.set()
        b.stop()


def test_host_capacity_and_every_bound_pods_requests_are_counted(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    gpu_node(core_api, "g1", H200)  # kwok: 32 CPUs, 256 GiB allocatable
    wait_state("capacity", lambda: state.host_of("g1") == Host(32000, 256 * 1024))
    for name, cpu in (("cpu-a", "1"), ("cpu-b", "250m")):
        body = pod_body(name, {"main": {"cpu": cpu, "memory": "1Gi"}}, scheduler=NOBODY)
        core_api.create_namespaced_pod(NS, body)
        bind_as_another(core_api, name, "g1")
    wait_state("both pods counted", lambda: state.host_of("g1") == Host(32000, 256 * 1024, 1250, 2048))
    node = state.node("g1")
    assert node is not None and node.host == Host(32000, 256 * 1024, 1250, 2048)
    set_phase(core_api, "cpu-a", "Succeeded")
    wait_state("a finished", lambda: state.host_of("g1") == Host(32000, 256 * 1024, 250, 1024))
    core_api.delete_namespaced_pod("cpu-b", NS, grace_period_seconds=0)
    wait_state("b deleted", lambda: state.host_of("g1") == Host(32000, 256 * 1024, 0, 0))


# ---- the extender's bind on this backend: a bound pod keeps its allocation ----


def test_a_bind_for_a_bound_pod_never_replaces_its_allocation(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    """Replays with an empty or another UID, to its node or another: each is refused naming
    the pod and its node; the apiserver's pod and the scheduler's record stay as they were,
    and the card it holds exclusively is not handed out again."""
    gpu_node(core_api, "g1", H200)
    gpu_node(core_api, "g2", H200)
    wait_state("nodes known", lambda: state.node("g1") is not None and state.node("g2") is not None)
    ext = Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack"))
    uid = vgpu_pod(core_api, "p", 1, 100, scheduler=NOBODY)
    bound = ext.bind(NS, "p", uid, "g1")
    wait_state("bound seen", lambda: state.state_of("default/p") is AllocState.BOUND)
    for replay_uid in ("", "0b5a1c4e-0000-4000-8000-000000000000"):
        for node in ("g1", "g2"):
            with pytest.raises(BindError) as refused:
                ext.bind(NS, "p", replay_uid, node)
            assert state.allocation("default/p") == bound
            p = pods(core_api)["p"]
            assert (p.node, p.allocation) == ("g1", bound)
            assert "pod default/p: already bound to g1" in str(refused.value)
    # The other card of g1 is free, the held one is not: a two-card exclusive pod cannot land.
    uid_q = vgpu_pod(core_api, "q", 2, 100, scheduler=NOBODY)
    with pytest.raises(BindError, match="needs 2 cards with room"):
        ext.bind(NS, "q", uid_q, "g1")
    g1 = state.node("g1")
    assert g1 is not None and [u.cores for u in g1.usage] == [100, 0]


def test_a_bind_for_a_pod_the_apiserver_shows_bound_elsewhere_is_refused(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    """Bound by someone else (the scheduler holds no allocation for it): refused from the
    pod as read back, before anything is assumed or written."""
    gpu_node(core_api, "g1", H200)
    gpu_node(core_api, "g2", H200)
    wait_state("nodes known", lambda: state.node("g1") is not None)
    uid = vgpu_pod(core_api, "p", 1, 100, scheduler=NOBODY)
    bind_as_another(core_api, "p", "g2")
    ext = Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack"))
    for replay_uid in ("", uid):
        with pytest.raises(BindError, match="pod default/p: already bound to g2"):
            ext.bind(NS, "p", replay_uid, "g1")
    assert state.allocation("default/p") is None
    p = pods(core_api)["p"]
    assert (p.node, p.allocation) == ("g2", None)


def test_a_new_pod_under_an_old_name_is_bound_once_the_old_one_is_gone(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    """The replacement is told from a replay by the apiserver: the name now belongs to an
    unbound pod of another UID. It binds at once, whether or not the watch has shown the
    old pod's deletion yet, and the old pod's card is free for it."""
    gpu_node(core_api, "g1", cards(1))
    wait_state("node known", lambda: state.node("g1") is not None)
    ext = Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack"))
    old_uid = vgpu_pod(core_api, "p", 1, 100, scheduler=NOBODY)
    ext.bind(NS, "p", old_uid, "g1")
    core_api.delete_namespaced_pod("p", NS, grace_period_seconds=0)
    wait_until(lambda: "p" not in pods(core_api), 15, "pod deleted")
    new_uid = vgpu_pod(core_api, "p", 1, 100, scheduler=NOBODY)
    got = ext.bind(NS, "p", new_uid, "g1")  # the only card: free only if the old pod's went
    assert got.uid == new_uid
    p = pods(core_api)["p"]
    assert (p.uid, p.node, p.allocation) == (new_uid, "g1", got)
    wait_state("new pod counted", lambda: state.state_of("default/p") is AllocState.BOUND)
    assert state.allocation("default/p") == got
    node = state.node("g1")
    assert node is not None and node.usage[0].cores == 100


# ---- an allocation counts only if it is the pod's own ----


def test_an_allocation_that_is_not_the_pods_own_is_not_counted(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    # The finding, through real watches: a pod that asks for 30% and 4 GiB, bound with an
    # allocation of no compute limit and the whole card (a Binding like the scheduler's).
    gpu_node(core_api, "g1", H200)
    wait_state("node known", lambda: state.node("g1") is not None)
    uid = vgpu_pod(core_api, "greedy", 1, 30, 4, scheduler=NOBODY)
    whole = Allocation.build(NS, "greedy", uid, "g1", (Slice("main", 0, H200[0].uuid, 0, H200[0].memory_mib),))
    backend.commit(whole)
    # A pod bound after it, its own allocation: once counted, the greedy pod's event was handled.
    uid_m = vgpu_pod(core_api, "marker", 1, 30, 4, scheduler=NOBODY)
    backend.commit(alloc_for("marker", uid_m, card=1))
    wait_state("marker counted", lambda: state.state_of("default/marker") is AllocState.BOUND)
    assert state.allocation("default/greedy") is None
    node = state.node("g1")
    assert node is not None and node.usage == (CardUsage(), CardUsage(30, 4096, 1))
    (r,) = state.rejected()
    assert (r.key, r.uid, r.node, r.reason) == ("default/greedy", uid, "g1", "cores")
    metrics = generate_latest(Metrics(state).registry).decode()
    assert 'flexai_rejected_allocations{reason="cores"} 1.0' in metrics
    # The pod deleted: nothing left to reject.
    core_api.delete_namespaced_pod("greedy", NS, grace_period_seconds=0)
    wait_state("rejection forgotten", lambda: state.rejected() == [])


def test_editing_a_bound_pods_allocation_moves_nothing_in_the_books(
    backend: KubeBackend, state: ClusterState, core_api: k8s.CoreV1Api
) -> None:
    gpu_node(core_api, "g1", H200)
    uid = vgpu_pod(core_api, "p", 1, 30, 4, scheduler=NOBODY)
    backend.commit(alloc_for("p", uid, card=0))
    wait_state("counted", lambda: state.state_of("default/p") is AllocState.BOUND)
    # Moved to card 1 by an edit (no admission policy in this cluster): same size, other card.
    moved = ann.encode_allocation(alloc_for("p", uid, card=1))
    core_api.patch_namespaced_pod("p", NS, {"metadata": {"annotations": {ann.POD_ALLOCATION: moved}}})
    wait_state("edit rejected", lambda: [r.reason for r in state.rejected()] == ["changed"])
    node = state.node("g1")
    assert node is not None and node.usage == (CardUsage(30, 4096, 1), CardUsage())
