"""The chart's allocation-write policy, exercised on the real kube-apiserver (1.34) under
real service-account tokens: only the scheduler's account may set a pod's
vgpu.flexai.io/allocation, on an unbound pod, and nobody may change it once bound.

Who acts (tokens from the TokenRequest API, as a pod's projected volume gets them):
  tenant     a user's account with a Role in its namespace that allows creating and
             updating pods, their status and Bindings: RBAC would let it write the
             annotation, so every refusal below is the policy's
  agent      the chart's node-agent account (token bound to its pod, so it names the node),
             first with the chart's RBAC alone, then also allowed to patch pods
  scheduler  the chart's scheduler account (system:kube-scheduler: Bindings, pods/status)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from flexai_core import annotations as ann
from flexai_core import resources as res
from flexai_core.model import Allocation, Slice
from tests.e2e.controlplane import ControlPlane, make_fake_node, wait_until

from .chart import Helm, Rendered
from .kubeapi import Objects, client_for, close, ensure_namespace, mint_token, wait_allocation_writes_open

pytestmark = pytest.mark.e2e

NS = "flexai-authz"  # the chart's release namespace
TENANT_NS = "tenant-authz"
RELEASE = "authz"
NODE = "gpu-authz"
POLICY = f"{RELEASE}-flexai-scheduler-allocation-writes"


def allocation(pod: str, cores: int = 0, memory_mib: int = 143771) -> str:
    # The finding's annotation: no compute limit and the whole card.
    s = Slice("main", 0, "GPU-authz-0", cores, memory_mib)
    return ann.encode_allocation(Allocation.build(TENANT_NS, pod, "", NODE, (s,)))


def pod_body(name: str, annotations: dict[str, str] | None = None, node: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": TENANT_NS, "annotations": annotations or {}},
        "spec": {
            "schedulerName": "nobody",  # no scheduler binds it: the tests do
            **({"nodeName": node} if node else {}),
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/fake:1",
                    "resources": {"limits": {res.VGPU_NUMBER: "1", res.VGPU_CORES: "20", res.VGPU_MEMORY: "4"}},
                }
            ],
        },
    }


def binding_body(pod: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod, "namespace": TENANT_NS, "annotations": annotations or {}},
        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
    }


@dataclass(frozen=True)
class Outcome:
    status: int
    message: str

    @property
    def by_policy(self) -> bool:
        return self.status == 403 and POLICY in self.message

    @property
    def by_rbac(self) -> bool:
        return self.status == 403 and "cannot " in self.message and POLICY not in self.message


def outcome(call: Callable[[], Any]) -> Outcome:
    try:
        call()
    except ApiException as e:
        try:
            message = str(json.loads(e.body or "").get("message", ""))
        except (TypeError, ValueError):
            message = str(e.body)
        return Outcome(int(e.status), message)
    return Outcome(200, "")


class Actor:
    """One identity's calls."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self.core = k8s.CoreV1Api(api)

    def create_pod(self, body: dict[str, Any], dry_run: bool = False) -> Outcome:
        return outcome(lambda: self.core.create_namespaced_pod(TENANT_NS, body, dry_run="All" if dry_run else None))  # type: ignore[arg-type]  # a dict is sent as is

    def patch(self, pod: str, annotations: dict[str, str | None], status: bool = False) -> Outcome:
        body = {"metadata": {"annotations": annotations}}
        if status:
            return outcome(lambda: self.core.patch_namespaced_pod_status(pod, TENANT_NS, body))
        return outcome(lambda: self.core.patch_namespaced_pod(pod, TENANT_NS, body))

    def bind(self, pod: str, annotations: dict[str, str] | None = None, legacy: bool = False) -> Outcome:
        body = binding_body(pod, annotations)

        def call() -> None:
            # The reply is a Status the client cannot read as a V1Binding: keep it raw.
            if legacy:  # POST .../bindings: the older endpoint, also copies the annotations
                resp: Any = self.core.create_namespaced_binding(TENANT_NS, body, _preload_content=False)  # type: ignore[arg-type]
            else:
                resp = self.core.create_namespaced_pod_binding(pod, TENANT_NS, body, _preload_content=False)  # type: ignore[arg-type]
            resp.release_conn()

        return outcome(call)


@dataclass
class Cluster:
    admin: k8s.CoreV1Api
    actors: dict[str, Actor]
    rendered: Rendered

    def __getitem__(self, who: str) -> Actor:
        return self.actors[who]

    def pod_annotations(self, name: str) -> dict[str, str]:
        meta = self.admin.read_namespaced_pod(name, TENANT_NS).metadata
        return dict((meta.annotations if meta else None) or {})

    def node_of(self, name: str) -> str | None:
        spec = self.admin.read_namespaced_pod(name, TENANT_NS).spec
        return spec.node_name if spec else None


TENANT_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "pod-writer", "namespace": TENANT_NS},
    "rules": [
        {
            "apiGroups": [""],
            "resources": ["pods", "pods/status"],
            "verbs": ["create", "get", "update", "patch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods/binding", "bindings"], "verbs": ["create"]},
    ],
}


def role_binding(name: str, namespace: str, account: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": TENANT_NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-writer"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane, helm: Helm) -> Iterator[Cluster]:
    rendered = helm.template(release=RELEASE, namespace=NS)
    api = control_plane.api_client()
    core = k8s.CoreV1Api(api)
    objects = Objects(api)
    for ns in (NS, TENANT_NS):
        ensure_namespace(core, ns)
    created: list[dict[str, Any]] = []
    actors: dict[str, Actor] = {}
    try:
        policies = rendered.all("ValidatingAdmissionPolicy") + rendered.all("ValidatingAdmissionPolicyBinding")
        assert POLICY in {p["metadata"]["name"] for p in policies}
        tenant_sa = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "tenant", "namespace": TENANT_NS},
        }
        for obj in [*rendered.rbac(), *policies, tenant_sa, TENANT_ROLE, role_binding("tenant", TENANT_NS, "tenant")]:
            created.append(objects.create(obj))
        make_fake_node(core, NODE)
        agent_sa = rendered.service_account("node")
        agent_pod = core.create_namespaced_pod(
            NS,
            k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(name="agent"),
                spec=k8s.V1PodSpec(
                    node_name=NODE,
                    service_account_name=agent_sa,
                    termination_grace_period_seconds=0,
                    containers=[k8s.V1Container(name="main", image="registry.invalid/fake:1")],
                ),
            ),
        )
        # A second account as the agent's, which RBAC also lets write pods: the policy alone refuses it.
        agent_plus = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "agent-plus", "namespace": NS}}
        for obj in (agent_plus, role_binding("agent-plus", NS, "agent-plus")):
            created.append(objects.create(obj))
        tokens = {
            "tenant": mint_token(core, TENANT_NS, "tenant"),
            "agent": mint_token(core, NS, agent_sa, bound_pod=agent_pod),
            "agent-plus": mint_token(core, NS, "agent-plus"),
            "scheduler": mint_token(core, NS, rendered.service_account("scheduler")),
        }
        actors = {who: Actor(client_for(control_plane, t)) for who, t in tokens.items()}
        # The policy is in force once the apiserver has loaded it: wait for its first refusal.
        wait_until(
            lambda: (
                actors["tenant"]
                .create_pod(pod_body("probe", {ann.POD_ALLOCATION: allocation("probe")}), dry_run=True)
                .by_policy
            ),
            30,
            "the allocation policy to refuse a tenant's annotated pod",
        )
        yield Cluster(core, actors, rendered)
    finally:
        for actor in actors.values():
            close(actor.api)
        for ns in (TENANT_NS, NS):
            for p in core.list_namespaced_pod(ns).items:
                core.delete_namespaced_pod(str(p.metadata.name), ns, grace_period_seconds=0)
        try:
            core.delete_node(NODE)
        except ApiException as e:
            if e.status != 404:
                raise
        objects.delete_all(created)
        wait_allocation_writes_open(core, TENANT_NS)
        close(api)


def fresh_pod(cluster: Cluster, name: str, annotations: dict[str, str] | None = None) -> None:
    got = cluster["tenant"].create_pod(pod_body(name, annotations))
    assert got.status == 200, got


def test_a_tenant_cannot_create_a_pod_with_an_allocation(cluster: Cluster) -> None:
    unbound = cluster["tenant"].create_pod(pod_body("self-granted", {ann.POD_ALLOCATION: allocation("self-granted")}))
    assert unbound.by_policy, unbound
    assert ann.POD_ALLOCATION in unbound.message and "system:serviceaccount:tenant-authz:tenant" in unbound.message
    # The finding's exact pod: already on the node, with its own allocation.
    on_node = cluster["tenant"].create_pod(pod_body("on-node", {ann.POD_ALLOCATION: allocation("on-node")}, node=NODE))
    assert on_node.by_policy, on_node
    # Any other scheduler-owned key under the prefix is refused too: the policy is fail-closed.
    other = cluster["tenant"].create_pod(pod_body("other-key", {ann.PREFIX + "future-scheduler-key": "x"}))
    assert other.by_policy, other


def test_a_tenants_pod_with_its_own_annotations_is_admitted(cluster: Cluster) -> None:
    users = {
        ann.GPU_MODELS: "NVIDIA H200",
        ann.GPU_MODELS_EXCLUDE: "Tesla T4",
        ann.GPU_UUIDS: "GPU-authz-0",
        ann.GPU_UUIDS_EXCLUDE: "GPU-x",
        ann.NODE_POLICY: "spread",
        ann.CARD_POLICY: "binpack",
        "example.com/team": "a",
    }
    assert set(ann.USER_POD_ANNOTATIONS) <= set(users)
    fresh_pod(cluster, "mine", users)
    assert cluster["tenant"].patch("mine", {ann.NODE_POLICY: "binpack", "example.com/team": "b"}).status == 200
    assert cluster.pod_annotations("mine")[ann.NODE_POLICY] == "binpack"


def test_a_tenant_cannot_add_or_change_an_allocation(cluster: Cluster) -> None:
    fresh_pod(cluster, "later")
    tenant = cluster["tenant"]
    added = tenant.patch("later", {ann.POD_ALLOCATION: allocation("later")})
    assert added.by_policy, added
    # pods/status can carry metadata too (its strategy resets only the spec).
    via_status = tenant.patch("later", {ann.POD_ALLOCATION: allocation("later")}, status=True)
    assert via_status.by_policy, via_status
    assert ann.POD_ALLOCATION not in cluster.pod_annotations("later")


def test_a_tenant_cannot_bind_with_an_allocation(cluster: Cluster) -> None:
    fresh_pod(cluster, "bind-me")
    tenant = cluster["tenant"]
    for legacy in (False, True):
        got = tenant.bind("bind-me", {ann.POD_ALLOCATION: allocation("bind-me")}, legacy=legacy)
        assert got.by_policy, (legacy, got)
    assert cluster.node_of("bind-me") is None
    # RBAC allows the tenant's Bindings: one without an allocation is the policy's business no more.
    assert tenant.bind("bind-me").status == 200
    assert cluster.node_of("bind-me") == NODE


def test_the_agent_cannot_write_an_allocation(cluster: Cluster) -> None:
    fresh_pod(cluster, "agent-target")
    # The chart gives the agent no pod writes at all...
    chart_rbac = cluster["agent"].patch("agent-target", {ann.POD_ALLOCATION: allocation("agent-target")})
    assert chart_rbac.by_rbac, chart_rbac
    # ...and an account that RBAC does let write pods is still refused by the policy.
    for status in (False, True):
        got = cluster["agent-plus"].patch(
            "agent-target", {ann.POD_ALLOCATION: allocation("agent-target")}, status=status
        )
        assert got.by_policy, (status, got)
    assert cluster["agent-plus"].bind("agent-target", {ann.POD_ALLOCATION: allocation("agent-target")}).by_policy


def test_the_scheduler_sets_it_unbound_and_nobody_changes_it_bound(cluster: Cluster) -> None:
    sched, tenant = cluster["scheduler"], cluster["tenant"]
    # Set on an unbound pod through pods/status (the scheduler's account may patch it).
    fresh_pod(cluster, "staged")
    assert sched.patch("staged", {ann.POD_ALLOCATION: allocation("staged", 20, 4096)}, status=True).status == 200
    assert sched.patch("staged", {ann.POD_ALLOCATION: allocation("staged", 25, 4096)}, status=True).status == 200
    # The tenant may not change or remove what the scheduler set, bound or not.
    for value in (allocation("staged", 0, 143771), None):
        got = tenant.patch("staged", {ann.POD_ALLOCATION: value})
        assert got.by_policy, got
    assert cluster.pod_annotations("staged")[ann.POD_ALLOCATION] == allocation("staged", 25, 4096)

    # The extender's one write: a Binding carrying the allocation.
    fresh_pod(cluster, "placed")
    encoded = allocation("placed", 20, 4096)
    assert sched.bind("placed", {ann.POD_ALLOCATION: encoded}).status == 200
    assert cluster.node_of("placed") == NODE
    assert cluster.pod_annotations("placed")[ann.POD_ALLOCATION] == encoded

    # Bound: the scheduler itself may neither change nor remove it...
    changed = sched.patch("placed", {ann.POD_ALLOCATION: allocation("placed", 0, 143771)}, status=True)
    assert changed.by_policy and "bound" in changed.message, changed
    removed = sched.patch("placed", {ann.POD_ALLOCATION: None}, status=True)
    assert removed.by_policy, removed
    # ...nor may the tenant (changing or removing it would free the cards in the scheduler's books).
    for value in (allocation("placed", 0, 143771), None):
        got = tenant.patch("placed", {ann.POD_ALLOCATION: value})
        assert got.by_policy, got
    assert cluster.pod_annotations("placed")[ann.POD_ALLOCATION] == encoded
    # Writes that leave it as it is still pass (the kubelet's status updates, a tenant's labels).
    assert tenant.patch("placed", {ann.NODE_POLICY: "spread"}).status == 200
    assert sched.patch("placed", {ann.POD_ALLOCATION: encoded}, status=True).status == 200
