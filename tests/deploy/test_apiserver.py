"""Every manifest the chart renders, accepted by the real kube-apiserver (1.34): a
server-side dry run runs defaulting, validation, strict field checks and admission
(priority classes, the RBAC escalation check, the policy's CEL type checks) without
persisting anything."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.e2e.controlplane import ControlPlane

from .chart import TLS_VALUES, Helm
from .kubeapi import Objects, close, ensure_namespace

pytestmark = pytest.mark.e2e

NAMESPACE = "flexai-dryrun"


@pytest.fixture(scope="module")
def objects(control_plane: ControlPlane) -> Iterator[Objects]:
    api = control_plane.api_client()
    ensure_namespace(k8s.CoreV1Api(api), NAMESPACE)  # dry runs still need the namespace to exist
    yield Objects(api)
    close(api)


@pytest.mark.parametrize("values", [{}, TLS_VALUES], ids=["defaults", "tls"])
def test_every_rendered_manifest_passes_a_server_side_dry_run(
    helm: Helm, objects: Objects, values: dict[str, object]
) -> None:
    rendered = helm.template(values, namespace=NAMESPACE)
    kinds = {d["kind"] for d in rendered.docs}
    assert {
        "Deployment",
        "DaemonSet",
        "ConfigMap",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
    } <= kinds
    refused = {}
    for doc in rendered.docs:
        try:
            objects.create(doc, dry_run=True)
        except ApiException as e:
            refused[f"{doc['kind']}/{doc['metadata']['name']}"] = f"{e.status}: {e.body}"
    assert not refused, refused


def test_a_misspelt_field_is_refused(helm: Helm, objects: Objects) -> None:
    # The check above can fail: strict validation names an unknown field.
    ds = helm.template(namespace=NAMESPACE).one("DaemonSet")
    ds["spec"]["template"]["spec"]["nodeSelektor"] = {"a": "b"}
    with pytest.raises(ApiException) as e:
        objects.create(ds, dry_run=True)
    assert "nodeSelektor" in str(e.value.body)
