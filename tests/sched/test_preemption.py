"""The victim choice (flexai_sched.preemption), pure: each rule with its arithmetic worked out."""

from __future__ import annotations

import pytest

from flexai_core.model import Allocation, Card, CardUsage, PodRequest, Slice, peak_usage
from flexai_core.requests import parse_pod
from flexai_sched import policies
from flexai_sched.preemption import Budget, Candidate, Choice, Requirement, best, choose, evicted_cost, pdb_violations

from .fixtures import limits, pod

GIB = 1024
BINPACK = policies.get("binpack")


def cards(n: int, gib: int = 80) -> tuple[Card, ...]:
    return tuple(Card(i, f"G{i}", "H200", gib * GIB, 5) for i in range(n))


def victim(
    name: str,
    *slices: tuple[int, int, int],
    priority: int = 0,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
) -> Candidate:
    """A bound pod: (card, cores, GiB) per slice."""
    ss = tuple(Slice("c", card, f"G{card}", cores, gib * GIB) for card, cores, gib in slices)
    return Candidate(Allocation.build(namespace, name, f"uid-{name}", "n", ss), priority, labels or {})


def usage_of(node_cards: tuple[Card, ...], pods: list[Candidate]) -> list[CardUsage]:
    u = [CardUsage()] * len(node_cards)
    for p in pods:
        for index, held in peak_usage(p.alloc.slices).items():
            u[index] = u[index].plus(held)
    return u


def req(cores: int, gib: int, number: int = 1, priority: int = 100, namespace: str = "default") -> PodRequest:
    p = pod("hi", limits(number, cores=cores, memory_gib=gib), namespace=namespace)
    p["spec"]["priority"] = priority
    return parse_pod(p)


def names(c: Choice | None) -> list[str]:
    assert c is not None
    return sorted(a.name for a in c.victims)


def run(pods: list[Candidate], r: PodRequest, n: int = 2, **kw: object) -> Choice | None:
    cs = cards(n)
    return choose("n", cs, usage_of(cs, pods), r, r.priority, pods, BINPACK, **kw)  # type: ignore[arg-type]


def test_the_fewest_victims_win_over_a_greedy_set() -> None:
    # Card 0: a 30% + b 30% + c 30% (90%); card 1: d 80%. The pod asks 1 x 50%.
    # Card 0 needs two of a/b/c gone (90 - 30 = 60 > 50; 90 - 60 = 30 <= 50); card 1 needs d
    # gone alone (80 -> 0). Fewest: {d}, one victim.
    pods = [victim("a", (0, 30, 10)), victim("b", (0, 30, 10)), victim("c", (0, 30, 10)), victim("d", (1, 80, 10))]
    assert names(run(pods, req(50, 10))) == ["d"]


def test_equal_counts_go_to_the_fewest_cores_times_gib() -> None:
    # Card 0 holds x (60% x 40 GiB = 2400 card-%.GiB), card 1 holds y (60% x 10 GiB = 600).
    # The pod asks 50% / 10 GiB: either one victim frees a card; y costs less.
    pods = [victim("x", (0, 60, 40)), victim("y", (1, 60, 10))]
    c = run(pods, req(50, 10))
    assert names(c) == ["y"]
    assert c is not None and c.cost == 60 * 10 * GIB == evicted_cost([pods[1].alloc])


def test_never_a_victim_that_frees_nothing_useful() -> None:
    # The pod asks for an A100 card only; card 0 is an A100 held by a, card 1 an H200 held by b.
    # Evicting b (holding a card the pod cannot use) never helps: only a goes.
    cs = (Card(0, "G0", "A100", 80 * GIB), Card(1, "G1", "H200", 80 * GIB))
    pods = [victim("a", (0, 100, 80)), victim("b", (1, 100, 80))]
    p = pod("hi", limits(1, cores=50, memory_gib=10), annotations={"vgpu.flexai.io/gpu-models": "A100"})
    p["spec"]["priority"] = 100
    r = parse_pod(p)
    assert names(choose("n", cs, usage_of(cs, pods), r, 100, pods, BINPACK)) == ["a"]
    # And when only useless pods are of lower priority, no choice at all.
    pods = [victim("a", (0, 100, 80), priority=1000), victim("b", (1, 100, 80))]
    assert choose("n", cs, usage_of(cs, pods), r, 100, pods, BINPACK) is None


def test_only_lower_priority_pods_are_victims() -> None:
    # Both cards full; the one on card 0 has the preemptor's priority (100, not lower): only card 1's goes.
    pods = [victim("same", (0, 100, 80), priority=100), victim("low", (1, 100, 80), priority=99)]
    assert names(run(pods, req(100, 80))) == ["low"]
    pods = [victim("same", (0, 100, 80), priority=100), victim("higher", (1, 100, 80), priority=200)]
    assert run(pods, req(100, 80)) is None


def test_a_fraction_needs_only_part_of_a_card() -> None:
    # Card 0: p 40%, q 40%, r 20% (100%); card 1: s 100%. The pod asks 1 x 40% / 5 GiB.
    # Evicting r frees 20% (not enough); q alone frees 40%: 60 + 40 = 100 fits. One victim: q or p
    # (equal cost 40 x 10 GiB); lowest priority breaks the tie: p has 5, q has 1 -> q.
    pods = [
        victim("p", (0, 40, 10), priority=5),
        victim("q", (0, 40, 10), priority=1),
        victim("r", (0, 20, 10)),
        victim("s", (1, 100, 10)),
    ]
    assert names(run(pods, req(40, 5))) == ["q"]


def test_multi_vgpu_preemptor_needs_room_on_two_cards() -> None:
    # 2 x 60% on two distinct cards: card 0 a 50%, card 1 b 50%, card 2 c 30%. Card 2 takes one
    # (30 + 60 = 90 <= 100); the second needs card 0 or 1 emptied (50 + 60 = 110 > 100): evict a
    # or b, one victim, equal cost (50 x 10 GiB) and priority.
    pods = [victim("a", (0, 50, 10)), victim("b", (1, 50, 10)), victim("c", (2, 30, 10))]
    c = run(pods, req(60, 10, number=2), n=3)
    assert names(c) in (["a"], ["b"])


def test_pdb_violations_rank_first_as_kube_scheduler_ranks_them() -> None:
    # a (card 0) is protected by a budget with 0 disruptions allowed; b and c share card 1.
    # Evicting a alone would do (1 victim, 1 violation); b + c (2 victims, 0 violations) win.
    pods = [victim("a", (0, 100, 80), labels={"app": "db"}), victim("b", (1, 50, 10)), victim("c", (1, 50, 10))]
    pdb = Budget("default", "db", (("app", "db"),), (), 0)
    c = run(pods, req(100, 80), budgets=[pdb])
    assert names(c) == ["b", "c"] and c is not None and c.pdb_violations == 0
    # With one disruption allowed, a is free to go: one victim.
    c = run(pods, req(100, 80), budgets=[Budget("default", "db", (("app", "db"),), (), 1)])
    assert names(c) == ["a"] and c is not None and c.pdb_violations == 0


def test_pdb_counting_uses_up_allowed_disruptions_in_order() -> None:
    # Budget allows 1: the first selected victim uses it, the second violates.
    vs = [victim("a", (0, 10, 1), labels={"app": "w"}), victim("b", (0, 10, 1), labels={"app": "w"})]
    b = Budget("default", "w", (), (Requirement("app", "In", frozenset({"w"})),), 1)
    assert pdb_violations(vs, [b]) == 1
    assert pdb_violations(vs[:1], [b]) == 0
    # Another namespace or an empty selector selects nothing.
    assert pdb_violations(vs, [Budget("other", "w", (("app", "w"),), (), 0)]) == 0
    assert pdb_violations(vs, [Budget("default", "w", (), (), 0)]) == 0


def test_must_victims_stay_and_extras_are_added_only_when_needed() -> None:
    # kube-scheduler proposes m (on card 0, 30%); the pod asks 100% of a card: card 0 still holds
    # n (20%) after m goes, so n joins; card 1 (o 100%) would need o: {m, n} vs {m, o}:
    # equal counts, cost 30x10 + 20x10 = 500 < 30x10 + 100x10 = 1300 -> {m, n}.
    m, n_, o = victim("m", (0, 30, 10)), victim("n", (0, 20, 10)), victim("o", (1, 100, 10))
    cs = cards(2)
    c = choose("n", cs, usage_of(cs, [m, n_, o]), req(100, 10), 100, [n_, o], BINPACK, must=[m])
    assert names(c) == ["m", "n"]
    # If the proposed victims already free a fitting slice, nothing is added.
    c = choose("n", cs, usage_of(cs, [m, n_, o]), req(50, 10), 100, [n_, o], BINPACK, must=[m])
    assert names(c) == ["m"]


def test_a_pod_over_quota_needs_victims_that_free_the_quota() -> None:
    # Room on card 1 for the pod, but the quota needs >= 2 vGPUs freed: only sets of two qualify.
    pods = [victim("a", (0, 20, 1)), victim("b", (0, 20, 1)), victim("c", (0, 20, 1))]
    c = run(pods, req(20, 1), frees_quota=lambda gone: len(gone) >= 2)
    assert c is not None and len(c.victims) == 2


def test_the_best_node_across_choices() -> None:
    one = Choice("n1", (victim("a", (0, 10, 1)).alloc,), 0, 10, 0)
    two = Choice("n2", (victim("b", (0, 1, 1)).alloc, victim("c", (0, 1, 1)).alloc), 0, 2, 0)
    assert best([two, None, one]) is one  # fewer victims beat fewer cores x GiB
    assert best([None]) is None


@pytest.mark.parametrize("n", [6, 12])
def test_a_large_node_stays_within_its_check_budget(n: int) -> None:
    # 5 pods of 20% on each of n cards, all low priority: one card's 5 pods must go for a whole card.
    pods = [victim(f"p{c}-{i}", (c, 20, 1)) for c in range(n) for i in range(5)]
    c = run(pods, req(100, 10), n=n, max_checks=500)
    assert c is not None and len(c.victims) == 5 and len({s.card_index for a in c.victims for s in a.slices}) == 1


def test_a_pdb_object_reads_as_kube_scheduler_reads_it() -> None:
    from flexai_sched.kube import budget_of

    b = budget_of(
        {
            "metadata": {"namespace": "ns", "name": "db"},
            "spec": {
                "selector": {
                    "matchLabels": {"app": "db"},
                    "matchExpressions": [
                        {"key": "tier", "operator": "In", "values": ["a"]},
                        {"key": "x", "operator": "Bogus"},
                    ],
                }
            },
            "status": {"disruptionsAllowed": 2, "disruptedPods": {"db-0": "2026-12-06T00:00:00Z"}},
        }
    )
    assert b == Budget(
        "ns", "db", (("app", "db"),), (Requirement("tier", "In", frozenset({"a"})),), 2, frozenset({"db-0"})
    )
    assert b.selects("ns", {"app": "db", "tier": "a"}) and not b.selects("ns", {"app": "db", "tier": "b"})
    # No status yet (no disruption controller has written it): nothing may be disrupted.
    assert budget_of({"metadata": {"namespace": "ns", "name": "x"}, "spec": {}}).disruptions_allowed == 0
