"""The Alibaba GPU trace (cluster-trace-gpu-v2023, "openb"): nodes and pods as plain values.

Mapping to the scheduling core (assumptions, stated once here):

- A node's GPUs become ``Card``s of its model with the memory in ``CARD_MEMORY_MIB``
  (public specs; P100, G2 and G3 are not disclosed, see there). ``max_vgpus`` is
  ``MAX_SLICES_PER_CARD``: the trace caps no slice count, and 1% shares allow 100.
- A pod with ``num_gpu`` 1 and ``gpu_milli`` < 1000 asks for one vGPU of ``gpu_milli/10``
  cores; ``num_gpu`` >= 1 with ``gpu_milli`` 1000 asks for that many whole cards.
- The trace has no GPU-memory request. A share asks for ``gpu_milli/1000`` of the
  smallest card it may land on (whole MiB, rounded down), so memory never binds
  before cores, as in the trace where only ``gpu_milli`` is recorded. Whole cards
  take all of the card's memory.
- ``gpu_spec`` ("A|B", empty = any) becomes the pod's ``CardSelector``.

Any pod list in the openb format loads (``load_files``): a node list and a pod list, each
named by its file. Required pod columns: ``num_gpu`` and ``gpu_milli``; optional ones, with
their defaults when the column is missing: ``gpu_spec`` any model, ``name`` ``pod-<line>``,
``cpu_milli`` and ``memory_mib`` 0. Other columns (qos, times) are ignored.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from flexai_core.model import FULL_CORES, Card, CardSelector, ContainerRequest, NodeInventory, PodRequest

from ..errors import SchedError

GIB: Final = 1024
# Public specs where known. Assumed: P100 16 GiB (the SXM2/PCIe 16 GB part); G2 and G3,
# undisclosed internal codes on 8-card hosts, 32 GiB. Sizes never change a result here
# (memory follows the share), only the numbers shown in allocations.
CARD_MEMORY_MIB: Final[dict[str, int]] = {
    "T4": 16 * GIB,
    "A10": 24 * GIB,
    "V100M16": 16 * GIB,
    "V100M32": 32 * GIB,
    "P100": 16 * GIB,
    "G2": 32 * GIB,
    "G3": 32 * GIB,
}
MAX_SLICES_PER_CARD: Final = 100
VARIANTS: Final = (
    "default",
    "cpu050",
    "cpu100",
    "cpu200",
    "cpu250",
    "gpushare40",
    "gpushare60",
    "gpushare80",
    "gpushare100",
)
NODE_FILE: Final = "openb_node_list_gpu_node.csv"
POD_PREFIX: Final = "openb_pod_list_"
# The published cluster: the paper's figures apply only to replays on it.
PUBLISHED_NODES: Final = (1213, 6212)  # nodes, GPUs


class TraceError(SchedError, ValueError):
    """A trace file is missing or a row is malformed; the message names file and row."""


@dataclass(frozen=True, slots=True)
class TraceNode:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str

    def inventory(self) -> NodeInventory:
        mem = CARD_MEMORY_MIB[self.model]
        cards = tuple(Card(i, f"{self.name}/gpu{i}", self.model, mem, MAX_SLICES_PER_CARD) for i in range(self.gpus))
        return NodeInventory(self.name, cards)


@dataclass(frozen=True, slots=True)
class TracePod:
    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int  # per GPU: < 1000 is a share of one card
    gpu_spec: frozenset[str]  # allowed models; empty = any

    @property
    def gpu_demand_milli(self) -> int:
        """Requested GPU in thousandths of a card (what the published metric adds up)."""
        return self.num_gpu * self.gpu_milli

    @property
    def cores(self) -> int:
        return self.gpu_milli // 10


@dataclass(frozen=True, slots=True)
class Trace:
    variant: str
    nodes: tuple[TraceNode, ...]
    pods: tuple[TracePod, ...]
    # The pods come from the published file of that name, on the published cluster: the
    # paper's figures for ``variant`` (if it has any) apply.
    published: bool = False

    @property
    def gpu_capacity_milli(self) -> int:
        return sum(n.gpus for n in self.nodes) * 1000


def load(folder: str | Path, variant: str = "default") -> Trace:
    """The pod list ``openb_pod_list_<variant>.csv`` of ``folder`` on its GPU node list."""
    folder = Path(folder)
    return load_files(folder / NODE_FILE, folder / f"{POD_PREFIX}{variant}.csv")


def load_files(node_file: str | Path, pod_file: str | Path) -> Trace:
    """Any node list and pod list in the openb format; the trace is named by the pod file
    (``openb_pod_list_cpu050.csv`` -> ``cpu050``, ``mine.csv`` -> ``mine``)."""
    node_file, pod_file = Path(node_file), Path(pod_file)
    nodes = tuple(_nodes(node_file))
    unknown = sorted({n.model for n in nodes} - set(CARD_MEMORY_MIB))
    if unknown:
        raise TraceError(f"{node_file}: GPU models without a memory size: {', '.join(unknown)}")
    name = variant_name(pod_file)
    published = (
        pod_file.name == f"{POD_PREFIX}{name}.csv" and (len(nodes), sum(n.gpus for n in nodes)) == PUBLISHED_NODES
    )
    return Trace(name, nodes, tuple(_pods(pod_file)), published)


def variant_name(pod_file: str | Path) -> str:
    """A pod list's row name: its file name without ``openb_pod_list_`` and ``.csv``."""
    return Path(pod_file).stem.removeprefix(POD_PREFIX)


def request(pod: TracePod, uid: str, card_memory_mib: int) -> PodRequest:
    """The vGPU request of a trace pod; ``card_memory_mib`` is the smallest card it may use."""
    containers: tuple[ContainerRequest, ...] = ()
    if pod.num_gpu and pod.gpu_milli:
        if pod.gpu_milli >= 1000:
            containers = (ContainerRequest("main", pod.num_gpu, FULL_CORES, None),)
        else:
            containers = (ContainerRequest("main", 1, pod.cores, pod.gpu_milli * card_memory_mib // 1000),)
    return PodRequest("trace", pod.name, uid, containers, selector=CardSelector(models=pod.gpu_spec))


def smallest_card_mib(spec: frozenset[str], models: Iterable[str]) -> int:
    allowed = [CARD_MEMORY_MIB[m] for m in models if not spec or m in spec]
    return min(allowed, default=min(CARD_MEMORY_MIB.values()))


def _rows(path: Path, columns: tuple[str, ...]) -> Iterable[tuple[int, dict[str, str]]]:
    """Rows by line number; ``columns`` must be there, the others default where read."""
    try:
        f = path.open(newline="")
    except OSError as e:
        raise TraceError(f"{path}: {e.strerror}") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}: missing columns {', '.join(missing)}")
        yield from enumerate(reader, start=2)


def _int(path: Path, line: int, row: dict[str, str], col: str, default: int | None = None) -> int:
    if default is not None and row.get(col) is None:
        return default  # an optional column the file does not have
    try:
        value = int(row[col])
    except (TypeError, ValueError):
        raise TraceError(f"{path}:{line}: {col}={row.get(col)!r}: not a whole number") from None
    if value < 0:
        raise TraceError(f"{path}:{line}: {col}={value}: negative")
    return value


def _nodes(path: Path) -> Iterable[TraceNode]:
    for line, row in _rows(path, ("sn", "cpu_milli", "memory_mib", "gpu", "model")):
        gpus = _int(path, line, row, "gpu")
        yield TraceNode(
            row["sn"], _int(path, line, row, "cpu_milli"), _int(path, line, row, "memory_mib"), gpus, row["model"]
        )


def _pods(path: Path) -> Iterable[TracePod]:
    for line, row in _rows(path, ("num_gpu", "gpu_milli")):
        num_gpu, milli = _int(path, line, row, "num_gpu"), _int(path, line, row, "gpu_milli")
        if num_gpu == 0:
            milli = 0
        elif milli == 0 or (milli < 1000 and num_gpu != 1) or milli > 1000 or milli % 10:
            raise TraceError(
                f"{path}:{line}: num_gpu={num_gpu} gpu_milli={milli}: not a whole-percent share of one GPU or whole GPUs"
            )
        spec = frozenset(m for m in (row.get("gpu_spec") or "").split("|") if m)
        yield TracePod(
            row.get("name") or f"pod-{line}",
            _int(path, line, row, "cpu_milli", 0),
            _int(path, line, row, "memory_mib", 0),
            num_gpu,
            milli,
            spec,
        )
