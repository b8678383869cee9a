"""Many pods at once, freeing slices, and an extender crash in the middle of scheduling.

Issue 3's scenarios 3, 4 and 5. Capacities are checked from the pods' allocation
annotations as the apiserver has them, not from the extender's view.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import cast

import pytest
from kubernetes import client as k8s

from flexai_core import annotations as ann

from .controlplane import ControlPlane, wait_until
from .helpers_kube import (
    NS,
    assert_within_capacity,
    bound,
    cards,
    delete_pods,
    extender_get,
    extender_running,
    failed_scheduling_messages,
    gpu_node,
    pod_body,
    pods,
    vgpu_limits,
    wait_bound,
)

pytestmark = pytest.mark.e2e

H200 = cards(4, "NVIDIA H200", 80, prefix="H200")  # 5 vGPUs per card
A100 = cards(4, "NVIDIA A100", 40, prefix="A100")


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with extender_running(control_plane) as p:
        yield p


def create_many(core: k8s.CoreV1Api, bodies: list[k8s.V1Pod], threads: int = 8) -> None:
    """Create pods from a few threads, so they arrive at the scheduler together."""
    chunks = [bodies[i::threads] for i in range(threads)]

    def run(chunk: list[k8s.V1Pod]) -> None:
        for b in chunk:
            core.create_namespaced_pod(NS, b)

    ts = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def small(name: str) -> k8s.V1Pod:
    """1 x 20%/8 GiB on an H200: 5 per card (both cores and the vGPU count), 20 per node."""
    return pod_body(name, {"main": vgpu_limits(1, 20, 8)}, annotations={ann.GPU_MODELS: "NVIDIA H200"})


def pair(name: str) -> k8s.V1Pod:
    """2 x 50%/16 GiB on A100s: 2 slices per card, so 4 such pods per 4-card node."""
    return pod_body(name, {"main": vgpu_limits(2, 50, 16)}, annotations={ann.GPU_MODELS: "NVIDIA A100"})


def test_200_pods_at_once_fill_every_card_and_no_card_overflows(plane: ControlPlane, core_api: k8s.CoreV1Api) -> None:
    inventory = {"h1": H200, "h2": H200, "a1": A100}
    for name, node_cards in inventory.items():
        gpu_node(core_api, name, node_cards)
    # Room: 2 H200 nodes x 4 cards x 5 = 40 small pods; 1 A100 node: 4 pair pods. 44 in all.
    bodies = [small(f"s{i:03}") for i in range(150)] + [pair(f"p{i:02}") for i in range(50)]
    create_many(core_api, bodies)
    wait_until(lambda: len(bound(core_api)) >= 44, 240, "44 pods bound", interval=1.0)
    usage = assert_within_capacity(core_api, inventory)
    # Every card is full, so no further pod can fit: every pod that could fit is bound.
    for (node, index), u in usage.items():
        if node == "a1":
            assert u.cores == 100, (node, index, u)
        else:
            assert u.vgpus == 5 and u.cores == 100, (node, index, u)
    assert len(usage) == 12
    now = bound(core_api)
    assert len(now) == 44
    assert sum(1 for n in now if n.startswith("s")) == 40


def test_deleting_pods_frees_their_slices_for_new_pods(plane: ControlPlane, core_api: k8s.CoreV1Api) -> None:
    inventory = {"h1": H200}
    gpu_node(core_api, "h1", H200)
    create_many(core_api, [small(f"old{i:02}") for i in range(20)])
    wait_bound(core_api, [f"old{i:02}" for i in range(20)], 120)
    # The node is full (20 of 20): a newcomer waits.
    core_api.create_namespaced_pod(NS, small("new00"))
    wait_until(lambda: failed_scheduling_messages(core_api, "new00"), 30, "new00 refused")
    assert pods(core_api)["new00"].node is None
    # Free 3 slices on card 1 and 2 on card 3; 5 newcomers (one already waiting) take them.
    held = {n: p.allocation.slices[0].card_index for n, p in pods(core_api).items() if p.allocation}
    victims = [n for n, c in held.items() if c == 1][:3] + [n for n, c in held.items() if c == 3][:2]
    delete_pods(core_api, victims)
    wait_until(lambda: not set(victims) & set(pods(core_api)), 30, "victims gone")
    # The extender frees them from its watch (a moment after kube-scheduler's own informer saw
    # the deletions: a newcomer tried in between is refused and waits for the next event).
    wait_until(lambda: not set(victims) & _held(plane), 30, "the extender freed the victims' slices")
    create_many(core_api, [small(f"new{i:02}") for i in range(1, 5)], threads=2)
    got = wait_bound(core_api, [f"new{i:02}" for i in range(5)], 120)
    assert sorted(
        p.allocation.slices[0].card_index for n, p in got.items() if n.startswith("new") and p.allocation
    ) == [1, 1, 1, 3, 3]
    usage = assert_within_capacity(core_api, inventory)
    assert all(u.vgpus == 5 for u in usage.values())


def _held(plane: ControlPlane) -> set[str]:
    """Pods holding slices in the extender's view."""
    return {a["name"] for a in cast(list[dict[str, str]], extender_get(plane, "/v1/allocations"))}


def test_extender_killed_and_restarted_while_scheduling(plane: ControlPlane, core_api: k8s.CoreV1Api) -> None:
    inventory = {"h1": H200, "h2": H200}
    for name, node_cards in inventory.items():
        gpu_node(core_api, name, node_cards)
    names = [f"k{i:03}" for i in range(60)]  # room for 40
    creator = threading.Thread(target=create_many, args=(core_api, [small(n) for n in names], 2))
    creator.start()
    try:
        # Crash it three times while binds are in flight: after 5, 15 and 25 pods are bound.
        for mark in (5, 15, 25):

            def reached(m: int = mark) -> bool:
                return len(bound(core_api)) >= m

            wait_until(reached, 120, f"{mark} pods bound", interval=0.05)
            plane.kill_extender()  # SIGKILL: no cleanup, no goodbye
            assert_within_capacity(core_api, inventory)
            plane.start_extender()
    finally:
        creator.join()
    wait_until(lambda: len(bound(core_api)) >= 40, 240, "40 pods bound", interval=1.0)
    usage = assert_within_capacity(core_api, inventory)
    assert all(u.vgpus == 5 and u.cores == 100 for u in usage.values()) and len(usage) == 8
    now = bound(core_api)
    assert len(now) == 40 and all(p.allocation is not None for p in now.values())

    # The restarted extender rebuilt exactly what the cluster holds (no state file).
    def views() -> set[tuple[str, str, str]]:
        return {
            (a["namespace"] + "/" + a["name"], a["node"], a["state"])
            for a in cast(list[dict[str, str]], extender_get(plane, "/v1/allocations"))
        }

    expect = {(f"{NS}/{n}", p.node or "", "bound") for n, p in now.items()}
    wait_until(lambda: views() == expect, 30, "the extender's view equals the cluster")
