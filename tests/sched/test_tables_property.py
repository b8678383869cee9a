"""The answer tables (answers.py) against the node-by-node path, after any sequence of state
operations: binds that land, fail or lose their reply, deletions the watch hears late,
pods recreated under the same name, the preempt verb's nominations, the extender's own
preemptions, host and card changes, nodes added and removed, heartbeats and time, and the
refresh that decides changed nodes between calls.

After every step each probe pod (every shape, low and high priority) is decided both ways,
side by side on the same state, without going through ``filter_request`` (whose own work,
such as reading a victim back or starting a preemption, would move the state between the
two answers). First, on the shape's table emptied, a bounded call (a budget that runs out
after a few nodes): it may decide fewer names, never differently, defers names only once
one fits, and finds a fit whenever one exists; the unbounded call then completes the table.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flexai_core.requests import parse_pod
from flexai_sched.answers import NO_FIT
from flexai_sched.backend import CommitError, MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import BindError, Extender, FilterOutcome, _Asked
from flexai_sched.state import ClusterState

from .fixtures import Ticks, limits, node, pod

TTL = 60.0
GIB = 1024
SHAPES = [(1, 20, 8), (1, 50, 40), (2, 30, 16), (1, 100, None), (1, 0, 4)]
NAMES = ["a", "b", "c", "d"]
OPS = [
    "bind",
    "bind",
    "bind_fails",
    "bind_reply_lost",
    "late_reply_lands",
    "delete",
    "delete_unheard",
    "recreate",
    "preempt_verb",
    "own_preemption",
    "host",
    "cards",
    "remove",
    "add",
    "stale",
    "beat",
    "time",
    "learn",
    "refresh",
]


class World:
    def __init__(self, policy: str) -> None:
        self.now = datetime.now(UTC)
        self.mono = 1000.0
        self.state = ClusterState()
        self.backend = MemoryBackend([node(n, 2, memory_mib=80 * GIB, heartbeat=self.now) for n in NAMES], None)
        self.backend.start(self.state)
        for n in NAMES[:2]:
            self.state.set_host_capacity(n, 32_000, 256 * GIB)
        self.ext = Extender(
            self.state, self.backend, Settings(node_policy=policy, card_policy=policy, heartbeat_ttl_s=TTL)
        )
        self.ext._heartbeat_cutoff = lambda: self.now - timedelta(seconds=TTL)  # type: ignore[method-assign]
        self.ext.clock = lambda: self.mono
        self.ext.tables = True
        self.ext.budget_clock = ticks
        self.serial = 0
        self.pods: dict[str, dict[str, Any]] = {}  # name -> the pod as created

    def make(self, k: int, priority: int, name: str | None = None) -> dict[str, Any]:
        self.serial += 1
        name = name or f"p{self.serial}"
        n, cores, mem = SHAPES[k % len(SHAPES)]
        extra = {"cpu": "4"} if k % 2 else {}
        p = pod(name, limits(n, cores=cores, memory_gib=mem, **extra), uid=f"uid-{name}-{self.serial}")
        p["spec"]["priority"] = priority
        self.backend.create_pod(p)
        self.pods[name] = p
        return p

    def bind(self, p: dict[str, Any], where: str) -> None:
        self.ext.parse(p)
        meta = p["metadata"]
        try:
            self.ext.bind("default", meta["name"], meta["uid"], where)
        except BindError:
            pass

    def bound(self) -> list[tuple[str, str]]:
        return [(a.name, a.uid) for a, _ in self.state.allocations()]

    def settle(self) -> None:
        """Wait for the extender's own preemptions (background threads) to end."""
        for t in threading.enumerate():
            if t.name.startswith("preempt-"):
                t.join()

    def step(self, op: str, k: int) -> None:
        names = [n.name for n in self.state.nodes()] or NAMES
        where = names[k % len(names)]
        if op == "bind":
            self.bind(self.make(k, 100 * (k % 3)), where)
        elif op == "bind_fails":
            self.backend.fail_next_commit = "refused"
            self.bind(self.make(k, 0), where)
        elif op == "bind_reply_lost":
            self.backend.lose_next_reply = "timeout"
            self.bind(self.make(k, 0), where)
        elif op == "late_reply_lands":
            with contextlib.suppress(CommitError):  # the pod was recreated meanwhile: that write is refused
                self.backend.deliver_late()
            self.mono += self.ext.settings.bind_hold_s * (k % 2)
            self.ext.expire_holds()
        elif op in ("delete", "delete_unheard"):
            bound = self.bound()
            if bound:
                name, _ = bound[k % len(bound)]
                self.backend.delete_pod("default", name, notify=op == "delete")
        elif op == "recreate":  # a new pod under a bound pod's name, bound elsewhere
            bound = self.bound()
            if bound:
                name, _ = bound[k % len(bound)]
                self.backend.delete_pod("default", name, notify=False)
                self.bind(self.make(k, 0, name=name), where)
        elif op == "preempt_verb":
            p = self.make(k, 1000)
            self.ext.preempt(p, {n: ([], 0) for n in names})
            self.bind(p, where) if k % 2 else None
        elif op == "own_preemption":  # a filter for a pod that fits nowhere starts one
            p = self.make(k, 1000)
            self.ext.filter(p, names)
            self.settle()
            self.ext.filter(p, names)  # reads victims back (victims_left)
        elif op == "host":
            self.state.set_host_capacity(where, (2_000, 8_000, 64_000)[k % 3], (16, 256)[k % 2] * GIB)
        elif op == "cards":
            self.backend.add_node(node(where, 1 + k % 3, memory_mib=80 * GIB, heartbeat=self.now))
        elif op == "remove":
            self.state.remove_node(where)
        elif op == "add":
            self.backend.add_node(node(NAMES[k % len(NAMES)], 2, memory_mib=80 * GIB, heartbeat=self.now))
        elif op == "stale":
            got = self.state.node(where)
            if got is not None:
                old = self.now - timedelta(seconds=2 * TTL)
                self.state.upsert_node(node(where, len(got.cards), memory_mib=80 * GIB, heartbeat=old))
        elif op == "beat":
            self.backend.heartbeat(self.now)
        elif op == "time":
            self.now += timedelta(seconds=(10, 45, 70)[k % 3])
            self.mono += (10, 130)[k % 2]  # nominations expire after 120 s
        elif op == "learn":
            self.ext.learn_workload(1)
        elif op == "refresh":  # another step, then what fastpath runs before the next call
            others = [o for o in OPS if o != "refresh"]
            self.step(others[k % len(others)], k // 7)
            while not self.ext.refresh_step():
                pass

    def check_pick(self, label: str, k: int, ask: _Asked, names: list[str], want: FilterOutcome) -> None:
        """The table's pick (``_pick_table``) is the reference's best-scored fit (of equals, the
        first by name), or None (the long way) only when the table's best score is not a fresh
        fit's; and the table's ranked list is its fits' scores, sorted."""
        ext = self.ext
        picked = ext._pick_table(FilterOutcome(), ask, names, None)
        table = ext.caches.tables[(ask.key, ask.hkey)]
        ranked = sorted((-table.scores[n], n) for n in table.fits if table.scores[n] > NO_FIT)
        assert table.ranked == ranked, f"{label}: ranked of shape {k}"
        assert not table.holes & table.verdicts.keys(), f"{label}: holes of shape {k}"
        if not want.fits:
            assert picked is None, f"{label}: pick of shape {k}"
            return
        ref = ext._scores_each(ask.req, want.fits, ask.nodes, ask.key, ask.hkey, ask.policy)
        best = min(name for name, score in zip(want.fits, ref, strict=True) if score == max(ref))
        if picked is None:
            scores = [table.scores.get(name, NO_FIT) for name in names]
            top = min(name for name, score in zip(names, scores, strict=True) if score == max(scores))
            assert table.verdicts.get(top) is not True, f"{label}: pick of {k}"
        else:
            assert picked == best, f"{label}: pick of shape {k}"

    def check(self, label: str) -> None:
        ext = self.ext
        names = [*NAMES, "ghost"]
        nodes = self.state.nodes_by_name()
        cutoff = ext._heartbeat_cutoff()
        for k in range(2 * len(SHAPES)):
            for priority in (0, 1000):
                n, cores, mem = SHAPES[k % len(SHAPES)]
                extra = {"cpu": "4"} if k % 2 else {}
                p = pod(f"probe{k}", limits(n, cores=cores, memory_gib=mem, **extra))
                p["spec"]["priority"] = priority
                req = parse_pod(p, ext.rules)
                key = ext._key(req)
                policy = ext._policy(req.node_policy, ext._node_policy)
                hkey = ext._host_key(req, key, policy)
                ask = _Asked(req, key, hkey, policy, nodes, cutoff)
                got, want, part = FilterOutcome(), FilterOutcome(), FilterOutcome()
                ext._filter_each(want, ask, names)
                if (key, hkey) in ext.caches.tables:  # the table as the steps left it, then afresh
                    self.check_pick(label + " (kept)", k, ask, names, want)
                ext.caches.table(key, hkey, self.state).clear()
                ext.min_decided = k % 3
                ext._filter_table(part, ask, names, until=ticks() + k % 4)
                self.check_bounded(label, k, part, want)
                ext._filter_table(got, ask, names)
                assert (got.fits, got.failed, got.unresolvable) == (want.fits, want.failed, want.unresolvable), (
                    f"{label}: filter of shape {k}"
                )
                self.check_pick(label, k, ask, names, want)
                scores = ext.priorities(req, names)
                table = ext.caches.tables[(key, hkey)]
                raw = [table.scores.get(name, NO_FIT) for name in names]  # before normalising
                assert raw == ext._scores_each(req, names, nodes, key, hkey, policy), f"{label}: scores of {k}"
                ext.tables = False
                assert scores == ext.priorities(req, names), f"{label}: prioritize of shape {k}"
                ext.tables = True

    @staticmethod
    def check_bounded(label: str, k: int, part: FilterOutcome, want: FilterOutcome) -> None:
        deferred = set(part.deferred)
        assert not deferred & {*part.fits, *part.failed, *part.unresolvable}, f"{label}: shape {k}"
        assert deferred | {*part.fits, *part.failed, *part.unresolvable} == {*NAMES, "ghost"}, f"{label}: {k}"
        assert set(part.fits) <= set(want.fits) and part.failed.items() <= want.failed.items(), f"{label}: {k}"
        assert part.unresolvable.items() <= want.unresolvable.items(), f"{label}: shape {k}"
        assert not deferred or part.fits, f"{label}: shape {k}: names deferred while none fits"
        assert bool(part.fits) == bool(want.fits), f"{label}: shape {k}: refused while a node fits"


ticks = Ticks()


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["fragmentation", "binpack"]),
    st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 1 << 16)), min_size=1, max_size=30),
)
def test_tables_answer_as_node_by_node_after_any_sequence(policy: str, steps: list[tuple[str, int]]) -> None:
    w = World(policy)
    w.check("start")
    for i, (op, k) in enumerate(steps):
        w.step(op, k)
        w.check(f"step {i} ({op})")
