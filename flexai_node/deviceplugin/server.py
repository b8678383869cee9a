"""The kubelet device plugin: a gRPC server on a unix socket that registers with the kubelet.

Lifecycle (``PluginServer``)::

    start() --> serve on <dir>/<socket> --> Register(kubelet.sock) --> watching
                     ^                                                  |
                     +---- kubelet.sock replaced, or our socket gone ---+
                           (the kubelet restarted and wiped the directory)

The server serves *before* it registers: the kubelet dials back at once. A failed
Register is retried on the next watch tick. ``set_cards`` pushes a new device list
(health changes) to every ListAndWatch stream.

``DevicePluginService`` maps the RPCs onto an ``Admitter`` (Allocate) and the current
cards (ListAndWatch); ``_status`` is the one place our errors become gRPC status codes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol

import grpc

from flexai_core.model import Card
from flexai_core.resources import VGPU_NUMBER

from ..admission import AdmissionError, PodRefused
from ..grant import ContainerGrant
from ..nodeapi import KubeError
from . import api_pb2 as pb
from . import api_pb2_grpc as pb_grpc
from .devices import devices, preferred

__all__ = ["Admitter", "DevicePluginService", "PluginServer", "KUBELET_SOCKET", "API_VERSION"]

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_DIR = Path("/var/lib/kubelet/device-plugins")


class Admitter(Protocol):
    def allocate(self, device_ids: Sequence[Sequence[str]]) -> list[ContainerGrant]:
        """One grant per container request; raises AdmissionError or KubeError."""


class DevicePluginService(pb_grpc.DevicePluginServicer):
    def __init__(self, admitter: Admitter, cards: Sequence[Card] = ()) -> None:
        self._admitter = admitter
        self._changed = threading.Condition()
        self._cards: tuple[Card, ...] = tuple(cards)
        self._version = 0
        self._stopped = False

    def set_cards(self, cards: Sequence[Card]) -> None:
        with self._changed:
            if tuple(cards) != self._cards:
                self._cards = tuple(cards)
                self._version += 1
                self._changed.notify_all()

    @property
    def cards(self) -> tuple[Card, ...]:
        with self._changed:
            return self._cards

    def stop_streams(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def GetDevicePluginOptions(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.DevicePluginOptions:
        return options()

    def ListAndWatch(self, request: pb.Empty, context: grpc.ServicerContext) -> Iterator[pb.ListAndWatchResponse]:
        seen = -1
        while context.is_active():
            with self._changed:
                # Wake every second to notice a closed stream (the kubelet went away).
                self._changed.wait_for(lambda: self._stopped or self._version != seen, timeout=1.0)  # noqa: B023  (called here)
                if self._stopped:
                    return
                if self._version == seen:
                    continue
                seen, cards = self._version, self._cards
            yield pb.ListAndWatchResponse(devices=devices(cards))

    def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> pb.PreferredAllocationResponse:
        return pb.PreferredAllocationResponse(
            container_responses=[
                pb.ContainerPreferredAllocationResponse(
                    deviceIDs=preferred(r.available_deviceIDs, r.must_include_deviceIDs, r.allocation_size)
                )
                for r in request.container_requests
            ]
        )

    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext) -> pb.AllocateResponse:
        ids = [list(r.devices_ids) for r in request.container_requests]
        try:
            grants = self._admitter.allocate(ids)
        except (AdmissionError, KubeError) as e:
            code, message = _status(e)
            log.warning("Allocate %s refused: %s", ids, message)
            context.abort(code, message)
        return pb.AllocateResponse(container_responses=[_response(g) for g in grants])

    def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


def options() -> pb.DevicePluginOptions:
    return pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


def _response(g: ContainerGrant) -> pb.ContainerAllocateResponse:
    return pb.ContainerAllocateResponse(
        envs=dict(g.envs),
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only) for m in g.mounts
        ],
        annotations=dict(g.annotations),
    )


def _status(e: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, PodRefused):
        return grpc.StatusCode.INVALID_ARGUMENT, f"flexai: {e}"
    if isinstance(e, AdmissionError):
        return grpc.StatusCode.FAILED_PRECONDITION, f"flexai: {e}"
    return grpc.StatusCode.UNAVAILABLE, f"flexai: cannot read this node's pods: {e}"


class PluginServer:
    """Serves ``service`` on ``plugin_dir/socket_name`` and keeps it registered."""

    def __init__(
        self,
        service: DevicePluginService,
        plugin_dir: Path = DEFAULT_DIR,
        socket_name: str = "flexai-vgpu.sock",
        resource_name: str = VGPU_NUMBER,
        watch_every_s: float = 1.0,
        workers: int = 8,
    ) -> None:
        self.service = service
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / socket_name
        self.resource_name = resource_name
        self._every = watch_every_s
        self._workers = workers
        self._server: grpc.Server | None = None
        self._registered_with: tuple[int, int] | None = None  # (inode, ctime) of that kubelet.sock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registrations = 0  # successful Register calls (for tests and metrics)

    def start(self) -> None:
        self._tick()
        self._thread = threading.Thread(target=self._watch, name="deviceplugin-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.service.stop_streams()
        self._stop_server()

    def _watch(self) -> None:
        while not self._stop.wait(self._every):
            self._tick()

    def _tick(self) -> None:
        """Serve if our socket is gone; (re-)register if kubelet.sock is new."""
        try:
            if self._server is None or not self.socket.exists():
                self._serve()
                self._registered_with = None  # a new socket needs a new registration
            kubelet = _identity(self.plugin_dir / KUBELET_SOCKET)
            if kubelet is not None and kubelet != self._registered_with:
                self._register()
                self._registered_with = kubelet
        except (grpc.RpcError, OSError, RuntimeError) as e:
            log.warning("device plugin: %s; retrying in %.1fs", _describe(e), self._every)

    def _serve(self) -> None:
        self._stop_server()
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass
        # Old ListAndWatch streams died with the old server; new ones start fresh.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="deviceplugin"))
        pb_grpc.add_DevicePluginServicer_to_server(self.service, server)  # type: ignore[no-untyped-call]
        if server.add_insecure_port(f"unix://{self.socket.resolve()}") == 0:
            raise RuntimeError(f"cannot listen on {self.socket}")
        server.start()
        self._server = server
        log.info("device plugin serving on %s", self.socket)

    def _register(self) -> None:
        target = f"unix://{(self.plugin_dir / KUBELET_SOCKET).resolve()}"
        with grpc.insecure_channel(target) as channel:
            pb_grpc.RegistrationStub(channel).Register(  # type: ignore[no-untyped-call]
                pb.RegisterRequest(
                    version=API_VERSION,
                    endpoint=self.socket.name,
                    resource_name=self.resource_name,
                    options=options(),
                ),
                timeout=10,
            )
        self.registrations += 1
        log.info("registered %s with the kubelet at %s", self.resource_name, target)

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1).wait()
            self._server = None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_ctime_ns)


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        details: Any = getattr(e, "details", lambda: "")()
        code: Any = getattr(e, "code", lambda: "")()
        return f"kubelet Register failed: {code} {details}"
    return str(e)
