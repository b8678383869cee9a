"""How much of each GPU model the workload's model-constrained tasks will need.

A task that may use only some GPU models (``huawei.com/vgpu-type.<MODEL>``) fails once
those models are full, however much else is free. A task that may use any model should
therefore leave the cards that constrained tasks depend on, as long as others fit it.
``model_pressure`` says how much each model is depended on: the constrained demand the
model must carry when that demand (GPU asked per task class, scaled so that all tasks
together ask the cluster's capacity, i.e. at 100% arrived) is spread over the allowed
models as evenly as it can be, as a fluid:

- the set of models T whose capacity the demand of tasks that may use only models of T
  fills most (the densest set, the largest among equals) carries that demand: each model
  of T gets pressure D(T) / C(T);
- T and the tasks confined to it are taken out, tasks that also allow other models keep
  only those, and the rest is done the same way.

So a model that constrained tasks need more of than it has gets a pressure above 1, one
that no constrained task needs 0, and a workload without constraints leaves every model
at 0. Pure arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Final

# Above this many models, only the tasks' own model sets (and their union) are tried as
# the densest set instead of every subset.
MAX_EXACT_MODELS: Final = 12


def model_pressure(demand: Mapping[frozenset[str], float], capacity: Mapping[str, float]) -> dict[str, float]:
    """Per model of ``capacity`` (cards, or any unit of capacity), the share of it the
    constrained demand needs. ``demand``: GPU demand per set of allowed models (the empty
    set: any model, counted in the total only), in any unit."""
    models = {m for m, c in capacity.items() if c > 0}
    pressure = {m: 0.0 for m in capacity}
    total = sum(d for d in demand.values() if d > 0)
    if not models or total <= 0:
        return pressure
    scale = sum(capacity[m] for m in models) / total
    sets: dict[frozenset[str], float] = {}
    for allowed, d in demand.items():
        usable = frozenset(allowed) & models
        if allowed and usable and d > 0:  # a set of absent models fails anyway: no pressure
            sets[usable] = sets.get(usable, 0.0) + d * scale
    while sets:
        best, best_rho = frozenset[str](), -1.0
        for t in _candidates(sets):
            need = sum(d for s, d in sets.items() if s <= t)
            rho = need / sum(capacity[m] for m in t)
            if rho > best_rho + 1e-12 or (abs(rho - best_rho) <= 1e-12 and len(t) > len(best)):
                best, best_rho = t, rho
        for m in best:
            pressure[m] = best_rho
        rest: dict[frozenset[str], float] = {}
        for s, d in sets.items():
            if not s <= best:
                rest[s - best] = rest.get(s - best, 0.0) + d
        sets = rest
    return pressure


def _candidates(sets: Mapping[frozenset[str], float]) -> list[frozenset[str]]:
    union = frozenset().union(*sets)
    if len(union) > MAX_EXACT_MODELS:
        return [*sets, union]
    ordered = sorted(union)
    return [frozenset(c) for k in range(1, len(ordered) + 1) for c in combinations(ordered, k)]
