"""What a container is given at admission: its visible cards and the hook's files.

A ``ContainerGrant`` is plain data (no gRPC), so the GPU check can apply one by hand.
``GrantBuilder.build`` makes one for a container's slices: ``NVIDIA_VISIBLE_DEVICES`` =
the UUIDs of its cards in slice order, plus what ``HookFiles`` prepares in the
container's host directory (the limits config, the shared-region directory, the
preloaded hook: their env and mounts). The hook's format and env belong to the hook
(``hook.files`` over ``hook.config``); this module never spells either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from flexai_core.model import Slice

from .pods import BoundPod, GpuContainer

__all__ = ["ContainerGrant", "GrantBuilder", "HookFiles", "MountSpec"]

VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"


@dataclass(frozen=True, slots=True)
class MountSpec:
    container_path: str
    host_path: str
    read_only: bool


class HookFiles(Protocol):
    def prepare(self, host_dir: Path, slices: tuple[Slice, ...]) -> tuple[dict[str, str], tuple[MountSpec, ...]]:
        """Write the hook's files for ``slices`` under ``host_dir``; return the env and the
        mounts the container needs (env paths as the container sees them)."""


@dataclass(frozen=True, slots=True)
class ContainerGrant:
    envs: dict[str, str]
    mounts: tuple[MountSpec, ...]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GrantBuilder:
    hook: HookFiles

    def build(self, pod: BoundPod, container: GpuContainer, host_dir: Path) -> ContainerGrant:
        envs, mounts = self.hook.prepare(host_dir, container.slices)
        return ContainerGrant({**envs, VISIBLE_DEVICES: ",".join(s.card_uuid for s in container.slices)}, mounts)
