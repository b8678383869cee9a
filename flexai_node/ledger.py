"""What the device plugin has handed out: the record that keeps a slice from being given twice.

One entry per admitted container (pod UID + container name) and one per pod whose
admission was refused (so a refused pod never shadows the next one while the kubelet
has not yet marked it Failed). Kept in a JSON file in the agent's state directory,
rewritten atomically (write, fsync, rename) on every change, so an agent restart
neither forgets an admission nor re-admits a container.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import NodeError

__all__ = ["Admitted", "Ledger", "LedgerError"]

VERSION = 1


@dataclass(frozen=True, slots=True)
class Admitted:
    uid: str
    container: str
    namespace: str
    pod: str
    devices: tuple[str, ...]  # the kubelet's device IDs for this container
    cards: tuple[str, ...]  # card UUIDs of its slices
    at: str  # UTC time of the Allocate


class Ledger:
    def __init__(self, path: Path | None) -> None:
        """``path`` None keeps the record in memory only (tests)."""
        self._path = path
        self._mu = threading.Lock()
        self._admitted: dict[tuple[str, str], Admitted] = {}
        self._refused: dict[str, str] = {}  # pod UID -> message
        if path is not None and path.exists():
            self._load(path)

    def is_admitted(self, uid: str, container: str) -> bool:
        with self._mu:
            return (uid, container) in self._admitted

    def is_refused(self, uid: str) -> bool:
        with self._mu:
            return uid in self._refused

    def admitted(self) -> list[Admitted]:
        with self._mu:
            return list(self._admitted.values())

    def admit(self, entries: Iterable[Admitted]) -> None:
        with self._mu:
            for e in entries:
                self._admitted[(e.uid, e.container)] = e
            self._save()

    def refuse(self, uid: str, message: str) -> None:
        with self._mu:
            self._refused[uid] = message
            self._save()

    def prune(self, live_uids: Iterable[str]) -> list[str]:
        """Forget pods that are gone; returns the UIDs forgotten."""
        live = set(live_uids)
        with self._mu:
            gone = {uid for uid, _ in self._admitted if uid not in live} | (set(self._refused) - live)
            if gone:
                self._admitted = {k: v for k, v in self._admitted.items() if k[0] not in gone}
                self._refused = {k: v for k, v in self._refused.items() if k not in gone}
                self._save()
        return sorted(gone)

    def _save(self) -> None:
        if self._path is None:
            return
        doc = {
            "v": VERSION,
            "admitted": [asdict(a) for a in self._admitted.values()],
            "refused": self._refused,
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(self._path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def _load(self, path: Path) -> None:
        try:
            doc: Any = json.loads(path.read_text())
            if doc.get("v") != VERSION:
                raise ValueError(f"unsupported version {doc.get('v')!r}")
            for item in doc["admitted"]:
                a = Admitted(**{**item, "devices": tuple(item["devices"]), "cards": tuple(item["cards"])})
                self._admitted[(a.uid, a.container)] = a
            self._refused = {str(k): str(v) for k, v in doc["refused"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            # Starting empty could hand a slice out twice: refuse, and say how to recover.
            raise LedgerError(f"{path}: unreadable admission record ({e}); move it aside to start afresh") from None


class LedgerError(NodeError):
    """The record on disk cannot be read."""
