"""Annotation keys and their encodings: the one place that defines them.

Node (written by flexai_node every 30 s and on change)::

    vgpu.flexai.io/inventory: {"v": 1, "heartbeat": "2026-11-29T09:00:00Z",
      "cards": [{"index": 0, "uuid": "GPU-...", "model": "NVIDIA H200", "memoryMiB": 143771,
                 "maxVgpus": 5, "healthy": true, "numa": 0, "usedOutsideMiB": 0,
                 "allocatedCores": 20, "allocatedMiB": 3072}]}

``allocatedCores``/``allocatedMiB`` are informational (what the agent sees on the card);
the scheduler counts allocations from pods, never from these.

Pod (written by the extender at bind, read back by the Kubernetes backend and the
device plugin)::

    vgpu.flexai.io/allocation: {"v": 1, "node": "gpu-1",
      "slices": [{"container": "main", "card": 0, "uuid": "GPU-...", "cores": 20,
                  "memoryMiB": 3072, "init": false}]}

Only the scheduler may set or change it, and nobody once the pod is bound (the chart's
admission policy); the agent and the backend also check it against the pod's request
(``allocation_check``).

Pod selectors and policy overrides (set by users)::

    vgpu.flexai.io/gpu-models: "NVIDIA H200,NVIDIA A100"    only these models
    vgpu.flexai.io/gpu-models-exclude: "Tesla T4"
    vgpu.flexai.io/gpu-uuids: "GPU-a,GPU-b"                  only these cards
    vgpu.flexai.io/gpu-uuids-exclude: "GPU-c"
    vgpu.flexai.io/node-policy: binpack | spread | fragmentation
    vgpu.flexai.io/card-policy: binpack | spread | fragmentation

Decoders raise ``EncodingError`` naming the key and the field.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final

from .model import Allocation, Card, NodeInventory, Slice

PREFIX: Final = "vgpu.flexai.io/"
NODE_INVENTORY: Final = PREFIX + "inventory"
POD_ALLOCATION: Final = PREFIX + "allocation"
GPU_MODELS: Final = PREFIX + "gpu-models"
GPU_MODELS_EXCLUDE: Final = PREFIX + "gpu-models-exclude"
GPU_UUIDS: Final = PREFIX + "gpu-uuids"
GPU_UUIDS_EXCLUDE: Final = PREFIX + "gpu-uuids-exclude"
NODE_POLICY: Final = PREFIX + "node-policy"
CARD_POLICY: Final = PREFIX + "card-policy"
# Who may write which pod annotation under PREFIX. Users set these on their pods; every
# other PREFIX key on a pod is the scheduler's, and the chart's admission policy
# (allocation-write-policy.yaml, which spells this list) refuses it from anyone else.
USER_POD_ANNOTATIONS: Final = (GPU_MODELS, GPU_MODELS_EXCLUDE, GPU_UUIDS, GPU_UUIDS_EXCLUDE, NODE_POLICY, CARD_POLICY)
SCHEDULER_POD_ANNOTATIONS: Final = (POD_ALLOCATION,)
# Label the chart's DaemonSet selects GPU nodes by.
GPU_NODE_LABEL: Final = PREFIX + "gpu-node"
# Label of the ConfigMaps (in the scheduler's namespace) that declare vGPU quotas (flexai_sched.quota).
QUOTA_LABEL: Final = PREFIX + "quota"

VERSION: Final = 1


class EncodingError(ValueError):
    """An annotation could not be decoded; the message names the key and the field."""


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    # Always UTC: a naive timestamp is read as UTC, never as local time.
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def encode_inventory(
    cards: tuple[Card, ...] | list[Card],
    heartbeat: datetime,
    allocated: dict[int, tuple[int, int]] | None = None,
) -> str:
    """Node inventory JSON. ``allocated`` maps card index -> (cores, MiB) for display."""
    out = []
    for c in cards:
        item: dict[str, Any] = {
            "index": c.index,
            "uuid": c.uuid,
            "model": c.model,
            "memoryMiB": c.memory_mib,
            "maxVgpus": c.max_vgpus,
            "healthy": c.healthy,
            "numa": c.numa,
            "usedOutsideMiB": c.used_outside_mib,
        }
        if allocated is not None:
            cores, mib = allocated.get(c.index, (0, 0))
            item["allocatedCores"], item["allocatedMiB"] = cores, mib
        out.append(item)
    return json.dumps({"v": VERSION, "heartbeat": format_time(heartbeat), "cards": out}, separators=(",", ":"))


def decode_inventory(node_name: str, text: str) -> NodeInventory:
    doc = _load(NODE_INVENTORY, text)
    cards = []
    for i, item in enumerate(_field(doc, "cards", list, NODE_INVENTORY)):
        where = f"{NODE_INVENTORY} cards[{i}]"
        if not isinstance(item, dict):
            raise EncodingError(f"{where}: must be an object")
        numa = item.get("numa")
        cards.append(
            Card(
                index=_field(item, "index", int, where),
                uuid=_field(item, "uuid", str, where),
                model=_field(item, "model", str, where),
                memory_mib=_positive(_field(item, "memoryMiB", int, where), where, "memoryMiB"),
                max_vgpus=_positive(item.get("maxVgpus", 5), where, "maxVgpus"),
                healthy=bool(item.get("healthy", True)),
                numa=numa if isinstance(numa, int) else None,
                used_outside_mib=_count(item.get("usedOutsideMiB"), where, "usedOutsideMiB"),
            )
        )
    indexes = [c.index for c in cards]
    if len(set(indexes)) != len(indexes):
        raise EncodingError(f"{NODE_INVENTORY} cards: duplicate card index")
    heartbeat = doc.get("heartbeat")
    try:
        hb = parse_time(heartbeat) if isinstance(heartbeat, str) else None
    except ValueError as e:
        raise EncodingError(f"{NODE_INVENTORY} heartbeat: not an ISO-8601 time ({e})") from None
    return NodeInventory(node_name, tuple(sorted(cards, key=lambda c: c.index)), hb)


def encode_allocation(a: Allocation) -> str:
    slices = [
        {
            "container": s.container,
            "card": s.card_index,
            "uuid": s.card_uuid,
            "cores": s.cores,
            "memoryMiB": s.memory_mib,
            "init": s.init,
        }
        for s in a.slices
    ]
    return json.dumps({"v": VERSION, "node": a.node, "slices": slices}, separators=(",", ":"))


def decode_allocation(namespace: str, name: str, uid: str, text: str) -> Allocation:
    doc = _load(POD_ALLOCATION, text)
    node = _field(doc, "node", str, POD_ALLOCATION)
    slices = []
    for i, item in enumerate(_field(doc, "slices", list, POD_ALLOCATION)):
        where = f"{POD_ALLOCATION} slices[{i}]"
        if not isinstance(item, dict):
            raise EncodingError(f"{where}: must be an object")
        slices.append(
            Slice(
                container=_field(item, "container", str, where),
                card_index=_field(item, "card", int, where),
                card_uuid=_field(item, "uuid", str, where),
                cores=_field(item, "cores", int, where),
                memory_mib=_field(item, "memoryMiB", int, where),
                init=bool(item.get("init", False)),
            )
        )
    return Allocation.build(namespace, name, uid, node, tuple(slices))


def split_list(value: str | None) -> frozenset[str]:
    """Comma-separated annotation value -> set of trimmed, non-empty items."""
    if not value:
        return frozenset()
    return frozenset(x.strip() for x in value.split(",") if x.strip())


def _load(key: str, text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, TypeError, RecursionError) as e:  # ValueError: also a number too long to read
        raise EncodingError(f"{key}: not valid JSON ({str(e)[:200]})") from None
    if not isinstance(doc, dict):
        raise EncodingError(f"{key}: must be a JSON object")
    v = doc.get("v")
    if v != VERSION:
        raise EncodingError(f"{key}: unsupported version {v!r} (this build reads v{VERSION})")
    return doc


def _field(doc: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = doc.get(name)
    # bool is an int in Python; a card index of `true` is still a mistake.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EncodingError(f"{where}: field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def _positive(value: object, where: str, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise EncodingError(f"{where}: field {name!r} must be a positive integer, got {value!r}")
    return value


def _count(value: object, where: str, name: str) -> int:
    """A non-negative integer field that may be absent (0)."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise EncodingError(f"{where}: field {name!r} must be a non-negative integer, got {type(value).__name__}")
    return max(0, value)
