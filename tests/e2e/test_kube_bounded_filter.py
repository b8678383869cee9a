"""Bounded filter calls through the real kube-scheduler (``Extender.filter_request``).

The extender runs with a budget that has always run out and a sample of one node
(``filter_budget_ms`` 0.001, ``filter_min_nodes`` 1): each filter call for a shape whose table
is not full decides names only until one fits, and answers the others "not yet evaluated"
(unresolvable). Pods must still land only where they fit and fill every card; a pod that fits
nowhere must stay Pending with the filter's real reason, never "not yet evaluated"; and a
high-priority pod must still get a card by preemption (a call where nothing fits decides every
name, so the extender's own preemption sees every node).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from flexai_sched.answers import NOT_EVALUATED

from .controlplane import ControlPlane, wait_until
from .helpers_kube import (
    NS,
    assert_within_capacity,
    cards,
    extender_running,
    extender_text,
    failed_scheduling_messages,
    gpu_node,
    pod_body,
    pods,
    vgpu_limits,
    wait_bound,
)

pytestmark = pytest.mark.e2e

H200 = cards(2, "NVIDIA H200", 80, prefix="B")
NODES = [f"b{i}" for i in range(6)]
PRIORITY = {"flexai-bounded-low": 100, "flexai-bounded-high": 300}


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    config: Path = tmp_path_factory.mktemp("bounded") / "settings.yaml"
    config.write_text("filter_budget_ms: 0.001\nfilter_min_nodes: 1\n")
    sched = k8s.SchedulingV1Api(control_plane.api_client())
    for name, value in PRIORITY.items():
        with contextlib.suppress(ApiException):
            sched.delete_priority_class(name)
        sched.create_priority_class(k8s.V1PriorityClass(metadata=k8s.V1ObjectMeta(name=name), value=value))
    try:
        with extender_running(
            control_plane,
            "--config",
            str(config),
            "--node-policy",
            "binpack",
            "--card-policy",
            "binpack",
            "--heartbeat-ttl",
            "3600",
        ) as p:
            yield p
    finally:
        for name in PRIORITY:
            with contextlib.suppress(ApiException):
                sched.delete_priority_class(name)
        sched.api_client.close()


def whole_card(core: k8s.CoreV1Api, name: str, cls: str) -> None:
    body = pod_body(name, {"main": vgpu_limits(1, 100)})
    assert body.spec is not None
    body.spec.priority_class_name = cls
    core.create_namespaced_pod(NS, body)


def test_deferred_names_never_refuse_a_fitting_pod_nor_hide_the_reason(
    plane: ControlPlane, core_api: k8s.CoreV1Api
) -> None:
    core = core_api
    for name in NODES:
        gpu_node(core, name, H200)
    low = [f"low{i:02d}" for i in range(2 * len(NODES))]  # one whole card each: every card
    for name in low:
        whole_card(core, name, "flexai-bounded-low")
    placed = wait_bound(core, low, 120)
    usage = assert_within_capacity(core, dict.fromkeys(NODES, H200))
    assert all(usage[(n, c)].cores == 100 for n in NODES for c in range(2))
    assert len({(p.node, s.card_index) for p in placed.values() if p.allocation for s in p.allocation.slices}) == 12
    deferred = [
        ln
        for ln in extender_text(plane, "/metrics").splitlines()
        if ln.startswith("flexai_filter_deferred_names_total ")
    ]
    assert deferred and float(deferred[0].split()[-1]) > 0, deferred  # the calls above did defer names

    whole_card(core, "extra", "flexai-bounded-low")  # no card left, nothing of lower priority

    def refused() -> list[str]:
        return [m for m in failed_scheduling_messages(core, "extra") if "0/6 nodes are available" in m]

    got = wait_until(refused, 60, "FailedScheduling of extra")
    assert all(NOT_EVALUATED not in m for m in got), got
    assert pods(core)["extra"].node is None

    whole_card(core, "hi", "flexai-bounded-high")  # evicts one low pod (the extender's own preemption)
    hi = wait_bound(core, ["hi"], 120)["hi"]
    assert hi.node in NODES
    left = [n for n in low if n in pods(core)]
    assert len(left) == len(low) - 1
    assert_within_capacity(core, dict.fromkeys(NODES, H200))
