"""Talking to the test apiserver as the chart's objects and identities: create any
rendered manifest (or dry-run it), and build a kubeconfig for a service account from
a token the TokenRequest API minted."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import dynamic
from kubernetes.client.exceptions import ApiException

from flexai_core import annotations as ann
from tests.e2e.controlplane import ControlPlane, wait_until

Obj = dict[str, Any]


class Objects:
    """Create rendered manifests through the dynamic client (any kind, by apiVersion)."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self._dyn = dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]

    def _resource(self, obj: Obj) -> Any:
        return self._dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])

    def create(self, obj: Obj, dry_run: bool = False) -> Obj:
        """Strict field validation: a misspelt field is an error, not silently dropped."""
        res = self._resource(obj)
        query = [("fieldValidation", "Strict")] + ([("dryRun", "All")] if dry_run else [])
        ns = obj["metadata"].get("namespace") if res.namespaced else None
        out: Obj = res.create(body=obj, namespace=ns, query_params=query).to_dict()
        return out

    def delete(self, obj: Obj) -> None:
        res = self._resource(obj)
        ns = obj["metadata"].get("namespace") if res.namespaced else None
        try:
            res.delete(name=obj["metadata"]["name"], namespace=ns)
        except ApiException as e:
            if e.status != 404:
                raise

    def delete_all(self, objs: Iterable[Obj]) -> None:
        for obj in reversed(list(objs)):
            self.delete(obj)


def ensure_namespace(core: k8s.CoreV1Api, name: str) -> None:
    try:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    except ApiException as e:
        if e.status != 409:
            raise


def mint_token(core: k8s.CoreV1Api, namespace: str, account: str, bound_pod: k8s.V1Pod | None = None) -> str:
    """A service-account token from the TokenRequest API, as a pod's projected volume
    gets one; bound to `bound_pod` it also names the pod's node (1.30+)."""
    ref = None
    if bound_pod is not None:
        assert bound_pod.metadata is not None
        ref = k8s.V1BoundObjectReference(
            api_version="v1", kind="Pod", name=bound_pod.metadata.name, uid=bound_pod.metadata.uid
        )
    req = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=3600, bound_object_ref=ref)
    )
    resp = core.create_namespaced_service_account_token(account, namespace, req)
    assert resp.status is not None and resp.status.token
    return str(resp.status.token)


def token_kubeconfig(plane: ControlPlane, token: str, path: Path) -> Path:
    """A kubeconfig that authenticates with `token` only: no client certificate."""
    assert plane.pki is not None
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "sa",
        "clusters": [
            {"name": "e2e", "cluster": {"server": plane.api_url, "certificate-authority": str(plane.pki.ca_crt)}}
        ],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": "sa"}}],
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def client_for(plane: ControlPlane, token: str) -> k8s.ApiClient:
    """An ApiClient that authenticates with `token`; the caller closes it."""
    assert plane.pki is not None
    cfg = k8s.Configuration(host=plane.api_url)
    cfg.ssl_ca_cert = str(plane.pki.ca_crt)
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return k8s.ApiClient(cfg)


def close(api: k8s.ApiClient) -> None:
    api.close()  # type: ignore[no-untyped-call]  # the client's own method is untyped


def name_of(obj: k8s.V1Pod) -> str:
    assert obj.metadata is not None and obj.metadata.name is not None
    return str(obj.metadata.name)


def status_of(call: Any) -> int:
    """The HTTP status an API call ends with: 2xx as 200, else the ApiException's."""
    try:
        call()
    except ApiException as e:
        return int(e.status)
    return 200


def wait_allocation_writes_open(core: k8s.CoreV1Api, namespace: str, timeout: float = 30.0) -> None:
    """After the chart's allocation-write policy is deleted: wait until the apiserver has
    unloaded it, i.e. admin may create an annotated pod again (a dry run). The rest of the
    session's tests write allocations as admin."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "allocation-writes-open", "annotations": {ann.POD_ALLOCATION: "{}"}},
        "spec": {"containers": [{"name": "main", "image": "registry.invalid/fake:1"}]},
    }

    def open_() -> bool:
        return status_of(lambda: core.create_namespaced_pod(namespace, body, dry_run="All")) == 200  # type: ignore[arg-type]  # a dict is sent as is

    wait_until(open_, timeout, "the allocation-write policy to be unloaded")
