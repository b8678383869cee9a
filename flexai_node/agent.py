"""The node agent: inventory -> device plugin, node annotation and metrics, in one loop.

Every ``poll_every_s`` the agent reads the cards and this node's pods once, then:
pushes the cards (health) to ListAndWatch, lets the reporter patch the Node when the
annotation changed or its heartbeat is due, and refreshes the metrics snapshot. Every
``prune_every_s`` it removes the records and directories of pods that are gone.
Nothing in a tick stops the agent: an unreadable inventory marks the cards last seen
unhealthy; an unreachable API server skips the report until the next tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from .admitter import NodeAdmitter
from .deviceplugin.kubelet_pods import DEFAULT_SOCKET as POD_RESOURCES_SOCKET
from .deviceplugin.kubelet_pods import PodResourcesClient
from .deviceplugin.server import DEFAULT_DIR, DevicePluginService, PluginServer
from .grant import GrantBuilder
from .hook.calibration import CACHE_NAME, RefClocks, parse_mode
from .hook.files import HookConfigFiles
from .hook.regions import RegionUsageReader
from .hook.shim import HookShim
from .inventory import CardReading, InventoryError, InventorySource
from .ledger import Ledger
from .metrics import AgentMetrics, Snapshot, VgpuUsage, VgpuUsageReader
from .nodeapi import KubeError, NodeApi
from .pods import BoundPod
from .reporter import Reporter
from .workdirs import Workdirs

__all__ = ["AgentSettings", "NodeAgent"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    node: str
    state_dir: Path
    hook_library: Path
    plugin_dir: Path = DEFAULT_DIR
    metrics_port: int | None = 9400  # None: no HTTP endpoint (tests read the collector)
    metrics_address: str = "0.0.0.0"  # Prometheus scrapes the pod's IP
    pod_resources_socket: Path | None = POD_RESOURCES_SOCKET  # None: admission without the kubelet's view
    report_every_s: float = 30.0
    poll_every_s: float = 5.0
    prune_every_s: float = 30.0
    # The SM clock (MHz) this node's cards sustain at full load, for limits in throughput:
    # "auto" measures each card (calibration.py), a number is one clock for all, 0 or "off"
    # holds shares of time.
    ref_clock_mhz: int | str = 0


class NodeAgent:
    def __init__(
        self,
        settings: AgentSettings,
        api: NodeApi,
        inventory: InventorySource,
        usage: VgpuUsageReader | None = None,
        shim: HookShim | None = None,
    ) -> None:
        """Per-vGPU usage comes from ``usage``, else from the hook regions through ``shim``,
        else there is none (the agent runs without those metrics)."""
        self.settings = settings
        self._api = api
        self._inventory = inventory
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        workdirs = Workdirs(settings.state_dir / "containers")
        self.ref_clocks = RefClocks(
            parse_mode(str(settings.ref_clock_mhz)),
            settings.state_dir / CACHE_NAME,
            shim.calibrate if shim is not None else None,
        )
        hook = HookConfigFiles(workdirs.root, settings.hook_library, self.ref_clocks.figures)
        if usage is None and shim is not None:
            usage = RegionUsageReader(lambda uid, c: hook.region_file(workdirs.path(uid, c)), shim)
        self._usage = usage
        self.admitter = NodeAdmitter(
            settings.node,
            api,
            Ledger(settings.state_dir / "admissions.json"),
            workdirs,
            GrantBuilder(hook),
            lambda: tuple(r.card for r in self._last),
            PodResourcesClient(settings.pod_resources_socket) if settings.pod_resources_socket else None,
        )
        self.plugin = PluginServer(DevicePluginService(self.admitter), settings.plugin_dir)
        self.reporter = Reporter(settings.node, api, settings.report_every_s)
        self.metrics = AgentMetrics(settings.node)
        self.registry = CollectorRegistry()
        self.registry.register(self.metrics)
        self._last: tuple[CardReading, ...] = ()
        self._last_prune = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._last = self._read_cards()
        # Before the device plugin serves: no container has been given these cards yet.
        self.ref_clocks.calibrate_missing(r.card.uuid for r in self._last)
        self.plugin.service.set_cards([r.card for r in self._last])
        try:
            seeded = self.admitter.seed(self.admitter.bound_pods())
            if seeded:
                log.info("recorded %d containers that were admitted before this agent started", seeded)
        except KubeError as e:
            log.warning("cannot seed admissions from the API server yet: %s", e)
        self.plugin.start()
        if self.settings.metrics_port is not None:
            start_http_server(self.settings.metrics_port, self.settings.metrics_address, registry=self.registry)
        self._thread = threading.Thread(target=self._loop, name="node-agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.plugin.stop()
        self._inventory.close()

    def wait(self) -> None:
        self._stop.wait()

    def tick(self) -> None:
        readings = self._read_cards()
        self.ref_clocks.calibrate_missing(r.card.uuid for r in readings)
        self.plugin.service.set_cards([r.card for r in readings])
        try:
            pods = tuple(self.admitter.bound_pods())
        except KubeError as e:
            log.warning("cannot list this node's pods: %s", e)
            self.metrics.update(Snapshot(self.settings.node, readings))
            return
        if isinstance(self._usage, RegionUsageReader):
            self._usage.forget({p.uid for p in pods})
        usage = self._read_usage(pods)
        try:
            self.reporter.report(readings, pods, _ours_by_card(usage) if self._usage else None)
        except KubeError as e:
            log.warning("cannot write the node annotation: %s", e)
        self.metrics.update(Snapshot(self.settings.node, readings, pods, usage))
        if time.monotonic() - self._last_prune >= self.settings.prune_every_s:
            try:
                self.admitter.prune()
                self._last_prune = time.monotonic()
            except KubeError as e:
                log.warning("cannot prune gone pods: %s", e)

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # the loop must outlive any one bad tick
                log.exception("node agent tick failed")
            if self._stop.wait(self.settings.poll_every_s):
                return

    def _read_cards(self) -> tuple[CardReading, ...]:
        try:
            self._last = self._inventory.read()
        except InventoryError as e:
            log.error("inventory unreadable, reporting every card unhealthy: %s", e)
            self._last = tuple(CardReading(replace(r.card, healthy=False)) for r in self._last)
        return self._last

    def _read_usage(self, pods: tuple[BoundPod, ...]) -> dict[tuple[str, str], Mapping[str, VgpuUsage]]:
        if self._usage is None:
            return {}
        return {
            (p.uid, c.name): self._usage.read(p.uid, c.name)
            for p in pods
            if not p.terminal and p.allocation is not None
            for c in p.containers
        }


def _ours_by_card(usage: Mapping[tuple[str, str], Mapping[str, VgpuUsage]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for per_card in usage.values():
        for uuid, u in per_card.items():
            out[uuid] = out.get(uuid, 0) + u.memory_used_mib
    return out
