"""The root of every error ``flexai_node`` raises: ``NodeError``.

Errors keep the built-in class they always had where callers catch it (``OSError`` for an
unsafe path, ``RuntimeError`` for protoc); ``except NodeError`` catches all of the package's.
Standard library only: ``gpu-monitor`` runs on a bare Python.
"""

from __future__ import annotations


class NodeError(Exception):
    """An error raised by ``flexai_node``."""
