"""The assume / confirm / forget / observe / release state machine."""

from __future__ import annotations

import threading

import pytest

from flexai_core.model import Allocation, CardUsage, Slice
from flexai_sched import state as state_module
from flexai_sched.state import AllocState, ClusterState, Conflict
from flexai_sched.workload import Host

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


def test_a_pod_read_back_as_gone_is_not_counted_again_by_a_late_watch_event(state: ClusterState) -> None:
    # The preemptor's filter read its victim back and found it deleted; the watch then delivers
    # the victim's last update from before the deletion: the victim must stay released (else
    # filter says "no room" until the DELETED event, which kube-scheduler does not wait for).
    state.set_host_capacity("n1", 32_000, 1 << 20)
    state.observe(alloc("v", cores=60))
    state.set_pod_host("ns/v", "n1", 4000, 1024, "uid-v")
    assert state.release("ns/v", "uid-v", gone=True)
    state.drop_pod_host("ns/v", "uid-v")
    state.observe(alloc("v", cores=60))  # the late event
    state.set_pod_host("ns/v", "n1", 4000, 1024, "uid-v")
    assert state.allocation("ns/v") is None
    assert state.node("n1").usage[0] == CardUsage()  # type: ignore[union-attr]
    assert state.host_of("n1") == Host(32_000, 1 << 20, 0, 0)
    # A new pod under that name (another UID) counts.
    state.observe(alloc("v", cores=40, uid="uid-v2"))
    assert state.node("n1").usage[0] == CardUsage(40, 100, 1)  # type: ignore[union-attr]
    # A plain release (the watch's own DELETED) does not stop a later observe of that UID.
    state.release("ns/v", "uid-v2")
    state.observe(alloc("v", cores=40, uid="uid-v2"))
    assert state.allocation("ns/v") is not None


def test_a_new_pod_under_an_old_name_frees_the_old_pods_slice_on_its_node() -> None:
    s = ClusterState()
    s.upsert_node(node("n1", cards=2))
    s.upsert_node(node("n2", cards=2))
    s.assume(alloc("a", uid="old"), lambda n: True)
    moved = Allocation.build("ns", "a", "new", "n2", (Slice("m", 1, "GPU-n2-1", 40, 200),))
    s.observe(moved)  # the cluster shows the new pod bound
    assert s.node("n1").usage[0] == CardUsage()  # type: ignore[union-attr]
    assert s.node("n2").usage[1] == CardUsage(40, 200, 1)  # type: ignore[union-attr]
    assert not s.release("ns/a", uid="old")
    assert s.release("ns/a", uid="new")
    assert s.node("n2").usage[1] == CardUsage()  # type: ignore[union-attr]


@pytest.mark.parametrize("uid", ["uid-a", "other"])
def test_assume_never_replaces_an_allocation_under_the_same_key(state: ClusterState, uid: str) -> None:
    state.observe(alloc("a", card=0))
    with pytest.raises(Conflict, match="already allocated on n1"):
        state.assume(alloc("a", card=1, uid=uid), lambda n: True)
    assert state.allocation("ns/a") == alloc("a", card=0)
    assert state.node("n1").usage[1] == CardUsage()  # type: ignore[union-attr]


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


# ---- host resources ----


def host(state: ClusterState, name: str = "n1") -> Host | None:
    n = state.node(name)
    assert n is not None
    return n.host


def test_host_is_unknown_until_capacity_is_set_and_counts_pods_bound_before(state: ClusterState) -> None:
    state.set_pod_host("ns/cpu", "n1", 1500, 2048, "u1")  # a pod without GPUs counts too
    assert host(state) is None
    state.set_host_capacity("n1", 64000, 512 * 1024)
    assert host(state) == Host(64000, 512 * 1024, 1500, 2048)
    assert state.host_of("n1") == host(state)


def test_pod_host_replace_drop_idempotent_and_never_double_counted(state: ClusterState) -> None:
    state.set_host_capacity("n1", 8000, 16384)
    state.set_pod_host("ns/a", "n1", 1000, 1024, "ua")
    state.set_pod_host("ns/a", "n1", 1000, 1024, "ua")  # repeated watch event
    state.set_pod_host("ns/b", "n1", 500, 256, "ub")
    assert host(state) == Host(8000, 16384, 1500, 1280)
    state.set_pod_host("ns/a", "n1", 2000, 100, "ua")  # re-set replaces, not adds
    assert host(state) == Host(8000, 16384, 2500, 356)
    assert not state.drop_pod_host("ns/a", uid="an-older-pod")  # a recreated pod keeps its requests
    assert state.drop_pod_host("ns/a", "ua")
    assert not state.drop_pod_host("ns/a", "ua")
    assert state.drop_pod_host("ns/b")
    assert not state.drop_pod_host("ns/never")
    assert host(state) == Host(8000, 16384, 0, 0)
    state.set_pod_host("ns/c", "n1", -5, -1)  # never negative
    assert host(state) == Host(8000, 16384, 0, 0)
    assert state.pod_hosts() == [("ns/c", "")]


def test_a_pod_moving_nodes_leaves_the_first(state: ClusterState) -> None:
    state.upsert_node(node("n2", cards=1))
    state.set_host_capacity("n1", 8000, 8000)
    state.set_host_capacity("n2", 8000, 8000)
    state.set_pod_host("ns/a", "n1", 1000, 1000)
    state.set_pod_host("ns/a", "n2", 1000, 1000)
    assert host(state, "n1") == Host(8000, 8000, 0, 0)
    assert host(state, "n2") == Host(8000, 8000, 1000, 1000)


def test_host_changes_keep_version_and_fit_cache_but_reset_the_host_cache(state: ClusterState) -> None:
    state.set_host_capacity("n1", 8000, 8000)
    before = state.node("n1")
    assert before is not None
    before.fit_cache[1] = True
    before.host_cache[2] = 1.0
    state.set_pod_host("ns/a", "n1", 1000, 0)
    after = state.node("n1")
    assert after is not None and after is not before
    assert after.version == before.version and after.fit_cache is before.fit_cache and after.usage is before.usage
    assert after.host_cache == {}
    state.set_pod_host("ns/a", "n1", 1000, 0)  # no change: the same state, caches kept
    assert state.node("n1") is after
    state.set_host_capacity("n1", 8000, 8000)
    assert state.node("n1") is after
    # A card change rebuilds the node: both caches go, the host stays.
    after.host_cache[2] = 1.0
    state.observe(alloc("g"))
    rebuilt = state.node("n1")
    assert rebuilt is not None and rebuilt.host_cache == {} and rebuilt.fit_cache == {}
    assert rebuilt.host == Host(8000, 8000, 1000, 0)
    # A heartbeat keeps everything.
    rebuilt.host_cache[3] = 2.0
    state.upsert_node(node("n1", cards=2))
    hb = state.node("n1")
    assert hb is not None and hb.host_cache == {3: 2.0} and hb.host == rebuilt.host


def test_dropping_capacity_makes_the_host_unknown(state: ClusterState) -> None:
    state.set_host_capacity("n1", 8000, 8000)
    state.drop_host_capacity("n1")
    state.drop_host_capacity("n1")
    assert host(state) is None
    assert state.host_capacity_nodes() == []


def test_concurrent_host_updates_add_up(state: ClusterState) -> None:
    state.set_host_capacity("n1", 10**6, 10**6)

    def worker(i: int) -> None:
        for j in range(50):
            state.set_pod_host(f"ns/p{i}-{j}", "n1", 10, 1)
            state.set_pod_host(f"ns/p{i}-{j}", "n1", 20, 2)  # replace
        for j in range(0, 50, 2):
            state.drop_pod_host(f"ns/p{i}-{j}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert host(state) == Host(10**6, 10**6, 8 * 25 * 20, 8 * 25 * 2)


def test_past_its_bound_the_change_log_drops_its_older_half(
    state: ClusterState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader a few changes behind (an answer table) keeps its place when the log is trimmed;
    one behind the dropped half is told to start over (None)."""
    monkeypatch.setattr(state_module, "MAX_CHANGES", 10)
    state.drop_scores()  # an empty log
    old = state.change_seq()
    for i in range(8):
        state.remove_node(f"gone{i}")
    recent = state.change_seq()
    for name in ("x", "y", "z"):  # the 11th entry: the older half goes
        state.remove_node(name)
    assert state.changes_since(recent) == (state.change_seq(), ["x", "y", "z"])
    assert state.changes_since(old) == (state.change_seq(), None)


def test_usage_values_are_shared_and_their_arithmetic_returns_the_shared_ones() -> None:
    a, b = CardUsage.of(30, 100, 1), CardUsage.of(20, 50, 1)
    assert CardUsage.of(30, 100, 1) is a
    assert a.plus(b) is CardUsage.of(50, 150, 2) and a.plus(b) == CardUsage(50, 150, 2)
    assert a.plus(b).minus(b) is a
    assert a.peak(b) is a and b.peak(a) is a
    assert b.minus(a) is CardUsage.of()  # clamped at zero, and the zero is shared too


def test_the_shared_usage_values_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from flexai_core import model

    monkeypatch.setattr(model, "MAX_SHARED_USAGE", 4)
    monkeypatch.setattr(model, "_SHARED_USAGE", {})
    got = [CardUsage.of(cores, 0, 1) for cores in range(10)]
    assert len(model._SHARED_USAGE) <= 4
    assert [u.cores for u in got] == list(range(10))  # values right across the clears
    assert CardUsage.of(9, 0, 1) is got[9]  # kept since the last clear


def test_a_clusters_usage_holds_one_object_per_value() -> None:
    """Every bind builds its node's usage anew: equal values must be one object, or a cluster
    keeps one per card and per bind (memory, and objects for the collector to walk)."""
    s = ClusterState()
    for n in range(6):
        s.upsert_node(node(f"n{n}", cards=4))
    for i in range(48):
        name, card = f"n{i % 6}", (i // 6) % 4
        slices = (Slice("m", card, f"GPU-{name}-{card}", 10 * (1 + i % 3), 1024 * (1 + i % 2)),)
        s.assume(Allocation.build("ns", f"p{i}", f"u{i}", name, slices), lambda _: True)
    objs = [u for st in s.nodes() for u in (*st.usage, *st.allocated)]
    objs += [u for a, _ in s.allocations() for u in a.card_usage.values()]
    assert len({id(u) for u in objs}) == len(set(objs))
