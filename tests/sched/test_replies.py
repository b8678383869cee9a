"""The per-shape answer tables (answers.py) give the old path's replies, byte for byte.

Each check sends the same filter and prioritize bodies through ``fastpath.Hot`` twice: with
the tables, and with ``Extender.tables`` off (every node decided on each call, the path
before the tables). Between checks the cluster moves: binds, deletions, host changes,
nodes that go stale (by time, no event) or beat again, nodes added and removed, a new
target workload; and threads bind and delete while filter runs.
"""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import BindError, Extender
from flexai_sched.fastpath import Hot
from flexai_sched.metrics import Metrics
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod

TTL = 60.0
SHAPES = [(1, 20, 3), (1, 50, 40), (2, 30, 16), (1, 100, None), (4, 25, 20), (8, 10, 4), (1, 0, 4), (2, 100, None)]


class Clock:
    """What the extender takes for now (its heartbeat cutoff), moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def cutoff(self) -> datetime:
        return self.now - timedelta(seconds=TTL)


def shaped(name: str, shape: tuple[int, int, int | None], cpu: int = 0) -> dict[str, Any]:
    n, cores, mem = shape
    extra = {"cpu": str(cpu)} if cpu else {}
    return pod(name, limits(n, cores=cores, memory_gib=mem, **extra))


class Cluster:
    def __init__(self, seed: int, nodes: int = 24) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.state = ClusterState()
        inv = [
            node(
                f"n{i:02d}",
                self.rng.choice((2, 4, 8)),
                heartbeat=self.clock.now,
                model=self.rng.choice(("NVIDIA H200", "NVIDIA A100")),
            )
            for i in range(nodes)
        ]
        self.backend = MemoryBackend(inv, heartbeat_every=None)
        self.backend.start(self.state)
        for n in inv[: nodes // 2]:  # half the nodes have a host: host-aware scores there
            self.state.set_host_capacity(n.name, 64_000, 512 * 1024)
        self.ext = Extender(self.state, self.backend, Settings(heartbeat_ttl_s=TTL, filter_answer="all"))
        self.ext._heartbeat_cutoff = self.clock.cutoff  # type: ignore[method-assign]
        self.ext.tables = True
        self.hot = Hot(self.ext, Metrics(self.state), limit=64 << 20)
        self.names = [n.name for n in inv]
        self.bound: list[tuple[str, str]] = []
        self.serial = 0

    def bind_one(self) -> None:
        self.serial += 1
        name = f"b{self.serial}"
        p = shaped(name, self.rng.choice(SHAPES), cpu=self.rng.choice((0, 4, 30)))
        self.backend.create_pod(p)
        self.ext.parse(p)
        try:
            self.ext.bind("default", name, f"uid-{name}", self.rng.choice(self.names))
            self.bound.append((name, f"uid-{name}"))
        except BindError:
            pass

    def delete_one(self) -> None:
        if self.bound:
            name, uid = self.bound.pop(self.rng.randrange(len(self.bound)))
            self.state.release(f"default/{name}", uid)
            self.state.drop_pod_host(f"default/{name}", uid)

    def replies(self, p: dict[str, Any], names: list[str]) -> tuple[bytes, bytes]:
        body = msgspec.json.encode({"Pod": p, "NodeNames": names})
        f = self.hot("/filter", body)
        fits = msgspec.json.decode(f)["NodeNames"] if f is not None else names
        prio = self.hot("/prioritize", msgspec.json.encode({"Pod": p, "NodeNames": [*fits, *names[:3]]}))
        assert f is not None and prio is not None
        self.ext.reserving.end(f"default/{p['metadata']['name']}")  # never bound: its reservation ends
        return f, prio

    def check(self, label: str) -> None:
        """Every shape, on every name and on a sample with repeats and unknown names."""
        for i, shape in enumerate(SHAPES):
            for cpu in (0, 8):
                p = shaped(f"probe{i}-{cpu}", shape, cpu)
                for names in (self.names, [*self.rng.sample(self.names, 9), "ghost", self.names[0]]):
                    self.ext.tables = True
                    got = self.replies(p, names)
                    self.ext.tables = False
                    want = self.replies(p, names)
                    self.ext.tables = True
                    assert got == want, f"{label}: shape {shape}, cpu {cpu}"
                    # filter_answer "best": the table's pick (``_pick_table``, which reads the
                    # scores prioritize left, stale nodes' too) is the old path's best fit.
                    self.ext.picks_best = True
                    picked = self.picked(p, names)
                    self.ext.tables = False
                    reference = self.picked(p, names)
                    self.ext.tables = True
                    self.ext.picks_best = False
                    assert picked == reference, f"{label}: shape {shape}, cpu {cpu}, best"

    def picked(self, p: dict[str, Any], names: list[str]) -> bytes:
        f = self.hot("/filter", msgspec.json.encode({"Pod": p, "NodeNames": names}))
        assert f is not None
        self.ext.reserving.end(f"default/{p['metadata']['name']}")
        return f


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tables_answer_as_the_old_path_while_the_cluster_moves(seed: int) -> None:
    c = Cluster(seed)
    c.check("start")
    for step in range(40):
        what = c.rng.choice(["bind", "bind", "bind", "delete", "host", "stale", "beat", "time", "node", "gone"])
        if what == "bind":
            for _ in range(c.rng.randint(1, 6)):
                c.bind_one()
        elif what == "delete":
            c.delete_one()
        elif what == "host":
            name = c.rng.choice(c.names)
            c.state.set_host_capacity(name, c.rng.choice((8_000, 64_000)), 512 * 1024)
        elif what == "stale":  # an agent stops beating: its last heartbeat falls behind the TTL
            inv = c.state.node(c.rng.choice(c.names))
            if inv is not None:
                c.state.upsert_node(replace(inv.inventory, heartbeat=c.clock.now - timedelta(seconds=2 * TTL)))
        elif what == "beat":  # every agent beats (a stale one is fresh again)
            c.backend.heartbeat(c.clock.now)
        elif what == "time":  # time passes, no event: nodes that beat long ago turn stale
            c.clock.now += timedelta(seconds=c.rng.choice((10, 45, 70)))
        elif what == "node":  # a node's cards change, or a new node comes
            name = c.rng.choice([*c.names, f"new{step}"])
            c.state.upsert_node(node(name, c.rng.choice((1, 4, 8)), heartbeat=c.clock.now))
            if name not in c.names:
                c.names.append(name)
        elif what == "gone":
            c.state.remove_node(c.rng.choice(c.names))
        c.check(f"step {step} ({what})")
    c.ext.learn_workload(1)  # a new target workload: every score changes
    c.check("after learn_workload")


def test_tables_stay_right_when_binds_and_deletes_race_the_calls() -> None:
    c = Cluster(7, nodes=16)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        rng = random.Random(8)
        try:
            while not stop.is_set():
                c.bind_one() if rng.random() < 0.6 else c.delete_one()
        except BaseException as e:  # surfaced below
            errors.append(e)

    workers = [threading.Thread(target=churn) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for k in range(300):  # the tables filled and patched while the cluster moves under them
            shape = SHAPES[k % len(SHAPES)]
            c.replies(shaped(f"race{k}", shape), c.names)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert not errors
    c.check("after the race")


def test_unknown_names_are_answered_but_never_stored() -> None:
    c = Cluster(4, nodes=4)
    p = shaped("u", SHAPES[0])
    made_up = [f"made-up-{i}" for i in range(1000)]
    f, prio = c.replies(p, [*c.names, *made_up])
    reply = msgspec.json.decode(f)
    assert all(reply["FailedAndUnresolvableNodes"][n].startswith("node reports no vGPU inventory") for n in made_up)
    assert all(h["Score"] == 0 for h in msgspec.json.decode(prio) if h["Host"].startswith("made-up"))
    for table in c.ext.caches.tables.values():
        assert set(table.verdicts) <= set(c.names) and set(table.scores) <= set(c.names)


def test_a_table_forgets_only_the_nodes_that_changed() -> None:
    c = Cluster(5, nodes=6)
    p = shaped("t", SHAPES[0])
    c.replies(p, c.names)
    (table,) = {id(t): t for t in c.ext.caches.tables.values()}.values()
    assert set(table.verdicts) == set(c.names)
    seq0 = table.seq
    c.bind_one()
    c.state.set_host_capacity(c.names[5], 1_000, 1024)
    c.replies(p, c.names[:1])  # syncs the table: the changed nodes go, the others stay
    # Changed: the bind's node, the host's, and the probe's own reservation (one node fits: reserved there).
    seq, changed = c.state.changes_since(seq0)
    assert changed is not None and set(changed) <= set(c.names) and c.names[5] in changed
    assert set(table.verdicts) >= set(c.names) - set(changed)
    assert not set(changed) - set(c.names[:1]) & set(table.verdicts)
