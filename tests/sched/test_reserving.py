"""Reservations: a pod prioritized on its best node holds that room until its bind (or a
timeout), so the pods kube-scheduler schedules before that bind arrives go elsewhere."""

from __future__ import annotations

from typing import Any

from flexai_core.model import Allocation, CardUsage, Slice
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import BindError, Extender
from flexai_sched.reserving import BIND_WAIT_S, RESERVE_NODES, RESERVE_S
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod


class Env:
    """Nodes of one card each; binpack (the fuller node scores best); a clock the test moves."""

    def __init__(self, names: tuple[str, ...] = ("a", "b")) -> None:
        self.names = list(names)
        self.state = ClusterState()
        self.backend = MemoryBackend([node(n, 1) for n in names], heartbeat_every=None)
        self.backend.start(self.state)
        self.now = 1000.0
        self.ext = self.extender()

    def extender(self) -> Extender:
        ext = Extender(self.state, self.backend, Settings(node_policy="binpack", card_policy="binpack"))
        ext.clock = lambda: self.now
        return ext

    def pod(self, name: str, cores: int, uid: str | None = None) -> dict[str, Any]:
        p = pod(name, limits(1, cores=cores, memory_gib=10), uid=uid)
        self.backend.create_pod(p)
        return p

    def bound(self, name: str, node_name: str, cores: int) -> None:
        """A pod already running on ``node_name``."""
        p = self.pod(name, cores)
        self.ext.parse(p)
        self.ext.bind("default", name, f"uid-{name}", node_name)

    def cycle(self, p: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
        """kube-scheduler's filter then prioritize (of the nodes that passed) for ``p``."""
        fits = self.ext.filter(p, self.names).fits
        return fits, dict(self.ext.prioritize(p, fits)) if len(fits) > 1 else {}

    def bind(self, p: dict[str, Any], node_name: str) -> str:
        meta = p["metadata"]
        try:
            self.ext.bind("default", meta["name"], meta["uid"], node_name)
        except BindError as e:
            return str(e)
        return ""

    def cores(self, name: str) -> int:
        n = self.state.node(name)
        assert n is not None
        return sum(u.cores for u in n.usage)


def test_the_next_pod_is_not_offered_the_room_a_pod_in_flight_will_take() -> None:
    env = Env()
    env.bound("f0", "a", 50)  # a: 50 of 100 cores; the fuller node: binpack's best
    p1, p2 = env.pod("p1", 50), env.pod("p2", 50)
    fits, scores = env.cycle(p1)
    assert fits == ["a", "b"] and scores["a"] == 10 > scores["b"]
    # p1's bind to a is on its way: p2's cycle must not see a's last room.
    fits, _ = env.cycle(p2)
    assert fits == ["b"]
    assert env.bind(p1, "a") == ""
    assert env.bind(p2, "b") == ""
    # Counted once: the allocation took the reservation's place.
    assert env.cores("a") == 100 and env.cores("b") == 50
    assert not env.state.reserved_pods()
    # f0 came with no cycle; p1 was reserved on a, p2 (one node left) on b: both bound there.
    assert env.ext.reserving.counts() == {"none": 1, "there": 2}


def test_without_the_reservation_the_next_pod_would_lose_its_bind() -> None:
    """The failure reservations prevent: the same cycles, p1's reservation ended by hand."""
    env = Env()
    env.bound("f0", "a", 50)
    p1, p2 = env.pod("p1", 50), env.pod("p2", 50)
    env.cycle(p1)
    env.state.unreserve("default/p1")
    fits, scores = env.cycle(p2)
    assert "a" in fits and scores["a"] == 10  # p2 would be bound to a too
    env.state.unreserve("default/p2")
    assert env.bind(p1, "a") == ""
    assert "0 of 1 have it" in env.bind(p2, "a")


def test_prioritize_of_other_pods_scores_with_the_reservation() -> None:
    env = Env(("a", "b", "c"))
    env.bound("f0", "a", 40)
    env.bound("f1", "b", 60)
    probe = env.pod("probe", 10)
    _, before = env.cycle(probe)
    env.ext.reserving.end("default/probe")
    assert before["b"] == 10 > before["a"]  # b is the fuller
    p1 = env.pod("p1", 50)  # fits a (40 + 50) or the empty c; b has 40 left
    fits, scores = env.cycle(p1)
    assert fits == ["a", "c"] and scores["a"] == 10 > scores["c"]
    assert [r.node for r in env.state.reservations("default/p1")] == ["a"]
    _, after = env.cycle(env.pod("probe2", 10))
    assert after["a"] == 10 > after["b"]  # a holds 40 + 50 reserved now


def test_its_own_bind_does_not_count_its_reservation() -> None:
    env = Env()
    env.bound("f0", "a", 50)
    p1 = env.pod("p1", 50)
    env.cycle(p1)
    assert env.cores("a") == 100  # 50 bound + 50 reserved: full for anyone else
    assert env.bind(p1, "a") == ""  # but not for p1
    node_a = env.state.node("a")
    assert node_a is not None and node_a.usage == node_a.allocated == (CardUsage(100, 20 * 1024, 2),)


def test_a_bind_to_another_node_ends_the_reservation_on_the_first() -> None:
    env = Env()
    env.bound("f0", "a", 50)
    p1 = env.pod("p1", 50)
    env.cycle(p1)  # reserved on a
    assert env.bind(p1, "b") == ""  # kube-scheduler chose b (its own plugins' scores)
    assert env.cores("a") == 50 and env.cores("b") == 50
    assert not env.state.reserved_pods()
    assert env.ext.reserving.counts()["elsewhere"] == 1


def test_a_refused_bind_ends_the_reservation() -> None:
    env = Env()
    env.bound("f0", "a", 50)
    p1 = env.pod("p1", 50)
    env.cycle(p1)
    env.backend.fail_next_commit = "apiserver said no"
    assert "apiserver said no" in env.bind(p1, "a")
    assert env.cores("a") == 50 and not env.state.reserved_pods()


def test_a_reservation_never_bound_ends_after_its_timeout() -> None:
    env = Env()
    env.bound("f0", "a", 50)
    p1 = env.pod("p1", 50)
    env.cycle(p1)  # then p1 is deleted mid-cycle: no bind ever comes
    env.backend.delete_pod("default", "p1", notify=False)  # the watch sees bound pods only
    env.now += RESERVE_S - 0.01
    assert env.cycle(env.pod("p2", 50))[0] == ["b"]
    env.ext.reserving.end("default/p2")
    env.now += 0.02
    assert env.cycle(env.pod("p3", 50))[0] == ["a", "b"]
    assert env.state.reservations("default/p1") == ()
    assert env.ext.reserving.counts()["expired"] == 1  # p1's (p2's was ended, not expired)


def test_a_new_cycle_replaces_the_pods_reservation_never_adding_to_it() -> None:
    env = Env()
    env.bound("f0", "a", 20)
    p1 = env.pod("p1", 20)
    for _ in range(3):  # kube-scheduler tries p1 again (its bind was never sent)
        env.cycle(p1)
        assert env.cores("a") == 40
    env.ext.prioritize(p1, ["a", "b"])  # a prioritize without a filter first: not its own competitor
    assert env.cores("a") == 40
    assert [r.node for r in env.state.reservations("default/p1")] == ["a"]


def test_a_recreated_pod_of_the_same_name_ends_the_old_ones_reservation() -> None:
    env = Env()
    env.bound("f0", "a", 50)
    env.cycle(env.pod("p1", 50, uid="old"))
    env.backend.delete_pod("default", "p1", notify=False)
    again = env.pod("p1", 50, uid="new")
    fits, _ = env.cycle(again)
    assert fits == ["a", "b"]  # the old p1's room is not held against the new one
    assert env.bind(again, "a") == ""
    assert env.cores("a") == 100


def test_the_pod_seen_bound_by_the_watch_ends_its_reservation() -> None:
    env = Env()
    env.bound("f0", "a", 50)
    env.cycle(env.pod("p1", 50))
    # Bound by someone else (another scheduler's Binding, a bind from before a restart): the watch.
    env.state.observe(Allocation.build("default", "p1", "uid-p1", "b", (Slice("c0", 0, "GPU-b-0", 50, 10240),)))
    assert env.cores("a") == 50 and env.cores("b") == 50
    assert not env.state.reserved_pods()


def test_a_bind_is_never_refused_for_another_pods_reservation() -> None:
    """A reservation is a guess; a bind is kube-scheduler's choice: the bind wins the room."""
    env = Env()
    env.bound("f0", "a", 50)
    p1, p2 = env.pod("p1", 50), env.pod("p2", 50)
    env.cycle(p1)  # reserved on a; but kube-scheduler's choice for p2 (from before) is a
    assert env.bind(p2, "a") == ""
    assert "0 of 1 have it" in env.bind(p1, "a")
    assert env.cores("a") == 100 and not env.state.reserved_pods()


def test_an_extender_restarted_mid_cycle_holds_nothing_and_binds_as_asked() -> None:
    env = Env()
    env.bound("f0", "a", 50)
    p1 = env.pod("p1", 50)
    env.cycle(p1)
    env.state = ClusterState()  # a new process: the state is read back from the cluster
    env.backend.start(env.state)
    env.state.observe(Allocation.build("default", "f0", "uid-f0", "a", (Slice("c0", 0, "GPU-a-0", 50, 10240),)))
    env.ext = env.extender()
    assert not env.state.reserved_pods()
    assert env.cycle(env.pod("p2", 50))[0] == ["a", "b"]
    env.ext.reserving.end("default/p2")
    assert env.bind(p1, "a") == ""  # the bind of the cycle before the restart
    assert env.cores("a") == 100


def test_equal_best_nodes_are_each_reserved_up_to_a_few() -> None:
    names = tuple(f"n{i}" for i in range(RESERVE_NODES + 2))
    env = Env(names)
    p1 = env.pod("p1", 60)
    _, scores = env.cycle(p1)
    assert set(scores.values()) == {10}  # all empty: all best
    held = [r.node for r in env.state.reservations("default/p1")]
    assert held == list(names[:RESERVE_NODES])
    fits, _ = env.cycle(env.pod("p2", 60))
    assert fits == list(names[RESERVE_NODES:])
    env.ext.reserving.end("default/p2")
    assert env.bind(p1, names[1]) == ""  # whichever of them kube-scheduler chose
    assert [env.cores(n) for n in names] == [0, 60] + [0] * (len(names) - 2)


def test_reservations_do_not_count_against_quotas() -> None:
    env = Env()
    assert not env.backend.declare_quotas(
        "quotas:\n- {name: team, namespace: default, hard: {huawei.com/vgpu-number: 1}}\n"
    )
    p1 = env.pod("p1", 50)
    assert env.cycle(p1)[0] == ["a", "b"]
    assert env.bind(p1, "a") == ""  # its own reservation is not a second vGPU of the quota
    reason = env.ext.filter(env.pod("p2", 10), env.names).failed
    assert "quota" in reason["a"]


def test_a_reservation_made_while_a_bind_decides_does_not_void_that_bind() -> None:
    """Binds re-check the node's allocations (``alloc_version``) before they assume, not its
    reservations: prioritize runs on the event loop while a bind decides in a thread."""
    env = Env()
    before = env.state.node("a")
    assert before is not None
    env.ext.prioritize(env.pod("p1", 50), ["a", "b"])  # reserves a (ties: the first) meanwhile
    after = env.state.node("a")
    assert after is not None and after.version != before.version
    assert after.alloc_version == before.alloc_version and after.allocated == before.allocated
    late = Allocation.build("default", "p2", "uid-p2", "a", (Slice("c0", 0, "GPU-a-0", 50, 10240),))
    env.state.assume(late, lambda n: n.alloc_version == before.alloc_version)
    assert env.state.allocation("default/p2") == late


def test_a_reservation_waits_for_a_bind_that_has_arrived_however_long_it_queues() -> None:
    """Binds queue for the apiserver (hundreds of ms each in a burst): once a pod's bind has come,
    its room is held until that bind is over, not RESERVE_S after its prioritize."""
    env = Env()
    env.bound("f0", "a", 50)
    p1 = env.pod("p1", 50)
    env.cycle(p1)
    env.ext.reserving.bind_arrived("default/p1")  # what /bind does before the bind waits for a thread
    env.now += RESERVE_S + 5
    assert env.cycle(env.pod("p2", 50))[0] == ["b"]
    env.ext.reserving.end("default/p2")
    assert env.bind(p1, "a") == ""
    assert env.cores("a") == 100 and env.ext.reserving.counts() == {"none": 1, "there": 1}


def test_a_bind_that_arrived_but_never_ends_holds_the_room_at_most_bind_wait_s() -> None:
    env = Env()
    env.bound("f0", "a", 50)
    env.cycle(env.pod("p1", 50))
    env.ext.reserving.bind_arrived("default/p1")
    env.now += BIND_WAIT_S + 0.01
    assert env.cycle(env.pod("p2", 50))[0] == ["a", "b"]
    assert env.state.reservations("default/p1") == ()


def test_a_bind_onto_the_room_it_reserved_changes_nothing_the_tables_decide_again() -> None:
    """The allocation takes the reservation's place with the same slices: the node's cards,
    usage and host are what they were, so no answer changed (each logged change costs every
    shape's table a verdict). A bind elsewhere changes both nodes."""
    env = Env()
    p, q = env.pod("p", 50), env.pod("q", 30)
    assert env.ext.filter(p, ["a"]).fits == ["a"]  # one node left: reserved there
    seq = env.state.change_seq()
    assert env.bind(p, "a") == ""
    assert env.state.changes_since(seq)[1] == []
    assert env.cores("a") == 50
    assert env.ext.filter(q, ["a"]).fits == ["a"]
    seq = env.state.change_seq()
    assert env.bind(q, "b") == ""  # kube-scheduler chose another node
    assert sorted(set(env.state.changes_since(seq)[1] or [])) == ["a", "b"]
    assert env.cores("a") == 50 and env.cores("b") == 30
