"""The embedded demo cluster: a built-in inventory, or one read from a YAML/JSON file.

File format (``flexai-sched serve --demo-inventory FILE``)::

    nodes:
      - name: gpu-a
        cards: [{model: NVIDIA H200, memoryMiB: 143771, count: 8}]
      - name: gpu-b
        cards: [{model: Tesla T4, memoryMiB: 15360, count: 2, maxVgpus: 4}]
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from .model import Card, NodeInventory

BUILTIN: dict[str, Any] = {
    "nodes": [
        {"name": "gpu-h200-a", "cards": [{"model": "NVIDIA H200", "memoryMiB": 143771, "count": 8}]},
        {"name": "gpu-h200-b", "cards": [{"model": "NVIDIA H200", "memoryMiB": 143771, "count": 8}]},
        {"name": "gpu-a100", "cards": [{"model": "NVIDIA A100-SXM4-80GB", "memoryMiB": 81920, "count": 4}]},
        {"name": "gpu-t4", "cards": [{"model": "Tesla T4", "memoryMiB": 15360, "count": 2}]},
    ]
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
                    Card(i, f"GPU-{name}-{i}", str(group.get("model", "GPU")), mem, int(group.get("maxVgpus", max_vgpus)))
                )
        nodes.append(NodeInventory(name, tuple(cards), now))
    return nodes


def load_file(path: str | Path, max_vgpus: int = 5) -> list[NodeInventory]:
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: must be a mapping with a 'nodes' list")
    return inventory(doc, max_vgpus)
