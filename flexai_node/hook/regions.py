"""``metrics.VgpuUsageReader`` over the hook's shared regions, read with ``shim``.

Memory in use is the region's own count (every live process of the container, context
overhead included). Utilisation is the GPU time the hook measured between two reads,
over the wall time between them; the hook measures only compute-limited vGPUs, so
unlimited ones have none. A container that has not started a CUDA process yet has no
region: no usage, not an error. The region file is the tenant's: the shim opens it
without following links, only if it is a regular file, and reads it without writing;
a region it refuses is logged (someone planted it) and shows no usage.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..metrics import VgpuUsage
from .shim import RegionSnapshot, ShimError

__all__ = ["RegionSource", "RegionUsageReader"]

log = logging.getLogger(__name__)
MIB = 1 << 20


class RegionSource(Protocol):
    """``shim.HookShim`` (tests pass a fake)."""

    def snapshot(self, region_path: str | os.PathLike[str]) -> RegionSnapshot: ...


class RegionUsageReader:
    def __init__(
        self,
        region_file: Callable[[str, str], Path],
        shim: RegionSource,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``region_file(pod UID, container)``: where that container's region is on the host."""
        self._region_file = region_file
        self._shim = shim
        self._monotonic = monotonic
        self._mu = threading.Lock()
        self._last: dict[tuple[str, str, str], tuple[float, int]] = {}  # (uid, container, uuid) -> (t, busy_ns)

    def read(self, uid: str, container: str) -> dict[str, VgpuUsage]:
        path = self._region_file(uid, container)
        if not os.path.lexists(path):
            return {}
        try:
            snap = self._shim.snapshot(path)
        except ShimError as e:
            refused = e.errno in (errno.ELOOP, errno.EPERM, errno.ENOTDIR)
            log.log(
                logging.WARNING if refused else logging.DEBUG,
                "region %s %s: %s",
                path,
                "refused" if refused else "unreadable",
                e,
            )
            return {}
        now = self._monotonic()
        out = {}
        with self._mu:
            for v in snap.vgpus:
                key = (uid, container, v.uuid)
                util = None
                if 0 < v.cores < 100:
                    prev = self._last.get(key)
                    if prev is not None and now > prev[0]:
                        util = min(100.0, max(0.0, (v.busy_ns - prev[1]) / ((now - prev[0]) * 1e9) * 100))
                    self._last[key] = (now, v.busy_ns)
                out[v.uuid] = VgpuUsage(v.memory_used // MIB, util)
        return out

    def forget(self, live_uids: set[str]) -> None:
        with self._mu:
            self._last = {k: v for k, v in self._last.items() if k[0] in live_uids}
