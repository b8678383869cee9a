"""The shortlist picks what a full scan would: the best passing node, ties uniformly."""

from __future__ import annotations

import random
from collections import Counter

from flexai_sched.sim.board import Board


def board(scores: dict[int, float | None]) -> Board:
    b = Board(lambda n: scores[n])
    b.refresh([], len(scores))
    return b


def test_best_passing_node_wins() -> None:
    b = board({0: 1.0, 1: 3.0, 2: 2.0, 3: None})
    rng = random.Random(1)
    assert b.choose(lambda n: True, rng) == 1
    assert b.choose(lambda n: n != 1, rng) == 2  # the best fails the host filter
    assert b.choose(lambda n: n == 3, rng) is None  # 3 does not fit the cards
    assert b.choose(lambda n: True, rng) == 1  # skipped levels are restored


def test_ties_are_uniform() -> None:
    b = board({n: 1.0 for n in range(4)} | {4: 0.5})
    rng = random.Random(3)
    picks = Counter(b.choose(lambda n: n != 0, rng) for _ in range(3000))
    assert set(picks) == {1, 2, 3}
    assert all(900 < k < 1100 for k in picks.values())


def test_changed_nodes_are_rescored() -> None:
    scores: dict[int, float | None] = {0: 1.0, 1: 2.0}
    b = board(scores)
    scores[1] = None
    scores[0] = 5.0
    b.refresh([1, 0], 2)
    assert b.score(1) is None and b.score(0) == 5.0
    assert b.choose(lambda n: True, random.Random(0)) == 0


def test_bounded_choice_finds_the_best_real_score() -> None:
    # Bounds 9, 8, 7; real scores 1, 6, 7: node 2 wins although its bound is lowest,
    # and the walk stops there (bound 7 >= best 7, nothing lower can tie).
    b = board({0: 9.0, 1: 8.0, 2: 7.0, 3: 2.0})
    real = {0: 1.0, 1: 6.0, 2: 7.0, 3: 2.0}
    looked: list[int] = []

    def exact(n: int) -> float:
        looked.append(n)
        return real[n]

    assert b.choose_bounded(exact, lambda n: True, random.Random(0)) == 2
    assert 3 not in looked
