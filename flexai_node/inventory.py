"""Where the agent learns what cards the node has: an interface and the file source.

A source answers ``read()`` with one ``CardReading`` per card: the card as the scheduler
sees it (``flexai_core.model.Card``, the one definition) plus live readings. Sources:

- ``nvml.NvmlInventory``  the real cards (NVML errors and XID events mark a card unhealthy)
- ``FileInventory``       a JSON or YAML file, re-read on every call (tests, kwok nodes)

A source never raises for one bad card: the card is reported unhealthy and the agent
keeps going. ``InventoryError`` means the source as a whole cannot answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from flexai_core.model import Card

__all__ = ["CardReading", "FileInventory", "InventoryError", "InventorySource"]


class InventoryError(Exception):
    """The source cannot list cards at all (no driver, unreadable file)."""


@dataclass(frozen=True, slots=True)
class CardReading:
    card: Card
    utilisation_pct: int | None = None  # None: not measured (file source without it, NVML error)
    memory_used_mib: int | None = None  # everything used on the card, ours included


class InventorySource(Protocol):
    def read(self) -> tuple[CardReading, ...]:
        """Cards in index order; raise InventoryError only when nothing can be listed."""

    def close(self) -> None: ...


class FileInventory:
    """Cards from a JSON or YAML file, in the node annotation's field names::

        cards:
          - {index: 0, uuid: GPU-0, model: NVIDIA H200, memoryMiB: 143771,
             numa: 0, healthy: true, utilisation: 12, memoryUsedMiB: 2048}

    Re-read on every ``read()``, so a test (or an operator on a kwok node) flips
    health by rewriting the file.
    """

    def __init__(self, path: Path, max_vgpus: int = 5) -> None:
        self._path = path
        self._max_vgpus = max_vgpus

    def read(self) -> tuple[CardReading, ...]:
        try:
            doc = yaml.safe_load(self._path.read_text())  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as e:
            raise InventoryError(f"inventory file {self._path}: {e}") from None
        items = doc.get("cards") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise InventoryError(f"inventory file {self._path}: needs a 'cards' list")
        readings = [self._reading(i, item) for i, item in enumerate(items)]
        indexes = [r.card.index for r in readings]
        if len(set(indexes)) != len(indexes):
            raise InventoryError(f"inventory file {self._path}: duplicate card index")
        return tuple(sorted(readings, key=lambda r: r.card.index))

    def close(self) -> None:
        pass

    def _reading(self, i: int, item: Any) -> CardReading:
        where = f"inventory file {self._path} cards[{i}]"
        if not isinstance(item, dict):
            raise InventoryError(f"{where}: must be a mapping")
        try:
            card = Card(
                index=int(item["index"]),
                uuid=str(item["uuid"]),
                model=str(item["model"]),
                memory_mib=int(item["memoryMiB"]),
                max_vgpus=int(item.get("maxVgpus", self._max_vgpus)),
                healthy=bool(item.get("healthy", True)),
                numa=None if item.get("numa") is None else int(item["numa"]),
            )
            util = item.get("utilisation")
            used = item.get("memoryUsedMiB")
            return CardReading(card, None if util is None else int(util), None if used is None else int(used))
        except (KeyError, TypeError, ValueError) as e:
            raise InventoryError(f"{where}: {e!r}") from None


def dumps(readings: tuple[CardReading, ...] | list[CardReading]) -> str:
    """The file format above, as JSON (tests and tools write inventories with it)."""
    cards = [
        {
            "index": r.card.index,
            "uuid": r.card.uuid,
            "model": r.card.model,
            "memoryMiB": r.card.memory_mib,
            "maxVgpus": r.card.max_vgpus,
            "numa": r.card.numa,
            "healthy": r.card.healthy,
            "utilisation": r.utilisation_pct,
            "memoryUsedMiB": r.memory_used_mib,
        }
        for r in readings
    ]
    return json.dumps({"cards": cards}, indent=1)
