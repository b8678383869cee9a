"""The real cards, read through NVML (nvidia-ml-py).

Every NVML call runs inside ``NvmlInventory._nvml``, the one place pynvml's exceptions
become this module's ``NvmlError`` (with NVML's return code). An error on a card marks
that card unhealthy for this reading; an error before any card can be named (no driver)
is an ``InventoryError``. Critical XID events, watched on a
background thread, mark a card unhealthy until the agent restarts (what the driver
reports as a critical XID does not heal by itself). XIDs that applications cause
(faults in user kernels) are ignored, as NVIDIA's own device plugin does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from flexai_core.model import Card

from .inventory import CardReading, InventoryError

__all__ = ["APPLICATION_XIDS", "NvmlError", "NvmlInventory"]

T = TypeVar("T")
MIB = 1 << 20
# Caused by the application, not the card: illegal address, MMU fault in user code, ...
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})


class NvmlError(Exception):
    """An NVML call failed. ``code`` is NVML's return code (``NVML_ERROR_*``), None if unknown."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


class NvmlInventory:
    """``nvml`` is the pynvml module; tests pass a fake with the same few functions."""

    def __init__(self, max_vgpus: int = 5, nvml: ModuleType | Any = None, watch_xids: bool = True) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml = nvml
        self._max_vgpus = max_vgpus
        self._lock = threading.Lock()
        self._xid_failed: dict[str, int] = {}  # uuid -> last critical XID
        self._known: dict[int, Card] = {}  # index -> last good reading, to name a card that stops answering
        self._stop = threading.Event()
        try:
            self._call(nvml.nvmlInit)
        except NvmlError as e:
            raise InventoryError(f"NVML init failed: {e}") from None
        self._thread: threading.Thread | None = None
        if watch_xids:
            self._thread = threading.Thread(target=self._watch_xids, name="nvml-xid", daemon=True)
            self._thread.start()

    def read(self) -> tuple[CardReading, ...]:
        n = self._nvml
        try:
            count = int(self._call(n.nvmlDeviceGetCount))
        except NvmlError as e:
            raise InventoryError(f"NVML cannot count devices: {e}") from None
        return tuple(self._read_card(i) for i in range(count))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._call(self._nvml.nvmlShutdown)
        except NvmlError:
            pass  # shutting down anyway

    def xid_failures(self) -> dict[str, int]:
        with self._lock:
            return dict(self._xid_failed)

    def mark_xid(self, uuid: str, xid: int) -> None:
        """Record a critical XID for a card (the event thread's action; tests call it too)."""
        if xid in APPLICATION_XIDS:
            return
        with self._lock:
            self._xid_failed[uuid] = xid

    def _read_card(self, index: int) -> CardReading:
        n = self._nvml
        healthy = True
        try:
            handle = self._call(n.nvmlDeviceGetHandleByIndex, index)
            uuid = _text(self._call(n.nvmlDeviceGetUUID, handle))
        except NvmlError:
            # Keep its last known identity (the kubelet keeps its devices, marked unhealthy);
            # never seen: a placeholder under its index, so the scheduler avoids it.
            known = self._known.get(index)
            if known is not None:
                return CardReading(replace(known, healthy=False))
            return CardReading(Card(index, f"unknown-{index}", "unknown", 1, self._max_vgpus, healthy=False))
        model, total, used, util, numa = "unknown", 1, None, None, None
        try:
            model = _text(self._call(n.nvmlDeviceGetName, handle))
            total = max(1, int(self._call(n.nvmlDeviceGetMemoryInfo, handle).total) // MIB)
        except NvmlError:
            healthy = False
        try:
            used = self._used_mib(handle)
            util = int(self._call(n.nvmlDeviceGetUtilizationRates, handle).gpu)
        except NvmlError:
            healthy = False
        numa = self._numa(handle)
        with self._lock:
            if uuid in self._xid_failed:
                healthy = False
        card = Card(index, uuid, model, total, self._max_vgpus, healthy=healthy, numa=numa)
        if healthy:
            self._known[index] = card
        return CardReading(card, util, used)

    def _used_mib(self, handle: Any) -> int:
        n = self._nvml
        try:
            # v2 leaves the driver's reserved memory out of "used": that is nobody's process.
            return int(self._call(n.nvmlDeviceGetMemoryInfo, handle, version=n.nvmlMemory_v2).used) // MIB
        except (NvmlError, AttributeError):
            return int(self._call(n.nvmlDeviceGetMemoryInfo, handle).used) // MIB

    def _numa(self, handle: Any) -> int | None:
        n = self._nvml
        try:
            node = int(self._call(n.nvmlDeviceGetNumaNodeId, handle))
            return node if node >= 0 else None
        except (NvmlError, AttributeError):
            pass  # older drivers: fall back to sysfs by PCI address
        try:
            bus = _text(self._call(n.nvmlDeviceGetPciInfo, handle).busId).lower()
            text = (Path("/sys/bus/pci/devices") / bus[-12:]).joinpath("numa_node").read_text()
            node = int(text.strip())
            return node if node >= 0 else None
        except (NvmlError, OSError, ValueError, AttributeError):
            return None

    @contextmanager
    def _nvml_errors(self) -> Iterator[None]:
        """The one place pynvml's exceptions are translated: NVMLError -> NvmlError."""
        try:
            yield
        except self._nvml.NVMLError as e:
            code = getattr(e, "value", None)
            raise NvmlError(str(e), code if isinstance(code, int) else None) from None

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._nvml_errors():
            return fn(*args, **kwargs)

    def _watch_xids(self) -> None:
        n = self._nvml
        try:
            events = self._call(n.nvmlEventSetCreate)
            for i in range(int(self._call(n.nvmlDeviceGetCount))):
                try:
                    handle = self._call(n.nvmlDeviceGetHandleByIndex, i)
                    self._call(n.nvmlDeviceRegisterEvents, handle, n.nvmlEventTypeXidCriticalError, events)
                except NvmlError:
                    continue  # this card cannot report XIDs (e.g. NOT_SUPPORTED); its NVML errors still count
        except NvmlError:
            return  # no event support at all: health comes from NVML errors alone
        try:
            while not self._stop.is_set():
                try:
                    data = self._call(n.nvmlEventSetWait_v2, events, 1000)
                except NvmlError as e:
                    if e.code != n.NVML_ERROR_TIMEOUT:
                        self._stop.wait(1.0)  # a real error: do not spin on it
                    continue
                if data.eventType & n.nvmlEventTypeXidCriticalError:
                    try:
                        uuid = _text(self._call(n.nvmlDeviceGetUUID, data.device))
                    except NvmlError:
                        continue
                    self.mark_xid(uuid, int(data.eventData))
        finally:
            try:
                self._call(n.nvmlEventSetFree, events)
            except NvmlError:
                pass


def _text(value: object) -> str:
    # Older pynvml returned bytes; current returns str.
    return value.decode() if isinstance(value, bytes) else str(value)
