"""The learned table of what a shared card's hole keeps at the end (flexai_sched.policies.leftover)."""

from __future__ import annotations

import random

from flexai_core.model import FULL_CORES, Card, CardUsage
from flexai_sched.policies.fragmentation import Fragmentation
from flexai_sched.policies.leftover import CARDS, _arrivals, learn, leftover_table, replay_cards
from flexai_sched.workload import TaskClass, Workload

# Shares of 47 (frequent) and 32, and whole cards: (cards, percent, weight).
PAIRS = ((1, 47, 3.0), (1, 32, 1.0), (1, FULL_CORES, 4.0))


def test_holes_no_share_fits_keep_everything_and_exact_fits_keep_little() -> None:
    e = leftover_table(PAIRS)
    assert e[0] == 0.0 and e[FULL_CORES] == 0.0  # a full card; an idle card is no hole
    assert all(e[h] == h for h in range(32))  # below the smallest share: nothing fills it
    assert all(0.0 <= e[h] <= h for h in range(FULL_CORES))
    # A 47 beside a 47 leaves 6; the card with a 47 (53 free) is expected to end near that,
    # far below a card with 47 + 32 (21 free, which nothing fits).
    assert e[53] < 10.0 < e[21] == 21.0


def test_holes_compete_for_the_few_shares_that_fit_them() -> None:
    # Ten 81% shares per 16% share: most 19% holes never get one, although a 16 fits each.
    e = leftover_table(((1, 81, 10.0), (1, 16, 1.0), (1, FULL_CORES, 10.0)))
    assert e[19] > 15.0


def test_the_table_is_the_same_for_the_same_tasks() -> None:
    first = leftover_table(PAIRS)
    learn.cache_clear()
    assert leftover_table(PAIRS) == first
    # in another order, split in two classes, scaled: the same tasks
    assert leftover_table(((1, FULL_CORES, 8.0), (1, 32, 1.0), (1, 47, 5.0), (1, 32, 1.0), (1, 47, 1.0))) == first


def test_without_shares_no_hole_forms() -> None:
    e = leftover_table(((1, FULL_CORES, 1.0), (8, FULL_CORES, 1.0)))
    assert e[:FULL_CORES] == tuple(float(h) for h in range(FULL_CORES)) and e[FULL_CORES] == 0.0


def test_a_share_goes_where_the_expected_hole_grows_least() -> None:
    policy = Fragmentation(Workload.of(TaskClass(n, cores, w) for n, cores, w in PAIRS))
    card = Card(0, "u0", "T4", 16384, 100)

    def cost(used_cores: int) -> float:
        used = CardUsage(used_cores, 0, 1) if used_cores else CardUsage()
        return policy.card_cost(card, used, 47, 0)

    # The cost is E[after] - E[before] (an idle card: E[before] = 0), so beside a 47 (6 left,
    # for good) wins over an idle card (53 left, expected to end near 6 after a 47 comes)
    # and over a card with a 32 (21 left for good).
    e = leftover_table(PAIRS)
    assert abs(cost(0) - e[53]) < 1e-3  # the tie-break adds 1e-6 per free percent
    assert abs(cost(32) - (e[21] - e[68])) < 1e-3
    assert cost(47) < min(cost(0), cost(32))


def test_a_task_of_two_shares_arrives_as_two_shares() -> None:
    tasks = _arrivals(random.Random(0), ((2, 30, 1.0),))
    assert set(tasks) == {30} and len(tasks) % 2 == 0
    assert CARDS * FULL_CORES - 60 < sum(tasks) <= CARDS * FULL_CORES  # demand up to capacity


def test_the_card_only_replay_places_and_counts_what_is_left() -> None:
    # Two cards: 60, 40 (beside the 60: an exact fit), 50 (opens the second), one whole
    # card (none idle: dropped), 30 (beside the 50). Left: 20 on the second card.
    table = [float(h) for h in range(FULL_CORES + 1)]
    table[FULL_CORES] = 0.0
    sums, counts = [0.0] * (FULL_CORES + 1), [0] * (FULL_CORES + 1)
    assert replay_cards([60, 40, 50, -1, 30], table, 2, sums, counts) == 20
    assert counts[40] == 1 and sums[40] == 0.0  # the first card had 40 free, ended full
    assert counts[50] == 1 and sums[50] == 20.0


def test_per_model_tables_are_the_one_table_without_constrained_demand() -> None:
    from flexai_sched.policies.leftover import leftover_tables

    draws = [(n, c, w, frozenset[str]()) for n, c, w in PAIRS]
    tables = leftover_tables(draws, {"T4": 10, "G2": 90}, {})
    assert tables == {"T4": leftover_table(PAIRS), "G2": leftover_table(PAIRS)}


def test_per_model_tables_see_holes_only_constrained_shares_fill() -> None:
    from flexai_sched.policies.leftover import leftover_tables

    # 32% shares only on T4 (T4 priced: they need it); 47% shares and whole cards anywhere.
    # A card with a 32 on it (68 free) forms on T4 only, where more 32s fill it: E_T4[68] is
    # learned; on G2 that hole never forms and keeps E = 68 (nothing known to fill it).
    draws = [(1, 47, 3.0, frozenset[str]()), (1, 32, 1.0, frozenset({"T4"})), (1, FULL_CORES, 4.0, frozenset[str]())]
    tables = leftover_tables(draws, {"T4": 20, "G2": 80}, {"T4": 1.0})
    assert set(tables) == {"T4", "G2"}
    assert tables["T4"][68] < tables["G2"][68] == 68.0  # a 32 on a card: only T4 ones get filled
