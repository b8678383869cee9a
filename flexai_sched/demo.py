"""The embedded demo cluster: a built-in inventory, or one read from a YAML/JSON file.

File format (``flexai-sched serve --demo-inventory FILE``)::

    nodes:
      - name: gpu-a
        cards: [{model: NVIDIA H200, memoryMiB: 143771, count: 8}]
      - name: gpu-b
        cards: [{model: Tesla T4, memoryMiB: 15360, count: 2, maxVgpus: 4}]
    pods:      # optional: running pods, placed on the cards named (memoryGiB left out: all of it)
      - {namespace: ml, name: chat, node: gpu-a, containers: [{name: vllm, cards: [0], cores: 30, memoryGiB: 20}]}
    waiting:   # optional: pods that wait (filter has seen them), for "why pending"
      - {namespace: ml, name: big, containers: [{name: main, vgpus: 2, cores: 100}], gpuModels: NVIDIA H200}

The built-in cluster starts with a few pods placed and one waiting, so the page at ``/``
shows something at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from flexai_core import annotations as ann
from flexai_core import resources as res
from flexai_core.model import FULL_CORES, Allocation, Card, CardUsage, NodeInventory, Slice

from .allocator import slice_fits

BUILTIN: dict[str, Any] = {
    "nodes": [
        {"name": "gpu-h200-a", "cards": [{"model": "NVIDIA H200", "memoryMiB": 143771, "count": 8}]},
        {"name": "gpu-h200-b", "cards": [{"model": "NVIDIA H200", "memoryMiB": 143771, "count": 8}]},
        {"name": "gpu-a100", "cards": [{"model": "NVIDIA A100-SXM4-80GB", "memoryMiB": 81920, "count": 4}]},
        {"name": "gpu-t4", "cards": [{"model": "Tesla T4", "memoryMiB": 15360, "count": 2}]},
    ],
    "pods": [
        {
            "namespace": "research",
            "name": "pretrain-7b",
            "node": "gpu-h200-a",
            "containers": [{"name": "trainer", "cards": [4, 5, 6, 7], "cores": 100}],
        },
        {
            "namespace": "ml-serving",
            "name": "llm-chat",
            "node": "gpu-h200-a",
            "containers": [{"name": "vllm", "cards": [0], "cores": 60, "memoryGiB": 70}],
        },
        {
            "namespace": "ml-serving",
            "name": "embedder",
            "node": "gpu-h200-a",
            "containers": [{"name": "server", "cards": [0, 1], "cores": 35, "memoryGiB": 16}],
        },
        {
            "namespace": "alice",
            "name": "notebook",
            "node": "gpu-h200-a",
            "containers": [{"name": "jupyter", "cards": [2], "cores": 10, "memoryGiB": 8}],
        },
        {
            "namespace": "ml-serving",
            "name": "llm-batch",
            "node": "gpu-h200-b",
            "containers": [{"name": "worker", "cards": [0], "cores": 50, "memoryGiB": 60}],
        },
        {
            "namespace": "bob",
            "name": "sweep-1",
            "node": "gpu-h200-b",
            "containers": [{"name": "trial", "cards": [1], "cores": 25, "memoryGiB": 20}],
        },
        {
            "namespace": "bob",
            "name": "sweep-2",
            "node": "gpu-h200-b",
            "containers": [{"name": "trial", "cards": [2], "cores": 25, "memoryGiB": 20}],
        },
        {
            "namespace": "bob",
            "name": "sweep-3",
            "node": "gpu-h200-b",
            "containers": [{"name": "trial", "cards": [3], "cores": 25, "memoryGiB": 20}],
        },
        {
            "namespace": "research",
            "name": "eval",
            "node": "gpu-h200-b",
            "containers": [{"name": "harness", "cards": [4, 5], "cores": 30, "memoryGiB": 40}],
        },
        {
            "namespace": "ml-serving",
            "name": "reranker",
            "node": "gpu-h200-b",
            "containers": [{"name": "server", "cards": [6], "cores": 20, "memoryGiB": 10}],
        },
        {
            "namespace": "vision",
            "name": "detector",
            "node": "gpu-a100",
            "containers": [{"name": "yolo", "cards": [0], "cores": 100}],
        },
        {
            "namespace": "vision",
            "name": "ocr",
            "node": "gpu-a100",
            "containers": [{"name": "ocr", "cards": [1, 2], "cores": 40, "memoryGiB": 30}],
        },
    ],
    # Two whole H200 cards on one node: each H200 node has one empty card; moving the
    # notebook frees a second one.
    "waiting": [
        {
            "namespace": "research",
            "name": "finetune-70b",
            "gpuModels": "NVIDIA H200",
            "containers": [{"name": "trainer", "vgpus": 2, "cores": 100}],
        },
    ],
}


def inventory(doc: dict[str, Any] | None = None, max_vgpus: int = 5) -> list[NodeInventory]:
    doc = BUILTIN if doc is None else doc
    now = datetime.now(UTC)
    nodes = []
    for n, node in enumerate(doc.get("nodes") or []):
        where = f"nodes[{n}]"
        name = node.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.name: must be a non-empty string")
        cards: list[Card] = []
        for g, group in enumerate(node.get("cards") or []):
            mem = group.get("memoryMiB")
            count = group.get("count", 1)
            if not isinstance(mem, int) or mem <= 0:
                raise ValueError(f"{where}.cards[{g}].memoryMiB: must be a positive integer")
            if not isinstance(count, int) or count <= 0:
                raise ValueError(f"{where}.cards[{g}].count: must be a positive integer")
            for _ in range(count):
                i = len(cards)
                cards.append(
                    Card(
                        i, f"GPU-{name}-{i}", str(group.get("model", "GPU")), mem, int(group.get("maxVgpus", max_vgpus))
                    )
                )
        nodes.append(NodeInventory(name, tuple(cards), now))
    return nodes


def load_file(path: str | Path, max_vgpus: int = 5) -> list[NodeInventory]:
    return inventory(read_file(path), max_vgpus)


def read_file(path: str | Path) -> dict[str, Any]:
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: must be a mapping with a 'nodes' list")
    return doc


def pods(doc: dict[str, Any] | None, nodes: list[NodeInventory]) -> list[tuple[dict[str, Any], Allocation]]:
    """The running pods of ``doc`` (pod JSON, its allocation), each checked to fit its cards."""
    doc = BUILTIN if doc is None else doc
    by_name = {n.name: n for n in nodes}
    usage: dict[tuple[str, int], CardUsage] = {}
    out = []
    for p, raw in enumerate(doc.get("pods") or []):
        where = f"pods[{p}]"
        namespace, name, node_name = (
            _text(raw, "namespace", where, "default"),
            _text(raw, "name", where),
            _text(raw, "node", where),
        )
        node = by_name.get(node_name)
        if node is None:
            raise ValueError(f"{where}.node: {node_name!r} is not a demo node")
        cards = {c.index: c for c in node.cards}
        slices: list[Slice] = []
        containers = []
        for k, c in enumerate(_list(raw, "containers", where)):
            cw = f"{where}.containers[{k}]"
            cname, cores = _text(c, "name", cw), _int(c, "cores", cw, 0, FULL_CORES)
            indexes = c.get("cards")
            if not isinstance(indexes, list) or not indexes or len(set(indexes)) != len(indexes):
                raise ValueError(f"{cw}.cards: must be a non-empty list of distinct card indexes")
            gib = c.get("memoryGiB")
            for i in indexes:
                card = cards.get(i) if isinstance(i, int) else None
                if card is None:
                    raise ValueError(f"{cw}.cards: {i!r} is not a card of {node_name}")
                mib = card.memory_mib if gib is None else _int(c, "memoryGiB", cw, 1, card.memory_mib // 1024) * 1024
                used = usage.get((node_name, i), CardUsage())
                if not slice_fits(card, used, cores, mib):
                    raise ValueError(
                        f"{cw}: {cores}% / {mib} MiB does not fit card {i} of {node_name} "
                        f"({used.cores}% and {used.memory_mib} MiB taken)"
                    )
                usage[(node_name, i)] = used.plus(CardUsage(cores, mib, 1))
                slices.append(Slice(cname, i, card.uuid, cores, mib))
            containers.append(_container(cname, len(indexes), cores, gib))
        uid = f"demo-{namespace}-{name}"
        alloc = Allocation.build(namespace, name, uid, node_name, tuple(slices))
        pod = _pod(namespace, name, uid, containers, {ann.POD_ALLOCATION: ann.encode_allocation(alloc)})
        pod["spec"]["nodeName"] = node_name
        out.append((pod, alloc))
    return out


def waiting(doc: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The waiting pods of ``doc`` as pod JSON (what filter would be sent)."""
    doc = BUILTIN if doc is None else doc
    out = []
    for p, raw in enumerate(doc.get("waiting") or []):
        where = f"waiting[{p}]"
        namespace, name = _text(raw, "namespace", where, "default"), _text(raw, "name", where)
        containers = []
        for k, c in enumerate(_list(raw, "containers", where)):
            cw = f"{where}.containers[{k}]"
            containers.append(
                _container(
                    _text(c, "name", cw),
                    _int(c, "vgpus", cw, 1, 64),
                    _int(c, "cores", cw, 0, FULL_CORES),
                    c.get("memoryGiB"),
                )
            )
        annotations = {ann.GPU_MODELS: str(raw["gpuModels"])} if raw.get("gpuModels") else {}
        out.append(_pod(namespace, name, f"demo-{namespace}-{name}", containers, annotations))
    return out


def _container(name: str, vgpus: int, cores: int, gib: object) -> dict[str, Any]:
    limits = {res.VGPU_NUMBER: str(vgpus), res.VGPU_CORES: str(cores)}
    if gib is not None:
        limits[res.VGPU_MEMORY] = str(gib)
    return {"name": name, "image": "demo", "resources": {"limits": limits}}


def _pod(
    namespace: str, name: str, uid: str, containers: list[dict[str, Any]], annotations: dict[str, str]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": namespace, "name": name, "uid": uid}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": containers}}


def _text(raw: Any, key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default) if isinstance(raw, dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}.{key}: must be a non-empty string")
    return value


def _int(raw: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{where}.{key}: must be an integer from {lo} to {hi}")
    return value


def _list(raw: Any, key: str, where: str) -> list[Any]:
    value = raw.get(key) if isinstance(raw, dict) else None
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{where}.{key}: must be a non-empty list of mappings")
    return value
