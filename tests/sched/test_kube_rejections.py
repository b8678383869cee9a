"""The Kubernetes backend counts a pod's allocation only if it is the pod's own: pod events
as the watch delivers them, applied to a ClusterState (no apiserver: the e2e tests in
tests/e2e/test_kube_backend.py run the same through real watches)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from flexai_core import annotations as ann
from flexai_core.model import Allocation, CardUsage, Slice
from flexai_sched.errors import BindFailure
from flexai_sched.kube import ApiError, KubeBackend, _bind_refusal
from flexai_sched.metrics import Metrics
from flexai_sched.state import AllocState, ClusterState

from .fixtures import H200_MIB, limits, node, pod

NODE = node("gpu-1", cards=2)
C0, C1 = NODE.cards


@pytest.fixture
def state() -> ClusterState:
    st = ClusterState()
    st.upsert_node(NODE)
    return st


@pytest.fixture
def backend(tmp_path: Path, state: ClusterState) -> KubeBackend:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    b = KubeBackend(kubeconfig=str(kubeconfig))
    b._state = state  # the watches' handler, fed by hand
    return b


def bound(name: str, *slices: Slice, text: str | None = None, cores: int = 20, gib: int = 4) -> dict[str, Any]:
    """A pod asking for one vGPU of ``cores``% and ``gib`` GiB, bound to gpu-1 with these slices."""
    p = pod(name, limits(1, cores=cores, memory_gib=gib))
    p["spec"]["nodeName"] = "gpu-1"
    p["metadata"]["resourceVersion"] = "1"
    encoded = (
        text
        if text is not None
        else ann.encode_allocation(Allocation.build("default", name, f"uid-{name}", "gpu-1", slices))
    )
    p["metadata"]["annotations"] = {ann.POD_ALLOCATION: encoded}
    return p


def on(card: int, cores: int = 20, mib: int = 4096) -> Slice:
    return Slice("c0", card, NODE.cards[card].uuid, cores, mib)


def metrics(state: ClusterState) -> dict[str, float]:
    out = {}
    for line in generate_latest(Metrics(state).registry).decode().splitlines():
        if line.startswith(("flexai_rejected_allocations{", "flexai_allocation_rejections_total{")):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def test_the_pods_own_allocation_counts(backend: KubeBackend, state: ClusterState) -> None:
    backend._pod_event("ADDED", bound("p", on(0)))
    assert state.state_of("default/p") is AllocState.BOUND
    assert state.node("gpu-1").usage[0] == CardUsage(20, 4096, 1)  # type: ignore[union-attr]
    assert state.rejected() == []


def test_a_self_granted_card_is_not_counted_and_says_why(
    backend: KubeBackend, state: ClusterState, caplog: pytest.LogCaptureFixture
) -> None:
    greedy = bound("greedy", on(0, cores=0, mib=H200_MIB))
    with caplog.at_level(logging.WARNING, "flexai_sched.kube"):
        backend._pod_event("ADDED", greedy)
        backend._pod_event("MODIFIED", greedy)  # a status update: no second warning
    assert state.allocation("default/greedy") is None
    assert state.node("gpu-1").usage[0] == CardUsage()  # type: ignore[union-attr]
    (r,) = state.rejected()
    assert (r.key, r.uid, r.node, r.reason) == ("default/greedy", "uid-greedy", "gpu-1", "cores")
    assert "asks for 20 percent of a card's cores per vGPU, the allocation gives 0 percent" in r.message
    assert f"asks for 4096 MiB per vGPU, the allocation gives {H200_MIB} MiB" in r.message
    (warning,) = [rec.getMessage() for rec in caplog.records]
    assert warning.startswith("pod default/greedy on gpu-1: allocation not counted (cores): container 'c0'")
    m = metrics(state)
    assert m['flexai_rejected_allocations{reason="cores"}'] == 1
    assert m['flexai_rejected_allocations{reason="memory"}'] == 0
    assert m['flexai_allocation_rejections_total{reason="cores"}'] == 1


@pytest.mark.parametrize(
    ("pod_", "reason"),
    [
        pytest.param(bound("p", on(0), on(1)), "count", id="two-slices-for-one-vgpu"),
        pytest.param(bound("p", Slice("c0", 7, "GPU-x", 20, 4096)), "card", id="card-not-on-node"),
        pytest.param(bound("p", Slice("c0", 0, C1.uuid, 20, 4096)), "card", id="uuid-of-another-card"),
        pytest.param(
            bound("p", on(0), text='{"v": 1, "node": "gpu-1", "slices": [{"card": "zero"}]}'),
            "malformed",
            id="malformed",
        ),
        pytest.param(bound("p", Slice("other", 0, C0.uuid, 20, 4096)), "container", id="other-container"),
    ],
)
def test_other_rejections(backend: KubeBackend, state: ClusterState, pod_: dict[str, Any], reason: str) -> None:
    backend._pod_event("ADDED", pod_)
    assert state.allocation("default/p") is None
    assert [r.reason for r in state.rejected()] == [reason]


def test_other_node(backend: KubeBackend, state: ClusterState) -> None:
    p = bound("p", on(0))
    p["spec"]["nodeName"] = "gpu-2"  # counted nowhere: the annotation names gpu-1's cards
    backend._pod_event("ADDED", p)
    assert state.allocation("default/p") is None
    assert [r.reason for r in state.rejected()] == ["node"]


def test_an_edit_after_the_bind_moves_nothing(backend: KubeBackend, state: ClusterState) -> None:
    backend._pod_event("ADDED", bound("p", on(0)))
    # Someone moves the pod's slice to card 1, still the right size: the books keep card 0.
    backend._pod_event("MODIFIED", bound("p", on(1)))
    a = state.allocation("default/p")
    assert a is not None and a.slices == (on(0),)
    assert [r.reason for r in state.rejected()] == ["changed"]
    # Put back as bound: counted as before, the rejection gone.
    backend._pod_event("MODIFIED", bound("p", on(0)))
    assert state.rejected() == []
    # Deleted: nothing counted, nothing rejected.
    backend._pod_event("MODIFIED", bound("p", on(1)))
    backend._pod_event("DELETED", bound("p", on(1)))
    assert state.allocation("default/p") is None and state.rejected() == []
    assert metrics(state)['flexai_allocation_rejections_total{reason="changed"}'] == 2


def test_a_node_not_yet_known_still_has_the_request_checked(backend: KubeBackend, state: ClusterState) -> None:
    state.remove_node("gpu-1")  # pods are listed before nodes
    backend._pod_event("ADDED", bound("ok", on(0)))
    backend._pod_event("ADDED", bound("greedy", on(1, cores=0, mib=H200_MIB)))
    assert state.allocation("default/ok") is not None
    assert state.allocation("default/greedy") is None
    assert [r.key for r in state.rejected()] == ["default/greedy"]


def test_a_relist_forgets_rejections_of_pods_gone(backend: KubeBackend, state: ClusterState) -> None:
    backend._pod_event("ADDED", bound("greedy", on(0, cores=0, mib=H200_MIB)))
    backend._replace_pods([bound("p", on(0))], set(), set())
    assert state.rejected() == []
    assert state.allocation("default/p") is not None


def test_what_the_owner_may_still_edit_never_stops_a_slice_from_counting(
    backend: KubeBackend, state: ClusterState
) -> None:
    # The policy annotations stay user-writable after the bind: an unknown value must not make
    # the request unreadable and free the card in the books.
    p = bound("p", on(0))
    backend._pod_event("ADDED", p)
    p["metadata"]["annotations"][ann.NODE_POLICY] = "no-such-policy"
    backend._pod_event("MODIFIED", p)
    assert state.state_of("default/p") is AllocState.BOUND and state.rejected() == []


def test_cores_off_the_default_granularity_count(backend: KubeBackend, state: ClusterState) -> None:
    # A scheduler run with granularity 1 places 33%; the books read it as placed.
    backend._pod_event("ADDED", bound("p", on(0, cores=33), cores=33))
    assert state.state_of("default/p") is AllocState.BOUND


def test_a_pod_counted_before_its_node_was_known_is_checked_with_the_cards_on_its_next_event(
    backend: KubeBackend, state: ClusterState
) -> None:
    state.remove_node("gpu-1")
    ghost = bound("p", Slice("c0", 0, "GPU-not-on-gpu-1", 20, 4096))  # right size, card unknowable yet
    backend._pod_event("ADDED", ghost)
    assert state.state_of("default/p") is AllocState.BOUND
    state.upsert_node(NODE)
    backend._pod_event("MODIFIED", ghost)
    assert state.allocation("default/p") is None
    assert [r.reason for r in state.rejected()] == ["card"]


def test_status_updates_of_a_counted_pod_skip_the_check(
    backend: KubeBackend, state: ClusterState, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = bound("p", on(0))
    backend._pod_event("ADDED", p)
    calls: list[tuple[object, ...]] = []

    def counted(*a: object) -> list[object]:
        calls.append(a)
        return []

    monkeypatch.setattr("flexai_sched.kube.check_allocation", counted)
    backend._pod_event("MODIFIED", p)
    assert calls == [] and state.state_of("default/p") is AllocState.BOUND


@pytest.mark.parametrize(
    ("status", "message", "reason"),
    [
        (404, 'pods "p" not found', BindFailure.POD_GONE),
        (
            409,
            'Operation cannot be fulfilled on pods/binding "p": pod p is already assigned to node "n"',
            BindFailure.DUPLICATE,
        ),
        (
            409,
            'Operation cannot be fulfilled on pods/binding "p": Precondition failed: UID in precondition: a, '
            "UID in object meta: b",
            BindFailure.POD_GONE,
        ),
        (403, "forbidden: not found in any role", BindFailure.BACKEND),
        (422, "already invalid", BindFailure.BACKEND),
    ],
)
def test_a_refused_binding_carries_why_by_status(status: int, message: str, reason: BindFailure) -> None:
    assert _bind_refusal(ApiError("bind d/p to n", status, message)) is reason
