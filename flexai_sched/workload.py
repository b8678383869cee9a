"""The value types policies reason with: a node's host resources and the target workload.

Plain frozen dataclasses shared by the policies, the cluster state, the extender and the
simulator, so none of them imports one policy's module for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flexai_core.model import FULL_CORES


@dataclass(frozen=True, slots=True)
class Host:
    """A node's host resources: allocatable and what bound pods request."""

    cpu_milli: int
    memory_mib: int
    cpu_used: int = 0
    memory_used: int = 0

    @property
    def cpu_free(self) -> int:
        return self.cpu_milli - self.cpu_used

    @property
    def memory_free(self) -> int:
        return self.memory_mib - self.memory_used

    def plus(self, cpu_milli: int, memory_mib: int) -> Host:
        return Host(self.cpu_milli, self.memory_mib, self.cpu_used + cpu_milli, self.memory_used + memory_mib)


@dataclass(frozen=True, slots=True)
class TaskClass:
    """One kind of task in the target workload; ``cores`` 100 means whole cards."""

    vgpus: int
    cores: int
    weight: float
    cpu_milli: int = 0
    memory_mib: int = 0
    models: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Workload:
    """The target workload: task classes with weights; with the tasks without GPUs
    (``cpu_only``: (CPU, weight) pairs) all weights sum to 1. A task without GPUs finds
    every free GPU a fragment wherever it goes (``cpu_weight`` x free capacity)."""

    classes: tuple[TaskClass, ...]
    cpu_only: tuple[tuple[int, float], ...] = ()

    @property
    def cpu_weight(self) -> float:
        return sum(w for _, w in self.cpu_only)

    @staticmethod
    def of(classes: Iterable[TaskClass]) -> Workload:
        merged: dict[tuple[object, ...], float] = {}
        cpu: dict[int, float] = {}
        for c in classes:
            if c.weight <= 0:
                continue
            if c.vgpus:
                key = (c.vgpus, c.cores, c.cpu_milli, c.memory_mib, c.models)
                merged[key] = merged.get(key, 0.0) + c.weight
            else:
                cpu[c.cpu_milli] = cpu.get(c.cpu_milli, 0.0) + c.weight
        total = (sum(merged.values()) + sum(cpu.values())) or 1.0
        return Workload(
            tuple(
                TaskClass(v, cores, w / total, cpu_m, mem, models)  # type: ignore[arg-type]
                for (v, cores, cpu_m, mem, models), w in sorted(merged.items(), key=lambda kv: repr(kv[0]))
            ),
            tuple((c, w / total) for c, w in sorted(cpu.items())),
        )

    def by_gpu_demand(self) -> Workload:
        """The GPU classes weighted by count x GPU demand (what a failure strands)."""
        return Workload.of(
            TaskClass(c.vgpus, c.cores, c.weight * c.vgpus * c.cores, c.cpu_milli, c.memory_mib, c.models)
            for c in self.classes
        )

    def typical(self, share: float) -> Workload:
        """FGD's "typical pods": classes told apart by CPU and GPU only (not memory), the
        most frequent first until they cover ``share`` of all tasks (with those without
        GPUs), weights renormalized over them."""
        merged: dict[tuple[int, int, int, frozenset[str]], float] = {}
        for c in self.classes:
            key = (c.vgpus, c.cores, c.cpu_milli, c.models)
            merged[key] = merged.get(key, 0.0) + c.weight
        for cpu, w in self.cpu_only:
            merged[(0, 0, cpu, frozenset())] = merged.get((0, 0, cpu, frozenset()), 0.0) + w
        total = sum(merged.values())
        kept: list[TaskClass] = []
        covered = 0.0
        for (v, cores, cpu, models), w in sorted(merged.items(), key=lambda kv: (-kv[1], repr(kv[0]))):
            if covered >= share * total:
                break
            kept.append(TaskClass(v, cores, w, cpu, 0, models))
            covered += w
        return Workload.of(kept)


# A generic prior for the extender, where no trace says what is coming: whole cards
# (1, 2, 4, 8) and shares of common sizes, equally likely. The simulator replaces it
# with the trace's own distribution, as the paper does.
DEFAULT_WORKLOAD = Workload.of(
    [TaskClass(n, FULL_CORES, 1.0) for n in (1, 2, 4, 8)] + [TaskClass(1, c, 1.0) for c in (10, 25, 30, 50, 75)]
)
