"""Host paths a tenant can reach, handled without trusting it.

Every per-container directory holds a directory the container writes to (the hook's
region directory, mounted read-write): whatever is in it may be a link, a FIFO or a
device the tenant planted, and the agent runs as root. So the agent:

- never follows a symbolic link: paths are opened one component at a time, each
  ``O_NOFOLLOW`` relative to the directory before (what openat2's RESOLVE_NO_SYMLINKS
  does, on any kernel);
- looks at a file through ``O_PATH`` (no open side effects) and opens it only once it
  is the type it expects, owned by whom it expects;
- reads what it reads read-only and changes modes through the descriptor it checked.

The region file itself is read by the shim (``flexai_region_snapshot``), which applies
the same rules in C.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import NodeError

__all__ = ["UnsafePath", "chmod_dir", "ensure_dir", "read_file"]

_NOFOLLOW_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class UnsafePath(NodeError, OSError):
    """A path that is a link, of the wrong type, or owned by someone else."""


def _walk(path: Path, create: bool = False) -> int:
    """O_PATH descriptor of the directory ``path``, no link followed on the way; missing
    directories made (mode 0755) when ``create``."""
    if not path.is_absolute():
        path = Path.cwd() / path
    fd = os.open("/", _NOFOLLOW_DIR)
    try:
        for part in path.parts[1:]:
            try:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                nxt = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
            except OSError as e:
                raise UnsafePath(e.errno, f"{path}: {part!r}: {e.strerror} (links are not followed)") from e
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(st: os.stat_result, path: Path, kind: int, owner: int | None) -> None:
    if stat.S_IFMT(st.st_mode) != kind:
        raise UnsafePath(f"{path}: not a {'directory' if kind == stat.S_IFDIR else 'regular file'}")
    if owner is not None and st.st_uid != owner:
        raise UnsafePath(f"{path}: owned by uid {st.st_uid}, expected {owner}")
    if kind == stat.S_IFREG and st.st_nlink != 1:
        raise UnsafePath(f"{path}: has {st.st_nlink} links")


def ensure_dir(path: Path, owner: int | None = None) -> None:
    """``path`` and its missing parents as directories; every component a real directory, the
    last one owned by ``owner`` (default: this process)."""
    fd = _walk(path, create=True)
    try:
        _check(os.fstat(fd), path, stat.S_IFDIR, os.geteuid() if owner is None else owner)
    finally:
        os.close(fd)


def chmod_dir(path: Path, mode: int) -> None:
    """chmod the directory ``path`` (ours, reached without links), through the checked descriptor."""
    fd = _walk(path)
    try:
        _check(os.fstat(fd), path, stat.S_IFDIR, os.geteuid())
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchmod(rfd, mode)
        finally:
            os.close(rfd)
    finally:
        os.close(fd)


def read_file(path: Path, owner: int | None = None, limit: int = 1 << 20) -> bytes:
    """The content of the regular file ``path`` (at most ``limit`` bytes), reached without links,
    owned by ``owner`` (default: this process), opened read-only."""
    dfd = _walk(path.parent)
    try:
        try:
            pfd = os.open(path.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as e:
            raise UnsafePath(e.errno, f"{path}: {e.strerror}") from e
    finally:
        os.close(dfd)
    try:
        _check(os.fstat(pfd), path, stat.S_IFREG, os.geteuid() if owner is None else owner)
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(pfd)
    try:
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
