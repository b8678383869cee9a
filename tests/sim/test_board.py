"""The shortlist picks what a full scan would: the best passing node; ties to the first in
node order, or uniformly with ``random_ties``."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping

from flexai_sched.sim.board import Board, Memo


def board(scores: Mapping[int, float | None], random_ties: bool = False) -> Board:
    b = Board(lambda n: scores[n], random_ties)
    b.refresh([], len(scores))
    return b


def test_best_passing_node_wins() -> None:
    b = board({0: 1.0, 1: 3.0, 2: 2.0, 3: None})
    rng = random.Random(1)
    assert b.choose(lambda n: True, rng) == 1
    assert b.choose(lambda n: n != 1, rng) == 2  # the best fails the host filter
    assert b.choose(lambda n: n == 3, rng) is None  # 3 does not fit the cards
    assert b.choose(lambda n: True, rng) == 1  # skipped levels are restored


def test_ties_go_to_the_first_passing_node_in_order() -> None:
    b = board({n: 1.0 for n in range(4)} | {4: 0.5})
    rng = random.Random(3)
    assert {b.choose(lambda n: n != 0, rng) for _ in range(50)} == {1}
    scores: dict[int, float | None] = {0: 1.0, 1: 1.0, 2: 1.0}
    b = board(scores)
    scores[0] = 0.5  # node 0 changes and leaves the tie: the next in order takes it
    b.refresh([0], 3)
    assert b.choose(lambda n: True, rng) == 1


def test_random_ties_are_uniform() -> None:
    b = board({n: 1.0 for n in range(4)} | {4: 0.5}, random_ties=True)
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


def recorded(real: dict[int, float]) -> tuple[Callable[[int], float], list[int]]:
    """An exact-score function over ``real`` and the list of nodes it was asked for."""
    looked: list[int] = []

    def exact(n: int) -> float:
        looked.append(n)
        return real[n]

    return exact, looked


def test_bounded_choice_finds_the_best_real_score() -> None:
    # Bounds 9, 8, 7; real scores 1, 6, 7: node 2 wins although its bound is lowest,
    # and the walk stops there (bound 7 >= best 7, nothing lower can tie).
    b = board({0: 9.0, 1: 8.0, 2: 7.0, 3: 2.0})
    exact, looked = recorded({0: 1.0, 1: 6.0, 2: 7.0, 3: 2.0})
    assert b.choose_bounded(exact, lambda n: True, random.Random(0)) == 2
    assert 3 not in looked


def test_bounded_choice_stops_where_a_real_score_reaches_its_bound() -> None:
    # Bounds 5, 5, 5, 4; real 3, 5, 5, 4. Node 1 reaches its bound: node 2 (later in
    # order) and node 3 (lower bound) can at most tie it, so neither is scored.
    b = board({0: 5.0, 1: 5.0, 2: 5.0, 3: 4.0})
    real = {0: 3.0, 1: 5.0, 2: 5.0, 3: 4.0}
    exact, looked = recorded(real)
    assert b.choose_bounded(exact, lambda n: True, random.Random(0)) == 1
    assert looked == [0, 1]
    # Drawn at random, every tied node must be seen.
    b = board({0: 5.0, 1: 5.0, 2: 5.0, 3: 4.0}, random_ties=True)
    looked.clear()
    assert b.choose_bounded(exact, lambda n: True, random.Random(0)) in {1, 2}
    assert sorted(looked) == [0, 1, 2]


def test_bounded_choice_equals_a_full_scan() -> None:
    rng = random.Random(7)
    for _ in range(300):
        size = rng.randrange(1, 12)
        bound = {n: float(rng.randrange(6)) for n in range(size)}
        real = {n: bound[n] - rng.choice((0.0, 0.0, 1.0, 2.0, 0.5)) for n in range(size)}
        ok = {n for n in range(size) if rng.random() < 0.8}
        b = board(dict(bound))
        best = max((real[n] for n in ok), default=None)
        expected = min((n for n in ok if real[n] == best), default=None)
        assert b.choose_bounded(real.__getitem__, ok.__contains__, rng) == expected
        assert b.choose(ok.__contains__, rng) == min(
            (n for n in ok if bound[n] == max(bound[m] for m in ok)), default=None
        )


def test_memo_rescores_only_changed_nodes() -> None:
    scores = {0: 1.0, 1: 2.0, 2: 3.0}
    calls: list[int] = []

    def score(n: int) -> float:
        calls.append(n)
        return scores[n]

    memo, log = Memo(), [2]
    memo.refresh(log)
    f = memo.wrap(score)
    assert [f(0), f(1), f(0)] == [1.0, 2.0, 1.0]
    assert calls == [0, 1]
    scores[1] = 7.0
    log += [1, 1]  # node 1 changed (twice) since
    memo.refresh(log)
    f = memo.wrap(score)
    assert [f(0), f(1), f(1)] == [1.0, 7.0, 7.0]
    assert calls == [0, 1, 1]
    memo.refresh(log)  # nothing new in the log: everything kept
    assert memo.wrap(score)(1) == 7.0 and calls == [0, 1, 1]
