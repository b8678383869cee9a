from __future__ import annotations

from pathlib import Path

from flexai_core.model import FULL_CORES
from flexai_sched.sim import trace, workload


def test_arrivals_reach_130_percent_and_repeat_per_seed(tiny: Path) -> None:
    t = trace.load(tiny)
    a = workload.arrivals(t, 42)
    demand = [p.gpu_demand_milli for p in a]
    # Capacity 2000 milli: stops at the first pod that brings the total to >= 2600.
    assert sum(demand) >= 2600
    assert sum(demand) - max(demand) < 2600  # the pod that crossed the line was the last drawn
    assert [p.name for p in a] == [p.name for p in workload.arrivals(t, 42)]
    assert [p.name for p in a] != [p.name for p in workload.arrivals(t, 43)] or len(a) < 3


def test_target_workload_weights_by_count(tiny: Path) -> None:
    w = workload.target_workload(trace.load(tiny))
    shapes = {(c.vgpus, c.cores): c.weight for c in w.classes}
    # One half-card pod and one whole-card pod: equally likely.
    assert shapes == {(1, 50): 0.5, (1, FULL_CORES): 0.5}
