"""The devices the plugin advertises: ``max_vgpus`` per card, named ``<card UUID>::<k>``.

The kubelet counts them as ``huawei.com/vgpu-number`` capacity (cards x max vGPUs per
card) and picks some for each container. Which ones it picks does not decide the
slice (the pod's allocation annotation does); it only keeps the kubelet's count right.
"""

from __future__ import annotations

from collections.abc import Sequence

from flexai_core.model import Card

from . import api_pb2 as pb

__all__ = ["HEALTHY", "UNHEALTHY", "card_of", "device_id", "devices", "preferred"]

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
SEP = "::"


def device_id(card_uuid: str, k: int) -> str:
    return f"{card_uuid}{SEP}{k}"


def card_of(device: str) -> str:
    return device.rsplit(SEP, 1)[0]


def devices(cards: Sequence[Card]) -> list[pb.Device]:
    out = []
    for c in cards:
        topology = pb.TopologyInfo(nodes=[pb.NUMANode(ID=c.numa)]) if c.numa is not None else None
        for k in range(c.max_vgpus):
            out.append(
                pb.Device(ID=device_id(c.uuid, k), health=HEALTHY if c.healthy else UNHEALTHY, topology=topology)
            )
    return out


def preferred(available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]:
    """``size`` devices, ``must_include`` first, then one per card, cards in turn
    (each vGPU of a container is on a different card, so the kubelet's picks should be too)."""
    chosen = list(dict.fromkeys(must_include))[:size]
    used = {card_of(d) for d in chosen}
    rest = [d for d in available if d not in chosen]
    for d in rest:
        if len(chosen) >= size:
            break
        if card_of(d) not in used:
            chosen.append(d)
            used.add(card_of(d))
    for d in rest:  # fewer cards than devices asked for: fill up with any
        if len(chosen) >= size:
            break
        if d not in chosen:
            chosen.append(d)
    return chosen
