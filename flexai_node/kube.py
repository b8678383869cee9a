"""``NodeApi`` (see ``nodeapi``) over the official kubernetes client.

The only module that imports the client; ``_translate`` is the one place its errors
become ``KubeError``. Pods come back as plain JSON dicts, the shape
``flexai_core.requests`` reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from flexai_core.annotations import format_time

from .nodeapi import KubeError

__all__ = ["KubeError", "KubeNodeApi"]

_COMPONENT = "flexai-node"
_EVENT_MESSAGE_MAX = 1024  # what the events API keeps of a message


class KubeNodeApi:
    def __init__(self, api_client: k8s.ApiClient, timeout_s: float = 10.0) -> None:
        self._core = k8s.CoreV1Api(api_client)
        self._timeout = timeout_s

    @staticmethod
    def connect(kubeconfig: str | None = None) -> KubeNodeApi:
        """In-cluster config when ``kubeconfig`` is None, else that file."""
        with _translate("load the Kubernetes configuration"):
            if kubeconfig:
                api = k8s_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            else:
                k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
                api = k8s.ApiClient()
        return KubeNodeApi(api)

    def list_pods(self, node: str) -> list[dict[str, Any]]:
        # No resourceVersion: a quorum read, so a pod the kubelet is admitting is in it.
        # Raw JSON rather than the client's models: the core parses pod dicts.
        with _translate(f"list the pods of node {node}"):
            resp: Any = self._core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _preload_content=False, _request_timeout=self._timeout
            )
            try:
                doc = json.loads(resp.data)
            finally:
                resp.release_conn()
        items = doc.get("items") if isinstance(doc, dict) else None
        return [p for p in items or [] if isinstance(p, dict)]

    def patch_node_annotations(self, node: str, annotations: dict[str, str]) -> None:
        with _translate(f"patch the annotations of node {node}"):
            self._core.patch_node(node, {"metadata": {"annotations": annotations}}, _request_timeout=self._timeout)

    def warn_pod(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        now = format_time(datetime.now(UTC))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": name, "uid": uid},
            "type": "Warning",
            "reason": reason,
            "message": message[:_EVENT_MESSAGE_MAX],
            "source": {"component": _COMPONENT},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with _translate(f"record an event on pod {namespace}/{name}"):
            self._core.create_namespaced_event(namespace, event, _request_timeout=self._timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self._core.api_client.close()


@contextmanager
def _translate(doing: str) -> Iterator[None]:
    try:
        yield
    except ApiException as e:
        raise KubeError(f"cannot {doing}: {e.status} {e.reason}") from None
    except (HTTPError, OSError, ConfigException, ValueError) as e:
        raise KubeError(f"cannot {doing}: {e}") from None
