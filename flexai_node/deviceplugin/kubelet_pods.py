"""The pods the kubelet holds, from its PodResources API (``List``, v1).

During an Allocate the kubelet already holds the pod it is admitting (it adds a pod to
its pod manager just before admitting it, one pod at a time), not yet the pods bound
after it; and it reports device IDs for the containers it has allocated. That is what
``admission.choose`` needs to tell pods bound in the same second apart. Optional: when the
socket is missing or the call fails, ``view`` returns None and admission goes by the
API server and the ledger alone. The one place PodResources' gRPC errors are handled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from flexai_core.resources import VGPU_NUMBER

from ..admission import KubeletView
from . import podresources_pb2 as pb
from . import podresources_pb2_grpc as pb_grpc

__all__ = ["DEFAULT_SOCKET", "PodResourcesClient"]

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")


class PodResourcesClient:
    def __init__(self, socket: Path = DEFAULT_SOCKET, resource: str = VGPU_NUMBER, timeout_s: float = 2.0) -> None:
        self._socket = socket
        self._resource = resource
        self._timeout = timeout_s
        self._failing = False  # log a change of state once, not every call

    def view(self) -> KubeletView | None:
        if not self._socket.exists():
            self._state(f"no PodResources socket at {self._socket}")
            return None
        try:
            with grpc.insecure_channel(f"unix://{self._socket.resolve()}") as channel:
                stub = pb_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
                resp = stub.List(pb.ListPodResourcesRequest(), timeout=self._timeout)
        except grpc.RpcError as e:
            code: object = getattr(e, "code", lambda: "")()
            self._state(f"PodResources List failed: {code}")
            return None
        self._state(None)
        pods: dict[str, dict[str, tuple[str, ...]]] = {}
        for p in resp.pod_resources:
            containers = pods.setdefault(f"{p.namespace}/{p.name}", {})
            for c in p.containers:
                ids = tuple(i for d in c.devices if d.resource_name == self._resource for i in d.device_ids)
                containers[c.name] = ids
        return KubeletView(pods)

    def _state(self, problem: str | None) -> None:
        if problem and not self._failing:
            log.warning("%s: admission goes by the API server and the ledger alone", problem)
        elif not problem and self._failing:
            log.info("PodResources answers again")
        self._failing = problem is not None
