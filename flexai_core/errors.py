"""The root of every error ``flexai_core`` raises: ``CoreError``.

Each error also keeps the built-in class it always had (``ValueError`` for bad input), so
callers catching that still catch it; ``except CoreError`` catches all of the package's.
"""

from __future__ import annotations


class CoreError(Exception):
    """An error raised by ``flexai_core`` (bad input it was asked to read)."""
