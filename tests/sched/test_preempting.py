"""The extender's own preemption (``preempting``) beside kube-scheduler's preempt verb."""

from __future__ import annotations

import threading
from typing import Any

from flexai_core.model import Allocation, Slice
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.preemption import Budget
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod

GIB = 1024


def prioritised(name: str, cores: int, gib: int, priority: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    p = pod(name, limits(1, cores=cores, memory_gib=gib))
    p["spec"]["priority"] = priority
    if labels:
        p["metadata"]["labels"] = labels
    return p


def test_the_verb_answers_once_an_own_preemption_found_nothing_to_evict() -> None:
    # n1: card 0 holds db0, card 1 db1 (whole cards, low priority), both under a PDB that allows
    # no disruption. hi (a whole card, high priority) fits nowhere: filter starts the extender's
    # own preemption, which never breaks a PDB and so evicts nothing. kube-scheduler's preempt
    # verb for hi (its own filters need db1 gone for CPU) must then get an answer: the verb may
    # break a PDB, as kube-scheduler's own preemption may. Refusing it ("no candidate") for a
    # while would leave hi waiting for a cluster event that never comes.
    state = ClusterState()
    backend = MemoryBackend([node("n1", 2, memory_mib=80 * GIB)], heartbeat_every=None)
    backend.start(state)
    ext = Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack"))
    for i in (0, 1):
        p = prioritised(f"db{i}", 100, 10, 100, labels={"app": "db"})
        backend.create_pod(p)
        ext.parse(p)
        ext.bind("default", f"db{i}", f"uid-db{i}", "n1")
    state.set_budget(Budget("default", "db", (("app", "db"),), (), 0))
    hi = prioritised("hi", 100, 5, 1000)
    backend.create_pod(hi)
    out = ext.filter(hi, ["n1"])
    assert list(out.failed) == ["n1"]
    got = ext.preempt(hi, {"n1": (["uid-db1"], 0)})  # may come while the own preemption runs
    for t in threading.enumerate():
        if t.name.startswith("preempt-"):
            t.join()
    assert backend.evicted == []  # the own preemption broke no PDB
    assert got == {"n1": (["uid-db1"], 1)}
    assert ext.preempt(hi, {"n1": (["uid-db1"], 0)}) == {}  # its victim is going now: no second choice


def test_a_pod_whose_priority_the_watch_has_not_shown_yet_is_never_our_victim() -> None:
    # x and y were bound a moment ago: their allocations count, but the watch has not shown
    # the pods yet, so their priority is unknown (it read as 0: a high pod just bound was once
    # evicted for a pod of equal priority in the e2e test). Only once known may one be chosen.
    state = ClusterState()
    backend = MemoryBackend([node("n1", 2, memory_mib=80 * GIB)], heartbeat_every=None)
    backend.start(state)
    ext = Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack"))
    for i, name in enumerate(("x", "y")):
        state.observe(
            Allocation.build("default", name, f"uid-{name}", "n1", (Slice("c0", i, f"GPU-n1-{i}", 100, GIB),))
        )
    hi = prioritised("hi", 100, 5, 300)
    backend.create_pod(hi)
    assert ext.preempt(hi, {"n1": ([], 0)}) == {}
    state.set_pod_meta("default/y", "uid-y", 0, {})  # the watch shows y: priority 0
    assert ext.preempt(hi, {"n1": ([], 0)}) == {"n1": (["uid-y"], 0)}
