"""vGPU quotas through the real kube-scheduler: declared in a ConfigMap the extender watches.

A pod over its namespace's quota stays Pending with the extender's reason (namespace, quota,
numbers) in its FailedScheduling event, and is bound once usage falls; a quota raised in
the ConfigMap applies without a restart; a quota may select namespaces by label.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import cast

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from flexai_core import annotations as ann
from flexai_core import resources as res

from .controlplane import ControlPlane, wait_until
from .helpers_kube import (
    NS,
    cards,
    extender_get,
    extender_running,
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

CM = "vgpu-quotas"
ONE = cards(2, "NVIDIA H200", 80, prefix="Q")


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with extender_running(
        control_plane,
        "--node-policy",
        "binpack",
        "--card-policy",
        "binpack",
        "--quota-namespace",
        NS,
        "--heartbeat-ttl",
        "3600",
    ) as p:
        yield p


@pytest.fixture
def quotas(plane: ControlPlane, core_api: k8s.CoreV1Api) -> Iterator[k8s.CoreV1Api]:
    yield core_api
    with contextlib.suppress(ApiException):
        core_api.delete_namespaced_config_map(CM, NS)
    core_api.patch_namespace(NS, {"metadata": {"labels": {"flexai-test-group": None}}})


def declare(core: k8s.CoreV1Api, text: str) -> None:
    body = k8s.V1ConfigMap(
        metadata=k8s.V1ObjectMeta(name=CM, labels={ann.QUOTA_LABEL: "true"}), data={"quotas.yaml": text}
    )
    try:
        core.create_namespaced_config_map(NS, body)
    except ApiException as e:
        if e.status != 409:
            raise
        core.replace_namespaced_config_map(CM, NS, body)


def quota_view(plane: ControlPlane, name: str) -> dict[str, object] | None:
    listed = extender_get(plane, "/v1/quotas")
    assert isinstance(listed, dict)
    return next((q for q in listed["quotas"] if q["name"] == name), None)


def nudge_until_bound(core: k8s.CoreV1Api, node: str, pod: str, timeout: float = 60) -> None:
    """kube-scheduler retries a pod an extender refused on the next cluster event; a quota
    edit is not one, so the node agent's next report (every 30 s in a cluster) is."""
    deadline = time.monotonic() + timeout
    while pods(core)[pod].node is None:
        assert time.monotonic() < deadline, f"{pod} not bound {timeout:.0f} s after the quota allowed it"
        set_inventory(core, node, ann.encode_inventory(ONE, datetime.now(UTC)))
        time.sleep(2)


def test_a_pod_over_quota_waits_and_runs_when_usage_falls_or_the_quota_rises(
    plane: ControlPlane, quotas: k8s.CoreV1Api
) -> None:
    core = quotas
    gpu_node(core, "q1", ONE)
    declare(
        core,
        f"""
quotas:
  - name: team-default
    namespace: {NS}
    hard: {{{res.VGPU_NUMBER}: 2, {res.VGPU_CORES}: 100, {res.VGPU_MEMORY}: 40}}
""",
    )
    wait_until(lambda: quota_view(plane, "team-default"), 15, "the extender watching the quota")
    # Each pod: 1 x 40% / 10 GiB. Two fit the quota (2 vGPUs, 80 card-%, 20 GiB); a third would
    # make 3 vGPUs > 2 (and 120 card-% > 100: the reason names the first limit checked, vGPUs).
    for n in ("p1", "p2"):
        vgpu_pod(core, n, number=1, cores=40, memory_gib=10)
    wait_bound(core, ["p1", "p2"], 30)
    vgpu_pod(core, "p3", number=1, cores=40, memory_gib=10)
    want = f"namespace {NS}: over vGPU quota team-default: {res.VGPU_NUMBER} in use 2 + this pod 1 = 3 > limit 2"
    wait_until(lambda: any(want in m for m in failed_scheduling_messages(core, "p3")), 30, "p3's quota reason")
    assert pods(core)["p3"].node is None
    assert quota_view(plane, "team-default")["used"] == {"vgpus": 2, "cores": 80, "memory_gib": 20.0}  # type: ignore[index]

    # Usage falls: p1 goes, p3 is bound. The deletion is an event kube-scheduler retries on, but
    # that retry can reach the extender before its watch has seen the deletion; then the next
    # event (the agent's heartbeat, every 30 s in a cluster) brings it.
    core.delete_namespaced_pod("p1", NS, grace_period_seconds=0)
    nudge_until_bound(core, "q1", "p3")

    # The quota rises in the ConfigMap: no restart, the next retry fits.
    vgpu_pod(core, "p4", number=1, cores=20, memory_gib=10)
    wait_until(lambda: any("3 > limit 2" in m for m in failed_scheduling_messages(core, "p4")), 30, "p4 refused")
    declare(
        core,
        f"""
quotas:
  - name: team-default
    namespace: {NS}
    hard: {{{res.VGPU_NUMBER}: 3, {res.VGPU_CORES}: 100, {res.VGPU_MEMORY}: 40}}
""",
    )
    wait_until(
        lambda: cast(dict[str, object], (quota_view(plane, "team-default") or {}).get("hard", {})).get("vgpus") == 3,
        15,
        "the raised quota watched",
    )
    nudge_until_bound(core, "q1", "p4")
    # 40 + 40 + 20 = 100 card-% of the 100 allowed; 3 vGPUs; 30 GiB.
    assert quota_view(plane, "team-default")["used"] == {"vgpus": 3, "cores": 100, "memory_gib": 30.0}  # type: ignore[index]


def test_a_quota_selects_namespaces_by_label(plane: ControlPlane, quotas: k8s.CoreV1Api) -> None:
    core = quotas
    gpu_node(core, "q1", ONE)
    declare(
        core,
        f"""
quotas:
  - name: group
    namespaceSelector: {{matchLabels: {{flexai-test-group: g1}}}}
    hard: {{{res.VGPU_NUMBER}: 1}}
""",
    )
    # Not labelled yet: no quota applies; then labelled: the group's quota does.
    vgpu_pod(core, "free", number=1, cores=10, memory_gib=1)
    wait_bound(core, ["free"], 30)
    core.patch_namespace(NS, {"metadata": {"labels": {"flexai-test-group": "g1"}}})
    wait_until(
        lambda: (quota_view(plane, "group") or {}).get("namespaces") == [NS], 15, "the namespace's label watched"
    )
    vgpu_pod(core, "grouped", number=1, cores=10, memory_gib=1)
    want = f"namespace {NS} (in quota group's group): over vGPU quota group: {res.VGPU_NUMBER} in use 1 + this pod 1"
    wait_until(lambda: any(want in m for m in failed_scheduling_messages(core, "grouped")), 30, "the group's reason")
    assert pods(core)["grouped"].node is None


def test_a_pod_over_quota_preempts_in_its_own_namespace_only(plane: ControlPlane, quotas: k8s.CoreV1Api) -> None:
    core = quotas
    sched = k8s.SchedulingV1Api(core.api_client)
    other = "flexai-quota-other"
    for name, value in (("flexai-q-low", 100), ("flexai-q-high", 300)):
        with contextlib.suppress(ApiException):
            sched.delete_priority_class(name)
        sched.create_priority_class(k8s.V1PriorityClass(metadata=k8s.V1ObjectMeta(name=name), value=value))
    with contextlib.suppress(ApiException):
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=other)))
    try:
        gpu_node(core, "q1", ONE)
        declare(
            core,
            f"""
quotas:
  - name: team-default
    namespace: {NS}
    hard: {{{res.VGPU_NUMBER}: 2}}
""",
        )
        wait_until(lambda: quota_view(plane, "team-default"), 15, "the extender watching the quota")

        def low(name: str, cores: int, gib: int, namespace: str = NS) -> None:
            body = pod_body(name, {"main": vgpu_limits(1, cores, gib)})
            assert body.spec is not None
            body.spec.priority_class_name = "flexai-q-low"
            core.create_namespaced_pod(namespace, body)

        # The node has room for all; the quota (2 vGPUs in the namespace) is what is full.
        low("d1", 20, 2)  # 20 x 2 = 40 card-%.GiB: the cheaper of the namespace's two
        low("d2", 40, 10)  # 400
        low("elsewhere", 10, 1, other)  # cheapest of all, but in another namespace
        wait_bound(core, ["d1", "d2"], 30)
        wait_until(lambda: core.read_namespaced_pod("elsewhere", other).spec.node_name, 30, "elsewhere bound")
        body = pod_body("hi", {"main": vgpu_limits(1, 20, 2)})
        assert body.spec is not None
        body.spec.priority_class_name = "flexai-q-high"
        core.create_namespaced_pod(NS, body)
        # Over quota (2 + 1 > 2): it may evict only in its own namespace, a set that frees the
        # quota: d1 (1 vGPU, the lower cost). Then it is bound, within the quota.
        wait_bound(core, ["hi"], 60)
        assert set(pods(core)) == {"d2", "hi"}
        assert core.read_namespaced_pod("elsewhere", other).spec.node_name == "q1"
        assert quota_view(plane, "team-default")["used"]["vgpus"] == 2  # type: ignore[index]
    finally:
        # No namespace controller runs here: the pod goes first, then its namespace.
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod("elsewhere", other, grace_period_seconds=0)
        wait_until(lambda: not core.list_namespaced_pod(other).items, 30, "elsewhere deleted")
        with contextlib.suppress(ApiException):
            core.delete_namespace(other, grace_period_seconds=0)
        for name in ("flexai-q-low", "flexai-q-high"):
            with contextlib.suppress(ApiException):
                sched.delete_priority_class(name)
