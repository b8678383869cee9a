"""The root of every error ``flexai_sched`` raises (``SchedError``), and why a bind failed
(``BindFailure``), as a value the metrics and the logs use.

Errors keep the built-in class they always had where callers catch it (``ValueError`` for
an invalid quota or trace file); ``except SchedError`` catches all of the package's.
"""

from __future__ import annotations

from enum import StrEnum


class SchedError(Exception):
    """An error raised by ``flexai_sched``."""


class BindFailure(StrEnum):
    """Why a bind failed: the ``reason`` label of ``flexai_bind_failures_total``."""

    CONFLICT = "conflict"  # another bind took the slice, or the quota, between choice and assume
    NO_FIT = "no_fit"  # the pod does not fit the node's cards now
    POD_GONE = "pod_gone"  # the pod is not there (deleted, or recreated under another UID)
    DUPLICATE = "duplicate"  # the pod is bound already, or a bind of it is in progress
    INVALID_REQUEST = "invalid_request"  # the pod's vGPU request is invalid
    UNKNOWN_NODE = "unknown_node"  # the node reports no vGPU inventory
    QUOTA = "quota"  # the namespace's vGPU quota would be exceeded
    BACKEND = "backend"  # the apiserver refused or did not answer the Binding
    INTERNAL = "internal"  # anything else (a bug): the answer is an error, never a 500
