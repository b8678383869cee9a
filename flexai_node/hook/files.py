"""``grant.HookFiles`` over ``config`` (which owns the format and env).

Per container, under its host directory::

    <dir>/vgpu.conf   the limits, mounted read-only at CONTAINER_CONFIG (the container
                      must not raise its own limits)
    <dir>/region/     mounted read-write at CONTAINER_REGION_DIR; the hook's processes
                      share their accounting region there, the agent's metrics read it
                      (the tenant writes there: nothing in it is trusted, see ``hostfs``)

Compute windows: vGPUs on one card get windows that do not overlap
(``config.first_free_window``) given the configs already written for the other
containers on this node (the files are the record, removed with their pods). When no
contiguous window is free the vGPU opens at 0 and shares by time-slicing (logged).
Called under the admitter's lock, so two admissions never take the same window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from flexai_core.model import Slice

from ..grant import MountSpec
from ..hostfs import chmod_dir, ensure_dir, read_file
from . import config as hc

__all__ = ["CONFIG_NAME", "CONTAINER_CONFIG", "CONTAINER_REGION_DIR", "HookConfigFiles", "REGION_DIR"]

log = logging.getLogger(__name__)

CONFIG_NAME = "vgpu.conf"
REGION_DIR = "region"
REGION_NAME = "region"
CONTAINER_CONFIG = "/etc/flexai/vgpu.conf"
CONTAINER_REGION_DIR = "/var/run/flexai/vgpu"
MIB = 1 << 20


class HookConfigFiles:
    def __init__(self, root: Path, library: Path, ref_clock_mhz: int | Callable[[str], hc.CardFigures] = 0) -> None:
        """``root``: the per-container directories' parent; ``library``: the hook on the host;
        ``ref_clock_mhz``: a card's full-load SM clock, for limits in throughput (0: in time),
        one for all cards, or per card UUID what the agent measured (``calibration.RefClocks.figures``)."""
        self._root = root
        self._library = library
        self._figures: Callable[[str], hc.CardFigures]
        if callable(ref_clock_mhz):
            self._figures = ref_clock_mhz
        else:
            fixed = hc.CardFigures(ref_clock_mhz=ref_clock_mhz)
            self._figures = lambda _uuid: fixed

    def prepare(self, host_dir: Path, slices: tuple[Slice, ...]) -> tuple[dict[str, str], tuple[MountSpec, ...]]:
        taken = self._windows(exclude=host_dir)
        vgpus = []
        for s in slices:
            offset = 0
            if 0 < s.cores < 100:
                free = hc.first_free_window(taken.get(s.card_uuid, []), s.cores)
                if free is None:
                    log.warning(
                        "no free %d%% compute window on %s for %s: sharing by time-slicing",
                        s.cores,
                        s.card_uuid,
                        host_dir,
                    )
                offset = free or 0
            fig = self._figures(s.card_uuid) if 0 < s.cores < 100 else hc.CardFigures()
            vgpus.append(
                hc.VGPULimit(
                    uuid=s.card_uuid,
                    memory_bytes=s.memory_mib * MIB,
                    cores=s.cores,
                    core_offset=offset,
                    ref_clock_mhz=fig.ref_clock_mhz,
                    speedup_pm=fig.speedup_pm,
                    idle_power_mw=fig.idle_power_mw,
                    gap_power_mw=fig.gap_power_mw,
                )
            )
        region = host_dir / REGION_DIR
        ensure_dir(region)
        # Containers run as any user: every one of them must be able to create the region.
        chmod_dir(region, 0o777)
        config = hc.HookConfig(vgpus=tuple(vgpus), region_path=f"{CONTAINER_REGION_DIR}/{REGION_NAME}")
        hc.write_config(host_dir / CONFIG_NAME, config)
        env = hc.container_env(CONTAINER_CONFIG, hc.DEFAULT_LIBRARY)
        mounts = (
            MountSpec(hc.DEFAULT_LIBRARY, str(self._library), read_only=True),
            MountSpec(CONTAINER_CONFIG, str(host_dir / CONFIG_NAME), read_only=True),
            MountSpec(CONTAINER_REGION_DIR, str(region), read_only=False),
        )
        return env, mounts

    def region_file(self, host_dir: Path) -> Path:
        """Where the hook's processes of this container keep their region, on the host."""
        return host_dir / REGION_DIR / REGION_NAME

    def _windows(self, exclude: Path) -> dict[str, list[tuple[int, int]]]:
        """Card UUID -> (offset, cores) of every limited vGPU already configured here."""
        taken: dict[str, list[tuple[int, int]]] = {}
        for path in self._configs():
            if path.parent == exclude:
                continue
            try:
                config = hc.parse(read_file(path).decode())
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable hook config %s: %s", path, e)
                continue
            for v in config.vgpus:
                if v.uuid is not None and 0 < v.cores < 100:
                    taken.setdefault(v.uuid, []).append((v.core_offset, v.cores))
        return taken

    def _configs(self) -> Iterator[Path]:
        if self._root.is_dir():
            yield from sorted(self._root.glob(f"*/*/{CONFIG_NAME}"))
