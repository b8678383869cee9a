"""Preemption through the real kube-scheduler, with real PriorityClasses and a PDB.

How kube-scheduler preempts with an extender (DefaultPreemption, 1.34): its dry run removes a
node's lower-priority pods and gives back all it can while ITS OWN filters still pass; only
nodes where some pod stays a victim are candidates, and only then is the extender's preempt
verb called, with those victims per node. The extender answers with the nodes and victims it
accepts (it may add victims of that node); kube-scheduler picks one node of the answer by its
own order, evicts, and nominates the pod there. Ours answers with ONE node, chosen by its own
rule (fewest PDB violations, fewest victims, fewest cores x GiB), so the choice is ours.

The vGPU resources are ignoredByScheduler, so a pod that contends only for vGPUs never gets
past the dry run (no victim is needed by kube-scheduler's filters) and the verb is not called.
These pods therefore also ask for CPU, which kube-scheduler does count: the node's CPU is
what makes its dry run propose victims, and the extender adds the vGPU victims it needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from .controlplane import ControlPlane, wait_until
from .helpers_kube import (
    NS,
    assert_within_capacity,
    cards,
    extender_running,
    gpu_node,
    pod_body,
    pods,
    vgpu_limits,
    wait_bound,
)

pytestmark = pytest.mark.e2e

PRIORITY = {"flexai-low": 100, "flexai-mid": 200, "flexai-high": 300}
H200 = cards(2, "NVIDIA H200", 80, prefix="P")


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    sched = k8s.SchedulingV1Api(control_plane.api_client())
    for name, value in PRIORITY.items():
        with contextlib.suppress(ApiException):
            sched.delete_priority_class(name)
        sched.create_priority_class(k8s.V1PriorityClass(metadata=k8s.V1ObjectMeta(name=name), value=value))
    try:
        # These nodes' agents never beat again (the annotation is written once): a TTL past the
        # tests' length, so a slow machine never sees them go stale halfway.
        with extender_running(
            control_plane, "--node-policy", "binpack", "--card-policy", "binpack", "--heartbeat-ttl", "3600"
        ) as p:
            yield p
    finally:
        for name in PRIORITY:
            with contextlib.suppress(ApiException):
                sched.delete_priority_class(name)
        sched.api_client.close()


def make(
    core: k8s.CoreV1Api,
    name: str,
    cls: str,
    cores: int | None = None,
    gib: int | None = None,
    cpu: str | None = None,
    labels: Mapping[str, str] | None = None,
    node: str | None = None,
) -> None:
    """A pod of that PriorityClass: one vGPU (cores/gib) unless both are None, and CPU."""
    lim: dict[str, str] = dict(vgpu_limits(1, cores, gib)) if cores is not None else {}
    if cpu:
        lim["cpu"] = cpu
    body = pod_body(name, {"main": lim})
    assert body.spec is not None and body.metadata is not None
    body.spec.priority_class_name = cls
    body.metadata.labels = dict(labels) if labels else None
    if node:
        body.spec.node_selector = {"kubernetes.io/hostname": node}
    core.create_namespaced_pod(NS, body)


def gone(core: k8s.CoreV1Api, *names: str) -> bool:
    have = set(pods(core))
    return not have & set(names)


def cards_of(core: k8s.CoreV1Api, name: str) -> tuple[str | None, list[int]]:
    p = pods(core)[name]
    return p.node, sorted(s.card_index for s in p.allocation.slices) if p.allocation else []


def test_the_extender_chooses_the_node_by_fewest_victims_then_cores_times_gib(
    plane: ControlPlane, core_api: k8s.CoreV1Api
) -> None:
    core = core_api
    # Three nodes of 2 H200 cards; on each a CPU filler (30 of 32 CPUs, low priority, no vGPU),
    # so kube-scheduler's dry run proposes exactly the filler on every node for a pod asking 4 CPUs.
    for n in ("n1", "n2", "n3"):
        gpu_node(core, n, H200)
        make(core, f"filler-{n}", "flexai-low", cpu="30", node=n)
    # The vGPU pods (low priority, no CPU), one card each way below:
    #   n1: card 0 u + v (50% / 5 GiB each), card 1 s + t (the same): an empty card needs 2 victims.
    #   n2: card 0 big0, card 1 big1 (100% / 40 GiB): 1 victim, 100 x 40 = 4000 card-%.GiB.
    #   n3: card 0 small0, card 1 small1 (100% / 5 GiB): 1 victim, 100 x 5 = 500.
    for name, node, cores, gib in (
        ("u", "n1", 50, 5),
        ("v", "n1", 50, 5),
        ("s", "n1", 50, 5),
        ("t", "n1", 50, 5),
        ("big0", "n2", 100, 40),
        ("big1", "n2", 100, 40),
        ("small0", "n3", 100, 5),
        ("small1", "n3", 100, 5),
    ):
        make(core, name, "flexai-low", cores, gib, node=node)
        wait_bound(core, [name], 30)  # one at a time: binpack fills card 0 first
    wait_bound(core, [f"filler-{n}" for n in ("n1", "n2", "n3")], 30)
    # hi: 1 x 100% / 10 GiB and 4 CPUs, high priority. Victims per node, filler included:
    # n1 3 (filler, u, v or s, t), n2 2 (filler + 100 x 40 = 4000 card-%.GiB), n3 2 (filler +
    # 100 x 5 = 500): n3 wins on cost, and one of its two small pods goes.
    make(core, "hi", "flexai-high", 100, 10, cpu="4")
    wait_bound(core, ["hi"], 90)
    wait_until(lambda: gone(core, "filler-n3"), 30, "filler-n3 preempted")
    left = set(pods(core))
    assert {"filler-n1", "filler-n2", "u", "v", "s", "t", "big0", "big1"} <= left
    (kept,) = {"small0", "small1"} & left
    hi_node, (card,) = cards_of(core, "hi")
    assert hi_node == "n3" and card != cards_of(core, kept)[1][0]
    assert_within_capacity(core, {"n1": H200, "n2": H200, "n3": H200})


def test_a_pdb_protected_pod_is_spared_for_a_larger_unprotected_set(
    plane: ControlPlane, core_api: k8s.CoreV1Api
) -> None:
    core = core_api
    policy = k8s.PolicyV1Api(core.api_client)
    gpu_node(core, "n1", H200)
    # card 0: db (100% / 1 GiB, protected: minAvailable 1, so no disruption allowed);
    # card 1: w1 + w2 (50% / 10 GiB each). 10 CPUs each: 30 of 32.
    make(core, "db", "flexai-low", 100, 1, cpu="10", labels={"app": "db"})
    wait_bound(core, ["db"], 30)
    make(core, "w1", "flexai-low", 50, 10, cpu="10")
    make(core, "w2", "flexai-low", 50, 10, cpu="10")
    wait_bound(core, ["w1", "w2"], 30)
    assert cards_of(core, "db") == ("n1", [0]) and cards_of(core, "w1")[1] == cards_of(core, "w2")[1] == [1]
    policy.create_namespaced_pod_disruption_budget(
        NS,
        k8s.V1PodDisruptionBudget(
            metadata=k8s.V1ObjectMeta(name="db"),
            spec=k8s.V1PodDisruptionBudgetSpec(
                min_available=1, selector=k8s.V1LabelSelector(match_labels={"app": "db"})
            ),
        ),
    )
    try:
        # hi: 1 x 100% / 1 GiB, 10 CPUs. kube-scheduler's dry run needs one pod gone for CPU and
        # keeps the PDB-protected db first, so it proposes w1 or w2. A whole card then needs card
        # 1 emptied (the other w, 50 x 10 = 500 card-%.GiB) or db gone (100 x 1 = 100, cheaper, but
        # one PDB violation): PDB violations rank first, so both w's go and db stays.
        make(core, "hi", "flexai-high", 100, 1, cpu="10")
        wait_until(lambda: gone(core, "w1", "w2"), 60, "w1 and w2 preempted")
        wait_bound(core, ["hi"], 60)
        assert cards_of(core, "hi") == ("n1", [1])
        assert cards_of(core, "db") == ("n1", [0])
    finally:
        with contextlib.suppress(ApiException):
            policy.delete_namespaced_pod_disruption_budget("db", NS)


def test_three_priority_levels_of_twenty_pods_on_two_nodes(plane: ControlPlane, core_api: k8s.CoreV1Api) -> None:
    core = core_api
    inventory = {"a": H200, "b": H200}
    for n in inventory:
        gpu_node(core, n, H200)

    # Every pod: 1 x 20% / 8 GiB and 3 CPUs. A node holds 2 cards x 5 vGPUs = 10 pods
    # (10 x 20% = 100% per 5 pods on a card; 5 x 8 = 40 GiB of 80), and 10 x 3 = 30 of its 32 CPUs
    # (an 11th would need 33): vGPUs and CPU run out together, so kube-scheduler's dry run
    # proposes one victim where the extender needs one, and both nodes hold 20 pods in all.
    def level(cls: str, tag: str) -> list[str]:
        names = [f"{tag}-{i:02d}" for i in range(20)]
        for n in names:
            make(core, n, cls, 20, 8, cpu="3")
        return names

    low = level("flexai-low", "low")
    wait_bound(core, low, 90)
    # 20 mid pods: each fits nowhere and preempts one low pod (one victim: fewest); the 20
    # lows are evicted one by one, so all 20 mids run.
    mid = level("flexai-mid", "mid")
    wait_bound(core, mid, 240)
    wait_until(lambda: gone(core, *low), 60, "every low pod preempted")
    # 20 high pods: the same again, one mid each.
    high = level("flexai-high", "high")
    wait_bound(core, high, 240)
    wait_until(lambda: gone(core, *mid), 60, "every mid pod preempted")
    # Worked out by hand: 20 slots, the 20 highest-priority pods hold them all, 10 per node,
    # 5 per card (5 x 20% = 100% cores, 5 x 8 = 40 GiB); nothing else is left.
    final = pods(core)
    assert set(final) == set(high)
    per_node = {n: sorted(p.name for p in final.values() if p.node == n) for n in inventory}
    assert [len(v) for v in per_node.values()] == [10, 10]
    usage = assert_within_capacity(core, inventory)
    assert {k: (u.cores, u.memory_mib, u.vgpus) for k, u in usage.items()} == {
        (n, c): (100, 40 * 1024, 5) for n in inventory for c in (0, 1)
    }


def test_a_pod_contending_only_for_vgpus_is_preempted_for_by_the_extender(
    plane: ControlPlane, core_api: k8s.CoreV1Api
) -> None:
    # No CPU asked: kube-scheduler's own filters pass, so its dry run finds no victim and never
    # calls the preempt verb; the extender's filter chooses by the same rule and evicts itself.
    core = core_api
    gpu_node(core, "n1", H200)
    make(core, "x", "flexai-low", 100, 20)  # card 0 (binpack: the first card)
    wait_bound(core, ["x"], 30)
    make(core, "y", "flexai-low", 60, 20)  # card 1 (card 0 is taken whole)
    wait_bound(core, ["y"], 30)
    assert cards_of(core, "x") == ("n1", [0]) and cards_of(core, "y") == ("n1", [1])
    # hi: 1 x 100% / 5 GiB needs a card emptied: x (100 x 20 = 2000 card-%.GiB) or y (60 x 20 =
    # 1200): y goes, through the Eviction API, and hi takes card 1.
    make(core, "hi", "flexai-high", 100, 5)
    wait_bound(core, ["hi"], 90)
    assert gone(core, "y") and cards_of(core, "hi") == ("n1", [1]) and cards_of(core, "x") == ("n1", [0])
