"""Scenario 2: 40 pods created at once on one real node of 8 fake cards, in mixed shapes.

Every container runs on its own pod's allocation (what the kubelet's Allocate gave it is
what the extender wrote on that pod), no card goes over its cores or memory, pods that do
not fit wait with the extender's reason, and run once the others are deleted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
from kubernetes import client as k8s

from flexai_core.model import Slice
from flexai_node.hook import config as hook_config
from tests.e2e.controlplane import wait_until
from tests.e2e.helpers_kube import assert_within_capacity, failed_scheduling_messages

from .conftest import NODE, NS, RealCluster
from .helpers import allocation, given, pod, running
from .pods import CARD_MIB, C, gpu_pod, limits

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]
MIB = 1 << 20
INIT_SCRIPT = 'echo "visible=$NVIDIA_VISIBLE_DEVICES"; cat "$FLEXAI_VGPU_CONFIG"'

# name prefix -> (count, app containers, init containers)
SHAPES: dict[str, tuple[int, dict[str, C], dict[str, C]]] = {
    "whole": (2, {"main": C(limits(1))}, {}),  # an exclusive card
    "init": (4, {"main": C(limits(1, 20, 4))}, {"prep": C(limits(1, 60, 8), INIT_SCRIPT)}),
    "two": (4, {"a": C(limits(1, 20, 2)), "b": C(limits(2, 10, 1))}, {}),  # two containers
    "multi": (6, {"main": C(limits(3, 10, 1))}, {}),  # several vGPUs
    "zero": (4, {"main": C(limits(1, 0, 2))}, {}),  # cores 0
    "small": (20, {"main": C(limits(1, 30, 3))}, {}),
}


def all_pods() -> dict[str, tuple[dict[str, C], dict[str, C]]]:
    return {f"{kind}-{i}": (apps, init) for kind, (n, apps, init) in SHAPES.items() for i in range(n)}


@pytest.mark.timeout(1200)
def test_forty_pods_at_once_each_on_its_own_slice(cluster: RealCluster) -> None:
    specs = all_pods()
    assert len(specs) == 40
    core = cluster.core()
    try:
        for name, (apps, init) in specs.items():
            core.create_namespaced_pod(NS, gpu_pod(name, apps, cluster.hook.build_dir, init=init))
        ran: set[str] = set()
        for round_ in range(6):
            placed = _settle(core, specs)
            assert placed, f"round {round_}: nothing runs"
            _check_round(cluster, core, placed, specs)
            print(f"round {round_}: {len(placed)} running, {len(specs) - len(placed)} waiting")
            ran |= placed
            if ran == set(specs):
                break
            # The ones still waiting run once these are gone.
            for name in placed:
                core.delete_namespaced_pod(name, NS, grace_period_seconds=1)
            wait_until(
                lambda: not placed & {p.metadata.name for p in core.list_namespaced_pod(NS).items},  # noqa: B023
                120,
                "the deleted pods gone",
                0.5,
            )
        assert ran == set(specs), f"never ran: {sorted(set(specs) - ran)}"
        assert round_ >= 1, "every pod fitted at once: the shapes no longer test waiting"
    finally:
        core.api_client.close()


def _settle(core: k8s.CoreV1Api, specs: Mapping[str, object]) -> set[str]:
    """Wait until every bound pod runs and the bound set held still for 10 s, and every
    unbound pod carries the extender's reason; the names of the running pods."""
    stable_since, last = time.monotonic(), frozenset[str]()
    deadline = time.monotonic() + 300
    while True:
        assert time.monotonic() < deadline, f"no steady state: bound {sorted(last)}"
        items = {str(p.metadata.name): p for p in core.list_namespaced_pod(NS).items if str(p.metadata.name) in specs}
        bound = frozenset(n for n, p in items.items() if p.spec.node_name)
        if bound != last:
            stable_since, last = time.monotonic(), bound
        waiting = [n for n in items if n not in bound]
        if (
            time.monotonic() - stable_since >= 10
            and all(running(core, n) for n in bound)
            and all(_extender_refused(core, n) for n in waiting)
        ):
            return set(bound)
        time.sleep(1)


def _extender_refused(core: k8s.CoreV1Api, name: str) -> bool:
    return any(
        m.startswith("0/1 nodes are available") and "cards with room" in m
        for m in failed_scheduling_messages(core, name)
    )


def _check_round(
    cluster: RealCluster, core: k8s.CoreV1Api, placed: set[str], specs: Mapping[str, tuple[dict[str, C], dict[str, C]]]
) -> None:
    # The scheduler's record: no card over its cores, memory or vGPU count.
    assert_within_capacity(core, {NODE: cluster.cards})
    # The node's record: what every running container was given, summed per card.
    cores: dict[str, int] = {}
    memory: dict[str, int] = {}
    for name in sorted(placed):
        p = pod(core, name)
        alloc = allocation(p)
        apps, init = specs[name]
        for cname in apps:
            g = given(cluster, name, cname)
            mine = [s for s in alloc.slices if s.container == cname and not s.init]
            _assert_own_slices(name, cname, g.env, g.config, mine)
            # Its own directory on the host, under its own pod's UID: the same file.
            host = cluster.node.agent_dir / "containers" / str(p.metadata.uid) / cname / "vgpu.conf"
            assert host.read_text() == g.config_text, f"{name}/{cname}: config differs from {host}"
            for v in g.config.vgpus:
                assert v.uuid is not None
                cores[v.uuid] = cores.get(v.uuid, 0) + (v.cores if 0 < v.cores < 100 else 100 if v.cores == 100 else 0)
                memory[v.uuid] = memory.get(v.uuid, 0) + v.memory_bytes // MIB
        for cname in init:
            log = core.read_namespaced_pod_log(name, NS, container=cname)
            visible = next(line.split("=", 1)[1] for line in log.splitlines() if line.startswith("visible="))
            config = hook_config.parse(log.split("\n", 1)[1])
            mine = [s for s in alloc.slices if s.container == cname and s.init]
            _assert_own_slices(name, cname, {"NVIDIA_VISIBLE_DEVICES": visible}, config, mine)
    for uuid, c in cores.items():
        assert c <= 100, f"{uuid}: containers hold {c}% of its cores"
    for uuid, m in memory.items():
        assert m <= CARD_MIB, f"{uuid}: containers hold {m} MiB of its {CARD_MIB}"


def _assert_own_slices(
    name: str, cname: str, env: Mapping[str, str], config: hook_config.HookConfig, slices: list[Slice]
) -> None:
    assert slices, f"{name}/{cname}: no slice in its pod's allocation"
    uuids = [s.card_uuid for s in slices]
    assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(uuids), f"{name}/{cname}: {env['NVIDIA_VISIBLE_DEVICES']}"
    got = [(v.uuid, v.cores, v.memory_bytes // MIB) for v in config.vgpus]
    want = [(s.card_uuid, s.cores, s.memory_mib) for s in slices]
    assert got == want, f"{name}/{cname}: config {got}, its pod's allocation {want}"
