"""The chart's RBAC, exercised: the real extender, kube-scheduler and node agent run
against the real apiserver under service-account tokens bound by the chart's own
roles (created from the rendering), never as admin, and schedule a vGPU pod onto a
kwok node end to end. Verbs outside the roles are refused, and the admission policy
keeps the agent to its own node's vgpu.flexai.io/ annotations.

Who runs as whom (tokens from the TokenRequest API, kubeconfigs without certificates):
  kube-scheduler  the chart's scheduler account (system:kube-scheduler,
                  system:volume-scheduler, the leader-election Role, the extender role)
  flexai-sched    an account bound to the chart's extender ClusterRole and its quota Role
                  ONLY, which proves they are enough by themselves (the chart's scheduler
                  account holds them plus more, and RBAC only adds)
  flexai-node     the chart's agent account, with a token bound to a pod on the node
                  (as in the DaemonSet, so the token names the node)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from flexai_core import annotations as ann
from flexai_core import resources as res
from tests.e2e.controlplane import LOOPBACK, ControlPlane, free_port, http_ok, make_fake_node, wait_until

from .chart import Helm, Rendered
from .conftest import Procs
from .kubeapi import (
    Objects,
    client_for,
    close,
    ensure_namespace,
    mint_token,
    name_of,
    status_of,
    token_kubeconfig,
    wait_allocation_writes_open,
)
from .scheduler import healthy, start_kube_scheduler, with_kubeconfig

pytestmark = pytest.mark.e2e

NS = "flexai-rbac"
RELEASE = "rbac"
NODE, OTHER_NODE = "gpu-rbac-a", "gpu-rbac-b"
VENV_BIN = Path(sys.executable).parent
CARDS = {
    "cards": [
        {"index": i, "uuid": f"GPU-rbac-{i}", "model": "NVIDIA H200", "memoryMiB": 143771, "healthy": True}
        for i in range(2)
    ]
}


@dataclass
class Cluster:
    plane: ControlPlane
    rendered: Rendered
    extender_port: int
    dir: Path
    tokens: dict[str, str]  # scheduler, extender, agent, agent-unbound

    def kubeconfig(self, who: str) -> Path:
        return token_kubeconfig(self.plane, self.tokens[who], self.dir / f"{who}.kubeconfig")


def _fake_pod(name: str, **spec: Any) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(name="main", image="registry.invalid/fake:1")],
            termination_grace_period_seconds=0,
            **spec,
        ),
    )


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane, helm: Helm) -> Iterator[Cluster]:
    port = free_port()
    # The extender runs as the extender-only account here (see the docstring), so the
    # allocation-write policy must let that account write allocations too.
    rendered = helm.template(
        {"scheduler": {"extender": {"port": port}, "allocationWriters": [f"system:serviceaccount:{NS}:extender-only"]}},
        release=RELEASE,
        namespace=NS,
    )
    api = control_plane.api_client()
    core = k8s.CoreV1Api(api)
    objects = Objects(api)
    ensure_namespace(core, NS)
    created: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="fx-rbac-"))  # short: unix socket paths live here
    try:
        policy = rendered.all("ValidatingAdmissionPolicy") + rendered.all("ValidatingAdmissionPolicyBinding")
        for obj in rendered.rbac() + policy:
            created.append(objects.create(obj))
        # An account bound to the chart's extender ClusterRole and quota Role, and nothing else.
        ext_role = rendered.one("ClusterRole", "-scheduler-extender")["metadata"]["name"]
        quota_role = rendered.one("Role", "-scheduler-extender-quotas")["metadata"]["name"]
        only = [{"kind": "ServiceAccount", "name": "extender-only", "namespace": NS}]
        for obj in (
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "extender-only", "namespace": NS}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "test-extender-only"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ext_role},
                "subjects": only,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "test-extender-only-quotas", "namespace": NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": quota_role},
                "subjects": only,
            },
        ):
            created.append(objects.create(obj))
        labels = {ann.GPU_NODE_LABEL: "true"}
        make_fake_node(core, NODE, labels=labels)
        make_fake_node(core, OTHER_NODE, labels=labels)
        # The agent's pod, as the DaemonSet would place it: its token then names the node.
        agent_sa = rendered.service_account("node")
        agent_pod = core.create_namespaced_pod(NS, _fake_pod("agent", node_name=NODE, service_account_name=agent_sa))
        tokens = {
            "scheduler": mint_token(core, NS, rendered.service_account("scheduler")),
            "extender": mint_token(core, NS, "extender-only"),
            "agent": mint_token(core, NS, agent_sa, bound_pod=agent_pod),
            "agent-unbound": mint_token(core, NS, agent_sa),
        }
        yield Cluster(control_plane, rendered, port, work, tokens)
    finally:
        for pod in core.list_namespaced_pod(NS).items:
            core.delete_namespaced_pod(name_of(pod), NS, grace_period_seconds=0)
        for name in (NODE, OTHER_NODE):
            try:
                core.delete_node(name)
            except ApiException as e:
                if e.status != 404:
                    raise
        objects.delete_all(created)
        wait_allocation_writes_open(core, NS)
        close(api)
        shutil.rmtree(work, ignore_errors=True)


def _inventory(core: k8s.CoreV1Api, node: str) -> dict[str, Any] | None:
    meta = core.read_node(node).metadata
    text = ((meta.annotations if meta else None) or {}).get(ann.NODE_INVENTORY)
    doc: dict[str, Any] | None = json.loads(text) if text else None
    return doc


def _forbidden_lines(*logs: str) -> list[str]:
    return [line for log in logs for line in log.splitlines() if "forbidden" in line.lower()]


def test_real_components_schedule_a_vgpu_pod_under_the_charts_accounts(
    cluster: Cluster, procs: Procs, bin_dir: Path
) -> None:
    plane, rendered = cluster.plane, cluster.rendered
    admin = plane.core_api()
    try:
        # 1. The node agent (the real flexai-node) writes the node's inventory annotation.
        cards = cluster.dir / "cards.json"
        cards.write_text(json.dumps(CARDS))
        agent = procs.start(
            "flexai-node",
            [
                str(VENV_BIN / "flexai-node"),
                "--kubeconfig",
                str(cluster.kubeconfig("agent")),
                "--node-name",
                NODE,
                "--inventory",
                f"file:{cards}",
                "--device-plugin-dir",
                str(cluster.dir / "dp"),
                "--state-dir",
                str(cluster.dir / "state"),
                "--hook-library",
                str(cluster.dir / "libflexai_hook.so"),
                "--pod-resources-socket",
                "",
                "--metrics-port",
                "0",
            ],
        )
        inv = wait_until(lambda: _inventory(admin, NODE) or not agent.alive, 60, "the agent's annotation")
        assert agent.alive, agent.tail()
        assert [c["uuid"] for c in inv["cards"]] == ["GPU-rbac-0", "GPU-rbac-1"]

        # 2. The extender with the Deployment's arguments; in-cluster credentials become the
        #    extender-only account's kubeconfig, the ConfigMap's file a local copy.
        settings = cluster.dir / "flexai-sched.yaml"
        settings.write_text(rendered.config_map["data"]["flexai-sched.yaml"])
        args = [
            ("--kubeconfig=" + str(cluster.kubeconfig("extender")))
            if a == "--in-cluster"
            else f"--config={settings}"
            if a.startswith("--config=")
            else a
            for a in rendered.container("Deployment", "extender")["args"]
        ]
        ext = procs.start("flexai-sched", [str(VENV_BIN / "flexai-sched"), *args])
        ready = f"http://{LOOPBACK}:{cluster.extender_port}/readyz"
        wait_until(lambda: http_ok(ready) or not ext.alive, 60, "extender /readyz")
        assert ext.alive, ext.tail()

        # 3. kube-scheduler on the chart's configuration, as the chart's scheduler account.
        kubeconfig = cluster.kubeconfig("scheduler")
        cfg = with_kubeconfig(rendered.scheduler_config, kubeconfig)
        # Delegated authentication and authorisation too: they read kube-system's
        # extension-apiserver-authentication and create token and access reviews.
        sched, port = start_kube_scheduler(procs, bin_dir, cfg, delegate_to=kubeconfig)
        wait_until(lambda: healthy(port, "/readyz") or not sched.alive, 60, "kube-scheduler /readyz")
        assert sched.alive, sched.tail()

        # 4. A vGPU pod asking for the chart's scheduler: bound by the extender, with its allocation.
        pod = _fake_pod("vgpu-pod", scheduler_name=cfg["profiles"][0]["schedulerName"])
        assert pod.spec is not None
        pod.spec.containers[0].resources = k8s.V1ResourceRequirements(
            limits={res.VGPU_NUMBER: "1", res.VGPU_CORES: "30", res.VGPU_MEMORY: "10"}
        )
        admin.create_namespaced_pod(NS, pod)

        def bound() -> k8s.V1Pod | None:
            p: k8s.V1Pod = admin.read_namespaced_pod("vgpu-pod", NS)
            return p if p.spec is not None and p.spec.node_name else None

        placed = wait_until(bound, 90, "vgpu-pod bound")
        assert placed.spec.node_name == NODE
        alloc = ann.decode_allocation(
            NS, "vgpu-pod", placed.metadata.uid, placed.metadata.annotations[ann.POD_ALLOCATION]
        )
        (slice_,) = alloc.slices
        assert (slice_.cores, slice_.memory_mib) == (30, 10 * 1024)

        # 5. The agent lists the pod (its other API call) and reports what the card holds.
        def reported() -> bool:
            inv = _inventory(admin, NODE) or {"cards": []}
            card = [c for c in inv["cards"] if c["index"] == slice_.card_index]
            return bool(card) and card[0].get("allocatedCores") == 30

        wait_until(reported, 60, "the agent's annotation showing the pod's slice")

        # Every call of the three was allowed: no 403 anywhere in their logs.
        assert not _forbidden_lines(agent.tail(2000), ext.tail(2000), sched.tail(4000))
    finally:
        admin.api_client.close()


def _patch_node(name: str, meta: dict[str, Any], spec: dict[str, Any] | None = None) -> Callable[[k8s.CoreV1Api], Any]:
    body: dict[str, Any] = {"metadata": meta, **({"spec": spec} if spec else {})}
    return lambda core: core.patch_node(name, body)


OUR_ANNOTATION = {"annotations": {ann.PREFIX + "rbac-test": "x"}}
CALLS: dict[str, Callable[[k8s.CoreV1Api], Any]] = {
    "delete node": lambda core: core.delete_node(OTHER_NODE),
    "patch node": _patch_node(OTHER_NODE, OUR_ANNOTATION),
    "get node": lambda core: core.read_node(NODE),
    "list nodes": lambda core: core.list_node(),
    "list this node's pods": lambda core: core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}"),
    "patch pod": lambda core: core.patch_namespaced_pod("agent", NS, {"metadata": {"labels": {"x": "y"}}}),
    "delete pod": lambda core: core.delete_namespaced_pod("agent", NS),
    "create pod": lambda core: core.create_namespaced_pod(NS, _fake_pod("intruder")),
    "create event": lambda core: core.create_namespaced_event(
        NS,
        {  # type: ignore[arg-type]
            "metadata": {"generateName": "agent."},
            "involvedObject": {"kind": "Pod", "namespace": NS, "name": "agent"},
            "reason": "Test",
            "message": "rbac test",
            "type": "Warning",
        },
    ),
    "list secrets": lambda core: core.list_namespaced_secret("kube-system"),
    "list quota configmaps": lambda core: core.list_namespaced_config_map(NS, label_selector=ann.QUOTA_LABEL),
    "list other configmaps": lambda core: core.list_namespaced_config_map("kube-system"),
    "list namespaces": lambda core: core.list_namespace(),
    "list pdbs": lambda core: k8s.PolicyV1Api(core.api_client).list_pod_disruption_budget_for_all_namespaces(),
    "create service account token": lambda core: core.create_namespaced_service_account_token(
        "extender-only", NS, k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))
    ),
}

# (account, call, HTTP status): 403 is "authenticated, not allowed"; the 200s show the
# tokens work, so the 403s are RBAC's answer and not a broken credential.
CASES = [
    ("extender", "list nodes", 200),
    ("extender", "list this node's pods", 200),
    ("extender", "get node", 403),
    ("extender", "delete node", 403),
    ("extender", "patch node", 403),
    ("extender", "patch pod", 403),
    ("extender", "delete pod", 403),
    ("extender", "create pod", 403),
    ("extender", "list secrets", 403),
    ("extender", "list quota configmaps", 200),
    ("extender", "list other configmaps", 403),
    ("extender", "list namespaces", 200),
    ("extender", "list pdbs", 200),
    ("scheduler", "list nodes", 200),
    ("scheduler", "delete node", 403),
    ("scheduler", "patch node", 403),
    ("scheduler", "create pod", 403),
    ("scheduler", "list secrets", 403),
    ("scheduler", "create service account token", 403),
    ("agent", "list this node's pods", 200),
    ("agent", "create event", 200),
    ("agent", "get node", 403),
    ("agent", "list nodes", 403),
    ("agent", "delete node", 403),
    ("agent", "patch pod", 403),
    ("agent", "delete pod", 403),
    ("agent", "create pod", 403),
    ("agent", "list secrets", 403),
]


@pytest.mark.parametrize(("who", "call", "status"), CASES, ids=[f"{w}-{c}".replace(" ", "-") for w, c, _ in CASES])
def test_what_each_account_may_do(cluster: Cluster, who: str, call: str, status: int) -> None:
    api = client_for(cluster.plane, cluster.tokens[who])
    try:
        assert status_of(lambda: CALLS[call](k8s.CoreV1Api(api))) == status
    finally:
        close(api)


def _agent_patch(
    cluster: Cluster, token: str, node: str, meta: dict[str, Any], spec: dict[str, Any] | None = None
) -> int:
    api = client_for(cluster.plane, cluster.tokens[token])
    try:
        return status_of(lambda: _patch_node(node, meta, spec)(k8s.CoreV1Api(api)))
    finally:
        close(api)


def test_agent_writes_only_its_own_nodes_vgpu_annotations(cluster: Cluster) -> None:
    # RBAC grants "patch nodes" on every node; the chart's admission policy narrows it.
    ok = _agent_patch(cluster, "agent", NODE, OUR_ANNOTATION)
    assert ok == 200
    # The policy is in force once the apiserver has loaded it: wait for its first refusal.
    wait_until(
        lambda: _agent_patch(cluster, "agent", OTHER_NODE, OUR_ANNOTATION) == 403,
        30,
        "the policy to refuse a patch of another node",
    )
    assert _agent_patch(cluster, "agent", NODE, {"labels": {"team": "x"}}) == 403
    assert _agent_patch(cluster, "agent", NODE, {"annotations": {"example.com/other": "x"}}) == 403
    assert _agent_patch(cluster, "agent", NODE, {}, spec={"unschedulable": True}) == 403
    # A token that names no node (not bound to a pod) may not write any node.
    assert _agent_patch(cluster, "agent-unbound", NODE, OUR_ANNOTATION) == 403
    # ...while the same write with the pod's token still passes.
    assert _agent_patch(cluster, "agent", NODE, OUR_ANNOTATION) == 200
