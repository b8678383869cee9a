"""The GPU models constrained tasks depend on, worked out by hand."""

from __future__ import annotations

import pytest

from flexai_sched.policies.scarcity import model_pressure

A, B, C = frozenset({"A"}), frozenset({"B"}), frozenset({"C"})
ANY = frozenset[str]()


@pytest.mark.parametrize(
    ("demand", "capacity", "expected"),
    [
        # No constraints: nobody depends on any model.
        ({ANY: 10.0}, {"A": 1, "B": 1}, {"A": 0.0, "B": 0.0}),
        # Total demand 10 is scaled to the capacity 10: A-only asks 3 of A's 2 cards.
        ({ANY: 7.0, A: 3.0}, {"A": 2, "B": 8}, {"A": 1.5, "B": 0.0}),
        # A or B asks 4 (scaled: 4), B only 1: together 5 over A+B's 5 cards (densest: 1.0),
        # rather than B alone (1 over 4).
        ({ANY: 5.0, A | B: 4.0, B: 1.0}, {"A": 1, "B": 4, "C": 5}, {"A": 1.0, "B": 1.0, "C": 0.0}),
        # A-only fills A (2 of 1 card: 2.0); A-or-B then goes to B alone (1 of 4: 0.25).
        ({ANY: 7.0, A: 2.0, A | B: 1.0}, {"A": 1, "B": 4, "C": 5}, {"A": 2.0, "B": 0.25, "C": 0.0}),
        # A model the cluster lacks: those tasks fail anyway and press on nothing.
        ({ANY: 9.0, frozenset({"Z"}): 1.0}, {"A": 10}, {"A": 0.0}),
    ],
    ids=["unconstrained", "one-model", "densest-pair", "peeled", "absent-model"],
)
def test_model_pressure(
    demand: dict[frozenset[str], float], capacity: dict[str, int], expected: dict[str, float]
) -> None:
    assert model_pressure(demand, capacity) == pytest.approx(expected)
