"""Per-container directories on the host: the hook's config and shared accounting region.

``<root>/<pod UID>/<container>/`` is created when the container is admitted; what goes
in it and what of it is mounted is the hook's business (``hook.files``). A pod's
directories are removed once the pod is gone from the API server (``prune``), not when
its containers stop: a restarted container keeps its accounting.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from .hostfs import ensure_dir

__all__ = ["Workdirs"]

# UIDs and container names are DNS-1123 labels; anything else must not become a path.
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class Workdirs:
    def __init__(self, root: Path) -> None:
        # The root is the agent's own setting (it may sit below a link such as /var/run -> /run):
        # resolved once here; below it, where tenants' directories are, no link is ever followed.
        self.root = root.resolve()

    def path(self, uid: str, container: str) -> Path:
        for part in (uid, container):
            if not _SAFE.match(part) or part in (".", ".."):
                raise ValueError(f"unsafe name for a directory: {part!r}")
        return self.root / uid / container

    def create(self, uid: str, container: str) -> Path:
        """The directory, made if missing; raises ``hostfs.UnsafePath`` if some component is a link
        or it is not this agent's."""
        d = self.path(uid, container)
        ensure_dir(d)
        return d

    def pods(self) -> list[str]:
        """UIDs that have directories."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def containers(self) -> list[tuple[str, str, Path]]:
        """(pod UID, container, directory) for every per-container directory."""
        return [(uid, c.name, c) for uid in self.pods() for c in sorted((self.root / uid).iterdir()) if c.is_dir()]

    def prune(self, live_uids: Iterable[str]) -> list[str]:
        """Remove the directories of pods not in ``live_uids``; returns the UIDs removed."""
        live = set(live_uids)
        gone = [uid for uid in self.pods() if uid not in live]
        for uid in gone:
            # The tree holds what tenants wrote (links included): on Linux rmtree works on
            # descriptors and never follows a link out of it (shutil.rmtree.avoids_symlink_attacks).
            shutil.rmtree(self.root / uid, ignore_errors=True)
        return gone
