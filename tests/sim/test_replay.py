"""The harness on hand-made traces whose best outcome is known."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexai_sched.sim import replay as sim
from flexai_sched.sim import trace
from flexai_sched.sim.trace import TracePod
from tests.sim.conftest import write_trace


def pod(name: str, milli: int, num: int = 1, cpu: int = 1000, spec: frozenset[str] = frozenset()) -> TracePod:
    return TracePod(name, cpu, 1024, num, milli, spec)


@pytest.mark.parametrize("policy", ["binpack", "fragmentation", "fgd", "bestfit", "gpupacking"])
def test_packers_keep_a_whole_card_free(tiny: Path, policy: str) -> None:
    # Two 1-card nodes; 50%, 50%, then a whole card. Packing both halves on one card
    # leaves the other whole: every pod fits (100% allocated).
    t = trace.load(tiny)
    curve = sim.replay(t, [pod("a", 500), pod("b", 500), pod("c", 1000)], policy, 42)
    assert curve.allocated == (500, 1000, 2000)
    assert curve.unallocated_at(100) == 0.0


def test_spread_strands_the_whole_card(tiny: Path) -> None:
    t = trace.load(tiny)
    curve = sim.replay(t, [pod("a", 500), pod("b", 500), pod("c", 1000)], "spread", 42)
    assert curve.allocated == (500, 1000, 1000)
    assert curve.unallocated_at(100) == 50.0


def test_host_cpu_is_checked_like_node_resources_fit(tmp_path: Path) -> None:
    # n0 has the card room but only 2 cores; the pod asks 4: only n1 can take it.
    t = trace.load(write_trace(tmp_path, ["n0,2000,32768,1,T4", "n1,8000,32768,1,T4"], []))
    cluster = sim.Cluster(t, "binpack", 42)
    assert cluster.schedule(pod("a", 500, cpu=4000))
    assert [a.node for a, _ in cluster.state.allocations()] == ["n1"]
    assert cluster.hosts[cluster.names.index("n1")].cpu_free == 4000
    assert not cluster.schedule(pod("b", 500, cpu=4001))  # n1 has 4 cores left, n0 has 2


def test_gpu_spec_is_honoured(tmp_path: Path) -> None:
    t = trace.load(write_trace(tmp_path, ["n0,8000,32768,1,T4", "n1,8000,32768,1,A10"], []))
    cluster = sim.Cluster(t, "binpack", 42)
    assert cluster.schedule(pod("a", 300, spec=frozenset({"A10"})))
    assert cluster.schedule(pod("b", 300, spec=frozenset({"A10"})))
    assert {a.node for a, _ in cluster.state.allocations()} == {"n1"}
    assert not cluster.schedule(pod("c", 1000, spec=frozenset({"V100M32"})))


def test_whole_cards_stay_on_one_node(tmp_path: Path) -> None:
    # Two 2-card nodes with one card busy each: 2 free cards, but not on one node.
    t = trace.load(write_trace(tmp_path, ["n0,8000,32768,2,T4", "n1,8000,32768,2,T4"], []))
    curve = sim.replay(t, [pod("a", 1000), pod("b", 1000), pod("c", 1000, num=2)], "spread", 42)
    assert curve.allocated == (1000, 2000, 2000)


def test_a_trace_pod_drawn_twice_is_two_pods(tmp_path: Path) -> None:
    # Sampling with replacement draws the same trace pod more than once. One 2-card node:
    # three copies of a 60% share fit two cards, not three (the third would over-commit).
    t = trace.load(write_trace(tmp_path, ["n0,8000,32768,2,T4"], []))
    same = pod("p", 600)
    curve = sim.replay(t, [same, same, same], "binpack", 42)
    assert curve.allocated == (600, 1200, 1200)


def test_cpu_only_pods_take_host_resources_only(tiny: Path) -> None:
    t = trace.load(tiny)
    cluster = sim.Cluster(t, "fragmentation", 42)
    assert cluster.schedule(pod("cpu", 0, num=0, cpu=8000))
    assert not cluster.state.allocations()
    assert sorted(h.cpu_free for h in cluster.hosts) == [0, 8000]
    assert cluster.schedule(pod("gpu", 1000, cpu=1000))  # only the node with CPU left can


def test_replay_is_deterministic_per_seed(tmp_path: Path) -> None:
    nodes = [f"n{i},16000,65536,2,T4" for i in range(6)] + [f"g{i},32000,65536,4,V100M16" for i in range(3)]
    pods = [
        "s,2000,1024,1,300,",
        "m,4000,1024,1,650,",
        "w,6000,1024,1,1000,",
        "d,8000,1024,2,1000,",
        "c,3000,1024,0,0,",
    ]
    t = trace.load(write_trace(tmp_path, nodes, pods))
    from flexai_sched.sim.workload import arrivals

    for policy in ("random", "fragmentation"):
        runs = [sim.replay(t, arrivals(t, s), policy, s) for s in (42, 42, 43)]
        assert runs[0] == runs[1]
        assert runs[0].capacity_milli == 24000
        assert runs[0].arrived[-1] >= 1.3 * 24000


def test_curve_metric() -> None:
    c = sim.Curve(1000, arrived=(400, 900, 1000, 1300), allocated=(400, 900, 900, 1000))
    assert c.allocated_pct_at(100) == 90.0  # first point where arrived >= 100%
    assert c.unallocated_at(100) == pytest.approx(10.0)
    assert c.unallocated_at(130) == 0.0
    assert c.unallocated_at(50) == pytest.approx(10.0)  # 900 arrived is the first >= 500


def test_ties_follow_a_node_order_shuffled_per_seed(tmp_path: Path) -> None:
    # Eight identical empty nodes, one pod without GPUs: every policy scores them alike
    # (gpupacking: 0), so the first node of the seed's order takes it, every time.
    t = trace.load(write_trace(tmp_path, [f"n{i},8000,32768,1,T4" for i in range(8)], []))

    def first(seed: int) -> str:
        cluster = sim.Cluster(t, "gpupacking", seed)
        assert cluster.schedule(pod("cpu", 0, num=0))
        return cluster.names[next(i for i, h in enumerate(cluster.hosts) if h.cpu_used)]

    assert first(42) == first(42) == sim.Cluster(t, "gpupacking", 42).names[0]
    assert len({first(s) for s in range(42, 52)}) > 1  # another seed, another order


def test_random_fit_draws_among_tied_nodes(tmp_path: Path) -> None:
    t = trace.load(write_trace(tmp_path, [f"n{i},8000,32768,1,T4" for i in range(4)], []))
    cluster = sim.Cluster(t, "random", 42)
    for k in range(40):
        assert cluster.schedule(pod(f"c{k}", 0, num=0, cpu=100))
    assert sum(1 for h in cluster.hosts if h.cpu_used) == 4  # not all on the first node


@pytest.mark.parametrize("policy", ["fragmentation", "fgd"])
def test_memoized_real_scores_change_no_placement(tmp_path: Path, policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Bounded policies keep each node's real score per pod type until the node changes:
    # the replay must place every pod exactly where rescoring every time would.
    nodes = [f"n{i},{8000 + 4000 * (i % 3)},65536,2,T4" for i in range(8)] + [
        f"g{i},24000,65536,4,V100M16" for i in range(4)
    ]
    pods = [
        "s,2000,1024,1,300,",
        "m,6000,1024,1,650,",
        "w,4000,1024,1,1000,",
        "d,9000,1024,2,1000,",
        "c,3000,1024,0,0,",
    ]
    t = trace.load(write_trace(tmp_path, nodes, pods))
    from flexai_sched.sim import board
    from flexai_sched.sim.workload import arrivals

    def placements() -> list[tuple[bool, object]]:
        cluster = sim.Cluster(t, policy, 42)
        out: list[tuple[bool, object]] = []
        for p in arrivals(t, 42):
            ok = cluster.schedule(p)
            out.append((ok, cluster._log[-1] if ok else None))
        return out

    memoized = placements()
    monkeypatch.setattr(board.Memo, "wrap", lambda self, score: score)
    assert placements() == memoized
    assert sum(1 for ok, _ in memoized if ok) > 10


def test_learned_replay_plans_for_the_placed_pods(tmp_path: Path) -> None:
    """``learned``: the built-in prior first; then the placed pods' workload (GPU-model
    constraints included, as the extender records them), every cached score and placement dropped."""
    from flexai_sched.policies.fragmentation import Fragmentation
    from flexai_sched.workload import DEFAULT_WORKLOAD

    t = trace.load(write_trace(tmp_path, ["n0,64000,262144,2,T4", "n1,64000,262144,2,T4"], []))
    cluster = sim.Cluster(t, "fragmentation", 42, learned=True)
    prior = Fragmentation(DEFAULT_WORKLOAD)._m.shapes
    assert cluster.policy._m.shapes == prior  # type: ignore[attr-defined]
    placed = [pod("a", 470, cpu=8000, spec=frozenset({"T4"})), pod("b", 320, cpu=4000)]
    for p in placed:
        assert cluster.schedule(p)
    assert any(n.fit_cache for n in cluster.state.nodes())
    cluster.learn(placed)
    assert sorted(cluster.policy._m.shapes, key=repr) == [  # type: ignore[attr-defined]
        (1, 32, frozenset()),
        (1, 47, frozenset({"T4"})),
    ]
    assert not any(n.fit_cache for n in cluster.state.nodes())
    assert cluster.schedule(pod("c", 470))  # scoring works again from empty caches


def test_learned_replay_learns_at_the_documented_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = trace.load(write_trace(tmp_path, ["n0,640000,2621440,8,T4"], []))
    seen: list[int] = []
    monkeypatch.setattr(sim, "LEARN_FIRST", 3)
    monkeypatch.setattr(sim, "LEARN_EVERY", 4)
    monkeypatch.setattr(sim.Cluster, "learn", lambda self, placed: seen.append(len(placed)))
    sim.replay(t, [pod(f"p{i}", 100) for i in range(9)], "fragmentation", 42, learned=True)
    assert seen == [3, 4, 8]


def test_a_replay_shows_the_policy_each_pod_and_it_reprices_a_wrong_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planned for shares that go anywhere (``prior``), the replay hands each arriving pod to
    the policy as the extender's filter does; T4-only pods make it price the T4 node's kind,
    and the replay drops its cached scores."""
    from flexai_sched.policies.fragmentation import Fragmentation
    from flexai_sched.workload import TaskClass, Workload

    monkeypatch.setattr(Fragmentation, "REPRICE_EVERY", 5)
    nodes = ["t0,64000,262144,1,T4", *(f"g{i},64000,262144,1,G2" for i in range(9))]
    t = trace.load(write_trace(tmp_path, nodes, []))
    cluster = sim.Cluster(t, "fragmentation", 42, prior=Workload.of([TaskClass(1, 20, 1.0)]))
    card = cluster.state.node("t0").cards  # type: ignore[union-attr]
    assert cluster.policy._m.price.of(card, None) == 0  # type: ignore[attr-defined]
    for i in range(4):
        assert cluster.schedule(pod(f"p{i}", 200, spec=frozenset({"T4"})))
    ((key, board),) = cluster._boards.items()
    assert cluster.schedule(pod("p4", 200, spec=frozenset({"T4"})))  # the 5th: re-priced first
    assert cluster._boards[key] is not board  # scored afresh
    assert cluster.policy._m.price.of(card, None) == pytest.approx(Fragmentation.PRICE)  # type: ignore[attr-defined]
