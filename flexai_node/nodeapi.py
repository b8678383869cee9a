"""What the agent needs from Kubernetes: a three-method interface and its one error.

The real implementation is ``kube.KubeNodeApi`` (the only module that imports the
kubernetes client); the tests' fake lives in tests/node/fakes.py. Keeping the interface
here keeps the device plugin importable without the kubernetes client.
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import NodeError

__all__ = ["KubeError", "NodeApi"]


class KubeError(NodeError):
    """The API server could not be reached or refused the request."""


class NodeApi(Protocol):
    def list_pods(self, node: str) -> list[dict[str, Any]]:
        """Every pod whose spec.nodeName is ``node``, freshly read (not from a cache)."""

    def patch_node_annotations(self, node: str, annotations: dict[str, str]) -> None: ...

    def warn_pod(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        """Record a Warning Event on the pod (what ``kubectl describe pod`` shows)."""
