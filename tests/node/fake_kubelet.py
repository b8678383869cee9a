"""A fake kubelet: the Registration service on <dir>/kubelet.sock, which dials back.

On Register it records the request, connects to the plugin's endpoint (relative to the
directory, as the real kubelet does), checks the options and consumes ListAndWatch on a
thread, keeping every device list it receives. ``restart`` does what a kubelet restart
does to the directory: wipes it and creates a new kubelet.sock.
"""

from __future__ import annotations

import queue
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from flexai_node.deviceplugin import api_pb2 as pb
from flexai_node.deviceplugin import api_pb2_grpc as pb_grpc
from flexai_node.deviceplugin import podresources_pb2 as pr
from flexai_node.deviceplugin import podresources_pb2_grpc as pr_grpc


class FakeKubelet(pb_grpc.RegistrationServicer):
    def __init__(self, plugin_dir: Path) -> None:
        self.dir = plugin_dir
        self.registrations: queue.Queue[pb.RegisterRequest] = queue.Queue()
        self.device_lists: queue.Queue[dict[str, str]] = queue.Queue()  # device ID -> health
        self.numa: dict[str, list[int]] = {}
        self.reject_with: str | None = None  # the next Register fails with this message
        self._server: grpc.Server | None = None
        self._channels: list[grpc.Channel] = []
        self._streams: list[Any] = []

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_RegistrationServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        assert server.add_insecure_port(f"unix://{self.dir / 'kubelet.sock'}") != 0
        server.start()
        self._server = server

    def stop(self) -> None:
        for s in self._streams:
            s.cancel()
        for c in self._channels:
            c.close()
        self._streams, self._channels = [], []
        if self._server is not None:
            self._server.stop(grace=0).wait()
            self._server = None

    def restart(self) -> None:
        """As the kubelet: every file in the directory goes (our socket too), then a new kubelet.sock."""
        self.stop()
        for p in self.dir.iterdir():
            p.unlink(missing_ok=True)
        self.start()

    def plugin(self, endpoint: str) -> pb_grpc.DevicePluginStub:
        channel = grpc.insecure_channel(f"unix://{self.dir / endpoint}")
        self._channels.append(channel)
        return pb_grpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        if self.reject_with:
            msg, self.reject_with = self.reject_with, None
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg)
        stub = self.plugin(request.endpoint)
        # As the kubelet: the plugin must answer right away, before Register returns.
        options = stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        assert options.get_preferred_allocation_available == request.options.get_preferred_allocation_available
        stream = stub.ListAndWatch(pb.Empty())
        self._streams.append(stream)
        threading.Thread(target=self._consume, args=(stream,), daemon=True).start()
        self.registrations.put(request)
        return pb.Empty()

    def _consume(self, stream: Any) -> None:
        try:
            for resp in stream:
                self.numa.update({d.ID: [n.ID for n in d.topology.nodes] for d in resp.devices})
                self.device_lists.put({d.ID: d.health for d in resp.devices})
        except grpc.RpcError:
            pass  # stream closed (plugin or kubelet restarted)


class FakePodResources(pr_grpc.PodResourcesListerServicer):
    """The kubelet's PodResources List on its own socket; ``pods`` is what it holds:
    "namespace/name" -> container -> device IDs of huawei.com/vgpu-number."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.pods: dict[str, dict[str, list[str]]] = {}
        self.fail = False
        self._server: grpc.Server | None = None

    def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pr_grpc.add_PodResourcesListerServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        assert server.add_insecure_port(f"unix://{self.socket}") != 0
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait()
            self._server = None

    def List(self, request: pr.ListPodResourcesRequest, context: grpc.ServicerContext) -> pr.ListPodResourcesResponse:
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet busy")
        return pr.ListPodResourcesResponse(
            pod_resources=[
                pr.PodResources(
                    namespace=key.split("/")[0],
                    name=key.split("/")[1],
                    containers=[
                        pr.ContainerResources(
                            name=c,
                            devices=[
                                pr.ContainerDevices(resource_name="huawei.com/vgpu-number", device_ids=ids),
                                pr.ContainerDevices(resource_name="example.com/other", device_ids=["x"]),
                            ],
                        )
                        for c, ids in containers.items()
                    ],
                )
                for key, containers in self.pods.items()
            ]
        )
