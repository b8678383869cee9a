"""The policies' arithmetic, worked out by hand."""

from __future__ import annotations

import math
import random

import pytest

from flexai_core.model import FULL_CORES, Card, CardUsage
from flexai_sched.policies.fragmentation import Fgd, Fragmentation, host_floor, node_fragmentation
from flexai_sched.policies.interface import HostAware, WorkloadAware
from flexai_sched.policies.leftover import learn, leftover_table
from flexai_sched.workload import Host, NodeKind, TaskClass, Workload

CARDS = tuple(Card(i, f"u{i}", "T4", 16384, 100) for i in range(2))


def used(*cores: int) -> tuple[CardUsage, ...]:
    return tuple(CardUsage(c, c * 100, 1 if c else 0) for c in cores)


# Workload: half the tasks take 50% of a card, half a whole card; 8 / 12 cores.
HALF_WHOLE = Workload.of([TaskClass(1, 50, 1.0, cpu_milli=8000), TaskClass(1, 100, 1.0, cpu_milli=12000)])


@pytest.mark.parametrize(
    ("usage", "host", "expected"),
    [
        # Empty node: both classes fit, nothing is a fragment.
        ((0, 0), None, 0.0),
        # One card 70% used: 30 free < 50 (half) and not whole (whole): 0.5*30 + 0.5*30.
        ((70, 0), None, 30.0),
        # One card 30% used: 70 >= 50 fits the half class; not whole for the whole class: 0.5*70.
        ((30, 0), None, 35.0),
        # Both cards 70% used: the half class cannot run (all 60 free), nor the whole one.
        ((70, 70), None, 60.0),
        # Empty node, 10 cores free: the whole class (12 cores) cannot run: 0.5 * 200.
        ((0, 0), Host(10000, 1 << 20), 100.0),
        # Empty node, 7 cores free: neither class runs: all 200 free is fragment.
        ((0, 0), Host(7000, 1 << 20), 200.0),
    ],
    ids=["empty", "small-hole", "big-hole", "no-room", "cpu-short-whole", "cpu-short-all"],
)
def test_node_fragmentation(usage: tuple[int, int], host: Host | None, expected: float) -> None:
    assert node_fragmentation(CARDS, used(*usage), HALF_WHOLE, host) == pytest.approx(expected)


def test_fgd_scores_as_kube_scheduler_integers() -> None:
    fgd = Fgd(HALF_WHOLE)
    # A half task on an empty node: F before 0, after 0.5 x 50 = 25% of a card:
    # int(100 x sigmoid(-0.25 GPU)) = 43.
    assert fgd.node_score(CARDS, used(0, 0), used(50, 0)) == 43.0
    # Completing a half-used card: F 25 -> 0: int(100 x sigmoid(0.25)) = 56.
    assert fgd.node_score(CARDS, used(50, 0), used(100, 0)) == 56.0
    # Growths within a few percent of a card round to the same score: a tie.
    w = Workload.of([TaskClass(1, 50, 1.0), TaskClass(1, 45, 1.0)])
    close = Fgd(w)
    assert close.node_score(CARDS, used(0, 0), used(47, 0)) == close.node_score(CARDS, used(0, 0), used(49, 0))
    # Card level: filling the half-used card costs less than opening an empty one.
    card = CARDS[0]
    assert fgd.card_cost(card, CardUsage(50, 0, 1), 50, 0) < fgd.card_cost(card, CardUsage(), 50, 0)


def test_fgd_target_is_the_typical_pods() -> None:
    # 60 tasks of a half card, 30 whole cards, 6 without GPUs, 4 of a 10% share:
    # 95% is reached with the first three; the 10% share is left out, weights renormalized.
    w = Workload.of(
        [
            TaskClass(1, 50, 60.0, 4000, 1000),
            TaskClass(1, 100, 30.0, 8000, 2000),
            TaskClass(0, 0, 6.0, 2000),
            TaskClass(1, 10, 4.0, 1000),
        ]
    )
    t = w.typical(Fgd.POPULAR)
    assert {(c.vgpus, c.cores): round(c.weight, 4) for c in t.classes} == {(1, 50): 0.625, (1, 100): 0.3125}
    assert t.cpu_weight == pytest.approx(0.0625)
    assert all(c.memory_mib == 0 for c in t.classes)  # told apart by CPU and GPU only
    # Tasks without GPUs find all free GPU a fragment: on an empty 2-card node,
    # F = 0.0625 x 200 + the half class's 0 + the whole class's 0.
    assert node_fragmentation(CARDS, used(0, 0), t) == pytest.approx(12.5)


def test_fast_measure_equals_the_definition() -> None:
    # Fgd's fast evaluation (prefix sums over classes by CPU) against node_fragmentation.
    rng = random.Random(7)
    classes = [
        TaskClass(
            rng.choice([1, 1, 2]), rng.choice([20, 35, 50, 100]), rng.random(), cpu_milli=rng.randrange(0, 20000, 1000)
        )
        for _ in range(12)
    ]
    classes.append(TaskClass(0, 0, 0.5, cpu_milli=3000))
    w = Workload.of(
        c if c.cores == 100 or c.vgpus <= 1 else TaskClass(1, c.cores, c.weight, c.cpu_milli) for c in classes
    )
    typical = w.typical(Fgd.POPULAR)
    fgd = Fgd(w)
    cards = tuple(Card(i, f"u{i}", "G2", 32768, 100) for i in range(4))
    for _ in range(200):
        before = used(*(rng.choice([0, 0, 30, 50, 65, 100]) for _ in cards))
        after = used(*(min(100, b.cores + rng.choice([0, 20, 50])) for b in before))
        host = Host(40000, 1 << 20, rng.randrange(0, 40000, 500))
        cpu = rng.randrange(0, 8000, 500)
        growth = node_fragmentation(cards, before, typical, host) - node_fragmentation(
            cards, after, typical, host.plus(cpu, 0)
        )
        want = 100 / (1 + math.exp(-growth / 100))
        got = fgd.host_node_score(cards, before, after, host, cpu, 0)
        assert got == int(want) or abs(want - round(want)) < 1e-9  # equal but at a rounding edge


def test_fragmentation_counts_gpus_a_short_host_strands() -> None:
    ours = Fragmentation(HALF_WHOLE)
    # r = CPU per percent of GPU = (0.5*8000 + 0.5*12000) / (0.5*50 + 0.5*100) = 133.3 milli.
    # A CPU-only task of 16 cores on an empty 2-card node with 24 cores: FGD's classes
    # still fit the 8 cores left (the half class), but 8 cores feed only 60% of GPU:
    # stranded before max(0, 200 - 24000/133.3) = 20, after 200 - 60 = 140.
    host = Host(24000, 1 << 20)
    stranded_growth = 2.0 * (140 - 20)  # STRAND = 2
    # FGD part (weights by GPU demand: half 1/3, whole 2/3): before 0; after the whole
    # class cannot run (8 < 12 cores): 2/3 * 200.
    fgd_growth = 2 / 3 * 200
    tie = Fragmentation.TIE * 200
    score = ours.host_node_score(CARDS, used(0, 0), used(0, 0), host, 16000, 0)
    assert score == pytest.approx(-(stranded_growth + fgd_growth) - tie)
    # The same task on a node whose cards are all taken costs nothing.
    assert ours.host_node_score(CARDS, used(100, 100), used(100, 100), host, 16000, 0) == 0.0


def test_fragmentation_best_fit_breaks_ties() -> None:
    ours = Fragmentation(HALF_WHOLE)
    # A whole card on an empty node or on a node with one whole card left: same growth
    # (0: whole cards stay whole), but the fuller node keeps less free: it wins.
    emptier = ours.node_score(CARDS, used(0, 0), used(100, 0))
    fuller = ours.node_score(CARDS, used(100, 0), used(100, 100))
    assert fuller > emptier
    assert fuller - emptier == pytest.approx(Fragmentation.TIE * 100)


def test_policies_declare_their_abilities() -> None:
    for policy in (Fgd(), Fragmentation()):
        assert isinstance(policy, WorkloadAware) and isinstance(policy, HostAware)
        assert policy.request_lowers_score


def test_workload_weights() -> None:
    w = HALF_WHOLE.by_gpu_demand()
    weights = {(c.vgpus, c.cores): round(c.weight, 6) for c in w.classes}
    # count x GPU demand: 1 x 50 and 1 x 100 -> 1/3 and 2/3.
    assert weights == {(1, 50): round(1 / 3, 6), (1, 100): round(2 / 3, 6)}


def test_fragmentation_feeds_tasks_without_gpus_from_the_host_cpu_too() -> None:
    # With tasks without GPUs in the workload, r (CPU per percent of GPU) grows: a host
    # must keep more CPU per free GPU, so eating its CPU strands more.
    with_cpu_tasks = Workload.of([*HALF_WHOLE.classes, TaskClass(0, 0, 1.0, cpu_milli=20000)])
    # 48 cores, 2 free cards, a 4-core task. GPU tasks only: r = 133 milli, 44 cores feed
    # 330% > 200%: nothing stranded. With the CPU-only class (weights 1/4, 1/4, 1/2):
    # r = 15000 / 37.5 = 400 milli, stranded 200 - 120 = 80 before, 200 - 110 = 90 after: 2 x 10.
    host = Host(48000, 1 << 20)
    plain = Fragmentation(HALF_WHOLE).host_node_score(CARDS, used(0, 0), used(0, 0), host, 4000, 0)
    fed = Fragmentation(with_cpu_tasks).host_node_score(CARDS, used(0, 0), used(0, 0), host, 4000, 0)
    assert plain == pytest.approx(0.0, abs=1e-3)
    assert fed == pytest.approx(-20.0, abs=1e-3)
    # Cards all taken: nothing to strand either way.
    full = Fragmentation(with_cpu_tasks).host_node_score(CARDS, used(100, 100), used(100, 100), host, 4000, 0)
    assert full == 0.0


def test_fragmentation_puts_a_share_on_the_best_card_of_the_cluster() -> None:
    # Shares of 47 and 32 (4 cores each), 12% shares (2 cores), whole cards (8 cores).
    w = Workload.of(
        [
            TaskClass(1, 47, 3.0, cpu_milli=4000),
            TaskClass(1, 32, 1.0, cpu_milli=4000),
            TaskClass(1, 12, 0.5, cpu_milli=2000),
            TaskClass(1, FULL_CORES, 4.0, cpu_milli=8000),
        ]
    )
    # A 47% share: node a has a card with a 47 on it (53 free) and an idle card, and 10 cores
    # left; node b a card with a 32 on it (68 free) beside a full one, and 14 cores. The
    # node measure alone puts it beside the 32 on b (21 left, that only a 12 fits; more CPU
    # to spare); the card term beside the 47 on a (6 left).
    nodes = {"a": (used(47, 0), Host(32000, 1 << 20, 22000)), "b": (used(32, 100), Host(32000, 1 << 20, 18000))}

    def place(policy: Fragmentation) -> tuple[str, int]:
        options = []
        for name, (usage, host) in nodes.items():
            card = min(
                (i for i in range(2) if usage[i].cores + 47 <= FULL_CORES),
                key=lambda i: policy.card_cost(CARDS[i], usage[i], 47, 0),
            )
            after = tuple(u.plus(CardUsage(47, 0, 1)) if i == card else u for i, u in enumerate(usage))
            options.append((policy.host_node_score(CARDS, usage, after, host, 4000, 0), name, card))
        _, name, card = max(options)
        return name, card

    assert place(Fragmentation(w)) == ("a", 0)

    class NodeMeasureOnly(Fragmentation):
        CARD = 0.0

    assert place(NodeMeasureOnly(w)) == ("b", 0)  # what the card term changes
    # With 6 cores on a, the share would leave 2 there, below the 4 of the smallest tasks that
    # matter: a's idle card would stay idle, which outweighs the better hole.
    nodes["a"] = (used(47, 0), Host(32000, 1 << 20, 26000))
    assert place(Fragmentation(w)) == ("b", 0)
    assert place(type("NoFloor", (Fragmentation,), {"SHORT": 0.0})(w)) == ("a", 0)


def test_fragmentation_keeps_the_cards_constrained_tasks_need() -> None:
    # Shares of 47% that may go anywhere (6 parts of the demand) and shares of 47% that
    # may only use T4 (5 parts); 1 T4 card per 9 G2 cards. An unconstrained 47 has two
    # places: beside a 47 on the T4 card (6 left: the best hole) or an idle G2 card (53
    # left). Without the constraint the hole wins; with it, T4-only shares ask 5 times the
    # T4 cards (pressure 5, price 1 per percent): that T4 hole is one a T4-only 47 needs,
    # and the share opens the G2 card instead.
    t4 = (Card(0, "t4", "T4", 16384, 100),)
    g2 = (Card(0, "g2", "G2", 32768, 100),)

    def workload(t4_only: bool) -> Workload:
        return Workload.of(
            [TaskClass(1, 47, 6.0), TaskClass(1, 47, 5.0, models=frozenset({"T4"}) if t4_only else frozenset())]
        )

    def choice(policy: Fragmentation) -> str:
        on_t4 = policy.node_score(t4, used(47), used(94))
        on_g2 = policy.node_score(g2, used(0), used(47))
        return "T4" if on_t4 > on_g2 else "G2"

    for t4_only, expected in ((False, "T4"), (True, "G2")):
        policy = Fragmentation(workload(t4_only))
        policy.use_capacity({"T4": 1, "G2": 9})
        assert choice(policy) == expected, t4_only
    # Without the cluster's capacity per model there is no pressure to read: the hole wins.
    assert choice(Fragmentation(workload(True))) == "T4"


def test_fragmentation_prices_whole_cards_of_a_needed_model() -> None:
    # One whole card, any model; half the demand is whole V100 cards, 1 V100 card of 10.
    v100 = (Card(0, "v", "V100M32", 32768, 100),)
    g2 = (Card(0, "g", "G2", 32768, 100),)
    w = Workload.of([TaskClass(1, FULL_CORES, 1.0), TaskClass(1, FULL_CORES, 1.0, models=frozenset({"V100M32"}))])
    policy = Fragmentation(w)
    policy.use_capacity({"V100M32": 1, "G2": 9})
    # Price 1 per percent x 100 percent x CARD 1000 apart.
    gap = policy.node_score(g2, used(0), used(100)) - policy.node_score(v100, used(0), used(100))
    assert gap == pytest.approx(Fragmentation.CARD * 100, rel=0.01)


G2_NODE = tuple(Card(i, f"g2/{i}", "G2", 32768, 100) for i in range(8))
G3_NODE = tuple(Card(i, f"g3/{i}", "G3", 32768, 100) for i in range(8))
G2_KIND = NodeKind("G2", 8, 96_000, 786_432)
G3_KIND = NodeKind("G3", 8, 128_000, 786_432)


def test_a_host_request_confines_a_class_to_the_node_kinds_that_fit_it() -> None:
    # 8-card tasks asking 120 cores fit only the 128-core G3 nodes (1 of 10): their demand
    # (a third of all) is three times what G3 has, so G3 cards get the full price, and a
    # 1-card task that fits anywhere goes to a G2 node. Without the node kinds (models
    # only) nothing confines the 8-card tasks and no price is set.
    w = Workload.of([TaskClass(1, FULL_CORES, 16.0, cpu_milli=8000), TaskClass(8, FULL_CORES, 1.0, cpu_milli=120_000)])
    policy = Fragmentation(w)
    policy.use_capacity({"G2": 72, "G3": 8}, {G2_KIND: 9, G3_KIND: 1})
    assert policy.kind_pressure(w) == {G2_KIND: 0.0, G3_KIND: pytest.approx(10 / 3)}
    assert G3_KIND.takes(w.classes[1]) and not G2_KIND.takes(w.classes[1])

    def score(cards: tuple[Card, ...], kind: NodeKind) -> float:
        return policy.host_node_score(
            cards, used(*[0] * 8), used(100, *[0] * 7), Host(kind.cpu_milli, kind.memory_mib), 8000, 0
        )

    gap = score(G2_NODE, G2_KIND) - score(G3_NODE, G3_KIND)
    assert gap > Fragmentation.CARD * 100 * Fragmentation.PRICE * 0.99
    by_model = Fragmentation(w)
    by_model.use_capacity({"G2": 72, "G3": 8})
    assert not by_model._m.price


def test_the_policy_reprices_for_constrained_pods_its_plan_did_not_foresee() -> None:
    # Planned: shares that may go anywhere. Arriving: T4-only shares, 1 T4 card of 10.
    # After REPRICE_EVERY pods the observed mix puts T4 far above the plan: T4 is priced.
    t4, g2 = NodeKind("T4", 1), NodeKind("G2", 1)
    policy = Fragmentation(Workload.of([TaskClass(1, 50, 1.0)]))
    policy.use_capacity({"T4": 1, "G2": 9}, {t4: 1, g2: 9})
    assert not policy._m.price
    full = {t4: 1.0, g2: 9.0}
    asks = [policy.observe(TaskClass(1, 50, 1.0, models=frozenset({"T4"}))) for _ in range(Fragmentation.REPRICE_EVERY)]
    assert asks == [False] * (Fragmentation.REPRICE_EVERY - 1) + [True]
    assert policy.reprice(full)  # scores changed: the caller drops its caches
    assert policy._m.price.of((Card(0, "t", "T4", 16384, 100),), None) == pytest.approx(Fragmentation.PRICE)
    assert not policy.reprice(full)  # nothing moved: caches stay


def test_the_price_follows_the_cards_left_of_each_kind() -> None:
    # T4-only shares are a tenth of the demand, T4 half the cards: pressure 0.2 at the start.
    # Once unconstrained tasks have taken most T4 cards, the T4-only demand to come needs
    # more than the T4 cards left, and T4 costs the full price.
    t4, g2 = NodeKind("T4", 1), NodeKind("G2", 1)
    w = Workload.of([TaskClass(1, 50, 9.0), TaskClass(1, 50, 1.0, models=frozenset({"T4"}))])
    policy = Fragmentation(w)
    policy.use_capacity({"T4": 5, "G2": 5}, {t4: 5, g2: 5})
    card = (Card(0, "t", "T4", 16384, 100),)
    assert policy._m.price.of(card, None) == pytest.approx(0.2**Fragmentation.POWER)
    assert policy.reprice({t4: 0.5, g2: 5.0})
    assert policy._m.price.of(card, None) == pytest.approx(Fragmentation.PRICE)
    assert policy.reprice({t4: 5.0, g2: 5.0})  # back to the start
    assert policy._m.price.of(card, None) == pytest.approx(0.2**Fragmentation.POWER)


def test_fragmentation_counts_gpus_a_short_host_memory_strands() -> None:
    # r_mem = GPU tasks' memory per percent of GPU = (0.5*16384 + 0.5*32768) / 75 = 327.68 MiB.
    # A CPU-only task of 32 GiB on an empty 2-card node with 64 GiB and CPU to spare:
    # 64 GiB feeds 200% (nothing stranded), 32 GiB only 100%: 2 x 100 more stranded.
    w = Workload.of(
        [
            TaskClass(1, 50, 1.0, cpu_milli=8000, memory_mib=16384),
            TaskClass(1, 100, 1.0, cpu_milli=12000, memory_mib=32768),
        ]
    )
    host = Host(1_000_000, 65536)
    tie = Fragmentation.TIE * 200
    ours = Fragmentation(w)
    assert ours.host_node_score(CARDS, used(0, 0), used(0, 0), host, 0, 32768) == pytest.approx(-2.0 * 100 - tie)
    # A smaller request strands less; with the memory term off (MEM 0) memory counts for nothing.
    assert ours.host_node_score(CARDS, used(0, 0), used(0, 0), host, 0, 16384) == pytest.approx(-2.0 * 50 - tie)
    cpu_only = type("CpuOnly", (Fragmentation,), {"MEM": 0.0})(w)
    assert cpu_only.host_node_score(CARDS, used(0, 0), used(0, 0), host, 0, 32768) == pytest.approx(-tie)
    # Where memory is the shorter, the CPU term does not count it twice: a 4-core task beside
    # it changes nothing more (1000 cores feed far more than 200%).
    both = ours.host_node_score(CARDS, used(0, 0), used(0, 0), host, 4000, 32768)
    assert both == pytest.approx(-2.0 * 100 - tie)


def test_repricing_scores_as_a_measure_built_afresh() -> None:
    # Re-pricing keeps the measure's memos; the scores must be those of a measure rebuilt
    # with the same prices.
    t4, g2 = NodeKind("T4", 2, 48000, 1 << 17), NodeKind("G2", 2, 48000, 1 << 17)
    w = Workload.of(
        [
            TaskClass(1, 50, 9.0, cpu_milli=8000, memory_mib=8192),
            TaskClass(1, 100, 3.0, cpu_milli=12000, memory_mib=16384),
            TaskClass(1, 50, 1.0, cpu_milli=4000, memory_mib=4096, models=frozenset({"T4"})),
        ]
    )
    policy = Fragmentation(w)
    policy.use_capacity({"T4": 10, "G2": 10}, {t4: 5, g2: 5})
    rng = random.Random(7)
    states = []
    for model in ("T4", "G2"):
        cards = tuple(Card(i, f"{model}{i}", model, 16384, 100) for i in range(2))
        for _ in range(20):
            before = used(rng.choice((0, 30, 50)), rng.choice((0, 50, 100)))
            after = tuple(
                CardUsage(b.cores + d, (b.cores + d) * 100, b.vgpus + (1 if d else 0))
                for b, d in zip(before, (rng.choice((0, 50)) if b.cores <= 50 else 0 for b in before), strict=True)
            )
            host = Host(48000, 1 << 17, rng.choice((0, 16000, 40000)), rng.choice((0, 1 << 16)))
            states.append((cards, before, after, host))

    def scores(p: Fragmentation) -> list[float]:
        return [p.host_node_score(c, b, a, h, 2000, 2048) for c, b, a, h in states]

    scores(policy)  # fill the memos at the first prices
    assert policy.reprice({t4: 0.5, g2: 10.0})  # T4 nearly gone: its price moves
    kept = scores(policy)
    policy.use_workload(policy._workload)  # rebuilt from nothing, same pressures
    assert scores(policy) == kept


def test_only_the_workload_scored_with_is_learned() -> None:
    # The hole values are learned on first use: a policy built with the prior and handed
    # its workload before any score learns that workload's table alone.
    learn.cache_clear()
    policy = Fragmentation()  # the built-in prior
    w = Workload.of([TaskClass(1, 35, 1.0), TaskClass(1, 100, 1.0)])
    policy.use_workload(w)
    assert learn.cache_info().currsize == 0
    cost = policy.card_cost(CARDS[0], used(0)[0], 35, 0)
    assert learn.cache_info().currsize == 1
    assert cost == pytest.approx(leftover_table([(1, 35, 1.0), (1, 100, 1.0)])[65] + Fragmentation.TIE * 100)


def test_a_host_below_the_floor_strands_all_its_free_gpu() -> None:
    # HALF_WHOLE's smallest one-card task asks 8 cores and carries a third of the GPU demand:
    # the floor is 8 cores. A CPU-only task of 17 cores on an empty 2-card node with 24 leaves
    # 7 cores: below the floor nothing is fed (200 stranded), where the ratio alone would feed
    # 7000 / 133.3 = 52.5% (147.5 stranded). (The measure alone: the card term's part is SHORT's.)
    ours = type("MeasureOnly", (Fragmentation,), {"SHORT": 0.0})(HALF_WHOLE)
    fluid = type("Fluid", (Fragmentation,), {"FLOOR": 0.0})(HALF_WHOLE)
    host = Host(24000, 1 << 20)
    before = 2.0 * max(0.0, 200 - 24000 / (10000 / 75))
    fgd_growth = 200.0  # neither class runs on 7 cores
    tie = Fragmentation.TIE * 200
    got = ours.host_node_score(CARDS, used(0, 0), used(0, 0), host, 17000, 0)
    assert got == pytest.approx(-(2.0 * 200 - before + fgd_growth) - tie)
    assert fluid.host_node_score(CARDS, used(0, 0), used(0, 0), host, 17000, 0) == pytest.approx(
        -(2.0 * (200 - 7000 / (10000 / 75)) - before + fgd_growth) - tie
    )
    # At the floor the ratio counts again; a node with no free GPU strands nothing.
    at_floor = ours.host_node_score(CARDS, used(0, 0), used(0, 0), host, 16000, 0)
    assert at_floor == fluid.host_node_score(CARDS, used(0, 0), used(0, 0), host, 16000, 0)
    assert ours.host_node_score(CARDS, used(100, 100), used(100, 100), host, 17000, 0) == 0.0


def test_a_host_short_of_the_memory_floor_strands_all_its_free_gpu() -> None:
    w = Workload.of(
        [
            TaskClass(1, 50, 1.0, cpu_milli=1000, memory_mib=16384),
            TaskClass(1, 100, 1.0, cpu_milli=1000, memory_mib=32768),
        ]
    )
    ours = type("MeasureOnly", (Fragmentation,), {"SHORT": 0.0})(w)
    fluid = type("Fluid", (Fragmentation,), {"FLOOR": 0.0})(w)
    host = Host(1_000_000, 65536)
    # 64 - 50 = 14 GiB left: below the 16 GiB floor, all 200 stranded (ratio alone: 200 - 14336 / 327.68).
    ratio = (0.5 * 16384 + 0.5 * 32768) / 75
    got = ours.host_node_score(CARDS, used(0, 0), used(0, 0), host, 0, 51200)
    want = fluid.host_node_score(CARDS, used(0, 0), used(0, 0), host, 0, 51200) - 2.0 * (14336 / ratio)
    assert got == pytest.approx(want)


@pytest.mark.parametrize(
    ("small_weight", "share", "cpu", "memory"),
    [
        (1.0, 0.05, 3000, 4096),  # the small tasks carry a tenth of the GPU demand: their needs
        (0.01, 0.05, 8000, 16384),  # too few to matter: the next tasks' needs
        (1.0, 0.0, 0, 0),  # off
    ],
)
def test_the_floor_follows_the_workload(small_weight: float, share: float, cpu: int, memory: int) -> None:
    w = Workload.of(
        [
            TaskClass(1, 50, small_weight, cpu_milli=3000, memory_mib=4096),
            TaskClass(1, 50, 1.0, cpu_milli=8000, memory_mib=16384),
            TaskClass(4, 100, 1.0, cpu_milli=2000, memory_mib=2048),  # several cards: not a last card's task
            TaskClass(0, 0, 5.0, cpu_milli=500),  # no GPU: feeds nothing
        ]
    )
    assert host_floor(w, share, lambda c: c.cpu_milli) == cpu
    assert host_floor(w, share, lambda c: c.memory_mib) == memory


def test_a_pod_that_takes_a_host_below_the_floor_pays_its_free_gpu_in_the_card_term() -> None:
    # Below the floor every free percent of the node stays free to the end: in the card term's
    # units (expected final leftover) that is the node's free GPU less the holes its shared
    # cards were expected to keep anyway, weighed as a share's card is (CARD).
    ours = Fragmentation(HALF_WHOLE)
    plain = type("Plain", (Fragmentation,), {"SHORT": 0.0})(HALF_WHOLE)
    host = Host(24000, 1 << 20)
    kept = ours._m.leftover[50]  # the 50% hole of card 0
    for pod_cpu, jump in ((17000, 150 - kept), (16000, 0.0)):  # 7 cores left: below; 8: at the floor
        got = ours.host_node_score(CARDS, used(50, 0), used(50, 0), host, pod_cpu, 0)
        want = plain.host_node_score(CARDS, used(50, 0), used(50, 0), host, pod_cpu, 0)
        assert got == pytest.approx(want - Fragmentation.CARD * jump)
    # A whole card taken on the way down pays for the free GPU left behind; a host already
    # below the floor pays nothing more for a task without GPUs.
    got = ours.host_node_score(CARDS, used(50, 0), used(50, 100), host, 17000, 0)
    want = plain.host_node_score(CARDS, used(50, 0), used(50, 100), host, 17000, 0)
    assert got == pytest.approx(want - Fragmentation.CARD * (50 - kept))
    low = Host(24000, 1 << 20, 17000)
    got = ours.host_node_score(CARDS, used(50, 0), used(50, 0), low, 1000, 0)
    assert got == pytest.approx(plain.host_node_score(CARDS, used(50, 0), used(50, 0), low, 1000, 0))


@pytest.mark.parametrize(("host_cpu", "floor"), [(48000, 8000), (24000, 0)])
def test_no_floor_where_the_workload_asks_all_the_cluster_cpu(host_cpu: int, floor: int) -> None:
    # HALF_WHOLE asks 133 millicores per percent of GPU: 2-card hosts of 48 cores have 240 to
    # give (a host's last cores may go unused: the floor counts), of 24 cores 120 (every core
    # finds a task: no floor).
    policy = Fragmentation(HALF_WHOLE)
    policy.use_capacity({"T4": 20}, {NodeKind("T4", 2, host_cpu, 1 << 20): 10})
    host = Host(host_cpu, 1 << 20, host_cpu - 10000)
    fluid = type("Fluid", (Fragmentation,), {"FLOOR": 0.0})(HALF_WHOLE)
    fluid.use_capacity({"T4": 20}, {NodeKind("T4", 2, host_cpu, 1 << 20): 10})
    got = policy.host_node_score(CARDS, used(0, 0), used(0, 0), host, 3000, 0)
    want = fluid.host_node_score(CARDS, used(0, 0), used(0, 0), host, 3000, 0)
    assert (got == want) == (floor == 0)
