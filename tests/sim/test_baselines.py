"""The FGD paper's baselines, as table tests."""

from __future__ import annotations

import pytest

from flexai_sched import policies
from flexai_sched.fragmentation import Host
from flexai_sched.model import Card, CardUsage
from flexai_sched.sim.baselines import BestFit, GpuPacking, RandomFit

CARDS = tuple(Card(i, f"u{i}", "T4", 16384, 100) for i in range(2))


def used(*cores: int) -> tuple[CardUsage, ...]:
    return tuple(CardUsage(c, 0, 1 if c else 0) for c in cores)


@pytest.mark.parametrize(
    ("before", "after", "tier"),
    [
        ((30, 0), (80, 0), 2.0),  # shares a card already in use
        ((100, 0), (100, 50), 1.0),  # an idle card of an active node
        ((0, 0), (50, 0), 0.0),  # an idle node
        ((30, 0), (30, 0), 0.0),  # no GPU asked: no tier
    ],
    ids=["occupied-card", "active-node", "idle-node", "cpu-only"],
)
def test_gpu_packing_tiers(before: tuple[int, int], after: tuple[int, int], tier: float) -> None:
    assert GpuPacking().node_score(CARDS, used(*before), used(*after)) == tier


def test_gpu_packing_prefers_occupied_cards() -> None:
    g = GpuPacking()
    assert g.card_cost(CARDS[0], CardUsage(30, 0, 1), 20, 0) < g.card_cost(CARDS[0], CardUsage(), 20, 0)


def test_best_fit_weighs_cpu_and_gpu_left() -> None:
    b = BestFit()
    host = Host(32000, 1 << 20)
    # After: GPU free (100 + 50) / 200 = 0.75; CPU left (32 - 8) / 32 = 0.75: score -1.5.
    assert b.host_node_score(CARDS, used(0, 0), used(0, 50), host, 8000, 0) == pytest.approx(-1.5)
    # The fullest card that fits comes first.
    assert b.card_cost(CARDS[0], CardUsage(70, 0, 1), 20, 0) < b.card_cost(CARDS[0], CardUsage(10, 0, 1), 20, 0)


def test_random_fit_scores_every_node_alike_and_repeats() -> None:
    r = RandomFit()
    assert r.node_score(CARDS, used(0, 0), used(50, 0)) == r.node_score(CARDS, used(90, 0), used(90, 50)) == 0.0
    assert r.card_cost(CARDS[0], CardUsage(), 10, 0) == RandomFit().card_cost(CARDS[0], CardUsage(), 10, 0)


def test_all_are_registered() -> None:
    for name in ("fgd", "fragmentation", "random", "bestfit", "gpupacking", "binpack", "spread"):
        assert policies.get(name).name == name
