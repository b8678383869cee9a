"""The assume / confirm / forget / observe / release state machine."""

from __future__ import annotations

import threading

import pytest

from flexai_sched.model import Allocation, CardUsage, Slice
from flexai_sched.state import AllocState, ClusterState, Conflict

from .fixtures import node


def alloc(name: str, cores: int = 30, mem: int = 100, card: int = 0, uid: str | None = None) -> Allocation:
    return Allocation.build("ns", name, uid or f"uid-{name}", "n1", (Slice("m", card, f"GPU-n1-{card}", cores, mem),))


@pytest.fixture
def state() -> ClusterState:
    s = ClusterState()
    s.upsert_node(node("n1", cards=2))
    return s


def test_assume_confirm_release(state: ClusterState) -> None:
    state.assume(alloc("a"), lambda n: True)
    assert state.state_of("ns/a") is AllocState.ASSUMED
    assert state.node("n1").usage[0] == CardUsage(30, 100, 1)  # type: ignore[union-attr]
    state.confirm("ns/a")
    assert state.state_of("ns/a") is AllocState.BOUND
    assert state.release("ns/a")
    assert not state.release("ns/a")  # idempotent
    assert state.node("n1").usage[0] == CardUsage()  # type: ignore[union-attr]


def test_forget_drops_assumed_only_and_is_idempotent(state: ClusterState) -> None:
    state.assume(alloc("a"), lambda n: True)
    state.forget("ns/a")
    state.forget("ns/a")
    assert state.allocation("ns/a") is None
    state.observe(alloc("b"))
    state.forget("ns/b")  # bound allocations are never forgotten
    assert state.allocation("ns/b") is not None


def test_assume_refuses_a_stale_decision(state: ClusterState) -> None:
    with pytest.raises(Conflict):
        state.assume(alloc("a"), lambda n: False)
    assert state.allocation("ns/a") is None


def test_release_checks_uid_so_a_recreated_pod_keeps_its_slice(state: ClusterState) -> None:
    state.observe(alloc("a", uid="new"))
    assert not state.release("ns/a", uid="old")
    assert state.allocation("ns/a") is not None


def test_observe_replaces_without_double_counting(state: ClusterState) -> None:
    state.assume(alloc("a"), lambda n: True)
    state.observe(alloc("a"))
    state.observe(alloc("a"))
    assert state.node("n1").usage[0] == CardUsage(30, 100, 1)  # type: ignore[union-attr]
    assert state.state_of("ns/a") is AllocState.BOUND


def test_allocations_before_their_node_count_once_it_appears() -> None:
    s = ClusterState()
    s.observe(alloc("a"))
    s.upsert_node(node("n1", cards=2))
    assert s.node("n1").usage[0] == CardUsage(30, 100, 1)  # type: ignore[union-attr]


def test_every_change_bumps_the_node_version(state: ClusterState) -> None:
    v0 = state.node("n1").version  # type: ignore[union-attr]
    state.observe(alloc("a"))
    v1 = state.node("n1").version  # type: ignore[union-attr]
    state.release("ns/a")
    assert v0 < v1 < state.node("n1").version  # type: ignore[union-attr]


def test_max_vgpus_setting_caps_the_inventory() -> None:
    s = ClusterState(max_vgpus_per_card=2)
    s.upsert_node(node("n1", cards=1, max_vgpus=5))
    assert s.node("n1").cards[0].max_vgpus == 2  # type: ignore[union-attr]


def test_concurrent_assumes_on_one_node_never_overcommit(state: ClusterState) -> None:
    """64 threads race to put 30% slices on card 0: only 3 may win (3 x 30 <= 100 < 4 x 30)."""
    wins: list[str] = []

    def fits(n: object) -> bool:
        return state.node("n1").usage[0].cores + 30 <= 100  # type: ignore[union-attr]

    def worker(i: int) -> None:
        with state.node_lock("n1"):
            try:
                state.assume(alloc(f"p{i}"), fits)
                wins.append(f"p{i}")
            except Conflict:
                pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 3
    assert state.node("n1").usage[0].cores == 90  # type: ignore[union-attr]
