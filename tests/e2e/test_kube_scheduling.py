"""kube-scheduler (real, 1.34) + our extender on the Kubernetes backend + kwok GPU nodes.

Issue 3's scenarios 1, 2, 6 and 7: placements follow the policy, an unfit pod stays
Pending with the extender's reason in its event, both nodeCacheCapable modes work,
and a node whose agent went silent gets no new pods.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client as k8s

from flexai_core import annotations as ann
from flexai_core.model import Allocation, Slice

from .controlplane import ControlPlane, wait_until
from .helpers_kube import (
    NS,
    assert_within_capacity,
    cards,
    extender_get,
    extender_running,
    extender_text,
    failed_scheduling_messages,
    gpu_node,
    pod_body,
    pods,
    set_inventory,
    vgpu_limits,
    vgpu_pod,
    wait_bound,
)

pytestmark = pytest.mark.e2e

H200 = cards(2, "NVIDIA H200", 80, prefix="H200")
A100 = cards(2, "NVIDIA A100", 40, prefix="A100")


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    # Binpack for nodes and cards (the arithmetic below is binpack's); heartbeat TTL 60 s.
    with extender_running(control_plane, "--node-policy", "binpack", "--card-policy", "binpack") as p:
        yield p


def place(core: k8s.CoreV1Api, name: str, body: k8s.V1Pod | None = None, **kw: object) -> tuple[str, list[int]]:
    """Create one pod, wait until bound; (node, sorted card indexes of its slices)."""
    if body is None:
        vgpu_pod(core, name, **kw)  # type: ignore[arg-type]
    else:
        core.create_namespaced_pod(NS, body)
    p = wait_bound(core, [name], 30)[name]
    assert p.node is not None and p.allocation is not None, f"{name}: bound without allocation"
    return p.node, sorted(s.card_index for s in p.allocation.slices)


def test_mixed_requests_land_where_binpack_says(plane: ControlPlane, core_api: k8s.CoreV1Api) -> None:
    # Binpack: card load = (cores/100 + MiB/card MiB) / 2; node score = mean card load after
    # placing the pod (highest wins); cards: the most loaded card that fits, lowest index on ties.
    inventory = {"h1": H200, "h2": H200, "a1": A100}
    for name, node_cards in inventory.items():
        gpu_node(core_api, name, node_cards)

    # 1. model-selected, 50%/20 GiB on H200 only. h1, h2: (0.5 + 0.25)/2 / 2 cards = 0.1875 each
    #    (a tie); without the selector a1 would win: (0.5 + 0.5)/2 / 2 = 0.25.
    h, c = place(core_api, "pinned", number=1, cores=50, memory_gib=20, annotations={ann.GPU_MODELS: "NVIDIA H200"})
    assert h in ("h1", "h2") and c == [0]
    other = "h2" if h == "h1" else "h1"
    # 2. fractional 50%/20 GiB: h card 0 -> (1.0 + 0.5)/2 = 0.75, node 0.375 > a1 0.25 > other 0.1875.
    assert place(core_api, "frac", number=1, cores=50, memory_gib=20) == (h, [0])
    # 3. multi-vGPU 2 x 25%/8 GiB: h has one card with room (card 0 at 100%): no fit.
    #    a1: 2 x (0.25 + 0.2)/2 = 0.225 > other: 2 x (0.25 + 0.1)/2 = 0.175.
    assert place(core_api, "multi", number=2, cores=25, memory_gib=8) == ("a1", [0, 1])
    # 4. exclusive (a whole card): h card 1 -> (0.75 + 1.0)/2 = 0.875 > other (1.0 + 0)/2 = 0.5;
    #    a1 has no empty card.
    assert place(core_api, "whole", number=1) == (h, [1])
    # 5. two containers of 1 x 20%/4 GiB (containers may share a card): h is full.
    #    a1 card 0 takes both: (0.25+0.4 + (8+8)/40)/2 = 0.525, node (0.525 + 0.225)/2 = 0.375;
    #    other card 0: (0.4 + 8/80)/2 = 0.25, node 0.125.
    two = pod_body("two", {"a": vgpu_limits(1, 20, 4), "b": vgpu_limits(1, 20, 4)})
    assert place(core_api, "two", two) == ("a1", [0, 0])
    # 6. an init container (1 x 100%) then an app container (1 x 10%/2 GiB): the only empty
    #    card left is other's; the init slice prefers the card the app holds.
    init = pod_body("init", {"app": vgpu_limits(1, 10, 2)}, init_containers={"prep": vgpu_limits(1)})
    node, cs = place(core_api, "init", init)
    assert node == other and cs == [0, 0]

    usage = assert_within_capacity(core_api, inventory)
    assert usage[(h, 0)].cores == 100 and usage[(h, 1)].cores == 100
    assert all(p.allocation is not None for p in pods(core_api).values())


def test_a_pod_that_fits_nowhere_stays_pending_with_the_extenders_reason(
    plane: ControlPlane, core_api: k8s.CoreV1Api
) -> None:
    gpu_node(core_api, "h1", H200)
    vgpu_pod(core_api, "three-cards", number=3, cores=10, memory_gib=1)
    vgpu_pod(core_api, "too-much-memory", number=1, cores=10, memory_gib=100)

    def reasons(pod: str, text: str) -> list[str]:
        return [m for m in failed_scheduling_messages(core_api, pod) if text in m]

    got = wait_until(
        lambda: reasons("three-cards", "asks for 3 vGPUs but the largest node has 2 cards"),
        30,
        "FailedScheduling of three-cards",
    )
    assert got[0].startswith("0/1 nodes are available"), got
    wait_until(
        lambda: reasons("too-much-memory", 'container "main": needs 1 cards'), 30, "FailedScheduling of too-much-memory"
    )
    assert {n: p.node for n, p in pods(core_api).items()} == {"three-cards": None, "too-much-memory": None}


@pytest.mark.parametrize("node_cache_capable", [True, False], ids=["node-names", "full-node-list"])
def test_both_node_cache_modes_through_kube_scheduler(
    plane: ControlPlane, core_api: k8s.CoreV1Api, node_cache_capable: bool
) -> None:
    plane.restart_scheduler(with_extender=True, node_cache_capable=node_cache_capable)
    try:
        inventory = {"h1": H200, "h2": H200}
        for name, node_cards in inventory.items():
            gpu_node(core_api, name, node_cards)
        # 2 nodes x 2 cards x 2 slices of 50% = 8 pods fit; the 9th does not.
        names = [f"half-{i}" for i in range(9)]
        for n in names:
            vgpu_pod(core_api, n, number=1, cores=50, memory_gib=10)
        wait_until(lambda: len([p for p in pods(core_api).values() if p.node]) == 8, 60, "8 pods bound")
        usage = assert_within_capacity(core_api, inventory)
        assert sorted(u.cores for u in usage.values()) == [100, 100, 100, 100]
        pending = [n for n, p in pods(core_api).items() if not p.node]
        assert len(pending) == 1
        wait_until(
            lambda: any("needs 1 cards with room" in m for m in failed_scheduling_messages(core_api, pending[0])),
            30,
            "the extender's reason for the 9th pod",
        )
    finally:
        plane.restart_scheduler(with_extender=True, node_cache_capable=None)


def test_a_node_with_a_stale_heartbeat_gets_no_new_pods(plane: ControlPlane, core_api: k8s.CoreV1Api) -> None:
    one = cards(1)  # 5 vGPUs of 20% each
    gpu_node(core_api, "fresh", one)
    stale_at = datetime.now(UTC) - timedelta(minutes=10)  # TTL is 60 s
    gpu_node(core_api, "stale", one, heartbeat=stale_at)
    names = [f"p{i}" for i in range(6)]
    for n in names:
        vgpu_pod(core_api, n, number=1, cores=20, memory_gib=1)
    wait_until(lambda: len([p for p in pods(core_api).values() if p.node]) == 5, 60, "5 pods bound")
    placed = pods(core_api)
    assert {p.node for p in placed.values() if p.node} == {"fresh"}
    waiting = next(n for n, p in placed.items() if not p.node)
    wait_until(
        lambda: any("heartbeat is stale" in m for m in failed_scheduling_messages(core_api, waiting)),
        30,
        "the stale-heartbeat reason",
    )
    # The agent reports again (every few seconds here, every 30 s in a cluster): the node takes
    # the pod that waited. Each report is a node update, which is what makes kube-scheduler
    # retry a pod an extender refused; the retry right after the first report can still meet
    # the extender's old view, as the extender's watch may see the update a moment later.
    deadline = time.monotonic() + 60
    while pods(core_api)[waiting].node is None:
        assert time.monotonic() < deadline, f"{waiting} not bound 60 s after the agent reported again"
        set_inventory(core_api, "stale", ann.encode_inventory(one, datetime.now(UTC)))
        time.sleep(2)
    assert pods(core_api)[waiting].node == "stale"
    assert_within_capacity(core_api, {"fresh": one, "stale": one})


def test_the_extender_counts_every_bound_pods_host_requests(plane: ControlPlane, core_api: k8s.CoreV1Api) -> None:
    # kwok nodes allocate 32 CPUs and 256 GiB; a pod without GPUs counts on its host too.
    gpu_node(core_api, "c1", H200)
    body = pod_body("cpu-only", {"main": {"cpu": "1500m", "memory": "2Gi"}})
    assert body.spec is not None
    body.spec.node_selector = {"kubernetes.io/hostname": "c1"}
    core_api.create_namespaced_pod(NS, body)
    wait_bound(core_api, ["cpu-only"], 30)

    def host() -> dict[str, int]:
        got = extender_get(plane, "/v1/nodes/c1")
        assert isinstance(got, dict)
        return got["host"]  # type: ignore[no-any-return]

    wait_until(lambda: host()["cpu_milli_requested"] == 1500, 15, "the pod's CPU counted on c1's host")
    assert host() == {
        "cpu_milli_allocatable": 32000,
        "cpu_milli_requested": 1500,
        "cpu_milli_free": 30500,
        "memory_mib_allocatable": 256 * 1024,
        "memory_mib_requested": 2048,
        "memory_mib_free": 254 * 1024,
    }
    core_api.delete_namespaced_pod("cpu-only", NS, grace_period_seconds=0)
    wait_until(lambda: host()["cpu_milli_requested"] == 0, 15, "the deleted pod's CPU left c1's host")


def test_a_self_granted_allocation_is_not_counted_and_the_extender_says_so(
    plane: ControlPlane, core_api: k8s.CoreV1Api
) -> None:
    # The finding's pod, created straight onto the node (spec.nodeName, no scheduler) with its
    # own allocation: a 20%/4 GiB request holding card 0 whole, without a compute limit. No
    # admission policy runs in this cluster: the extender's books are the guard under test.
    one = cards(1)
    gpu_node(core_api, "g1", one)
    body = pod_body("greedy", {"main": vgpu_limits(1, 20, 4)})
    assert body.spec is not None and body.metadata is not None
    body.spec.node_name = "g1"
    whole = Allocation.build(NS, "greedy", "", "g1", (Slice("main", 0, one[0].uuid, 0, one[0].memory_mib),))
    body.metadata.annotations = {ann.POD_ALLOCATION: ann.encode_allocation(whole)}
    core_api.create_namespaced_pod(NS, body)

    def rejected() -> bool:
        return 'flexai_rejected_allocations{reason="cores"} 1.0' in extender_text(plane, "/metrics")

    wait_until(rejected, 15, "the extender's metric of the rejected allocation")
    log = plane.procs["extender"].tail(200)
    assert (
        "pod default/greedy on g1: allocation not counted (cores): "
        "container 'main' asks for 20 percent of a card's cores"
    ) in log
    # Card 0 is free in the books: an exclusive pod still lands on it.
    vgpu_pod(core_api, "honest", number=1)
    placed = wait_bound(core_api, ["honest"], 30)["honest"]
    assert placed.node == "g1" and placed.allocation is not None
    assert [s.card_index for s in placed.allocation.slices] == [0]
