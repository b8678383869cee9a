"""The node inventory annotation: contents, when it is written, and what the scheduler reads back."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from flexai_core import annotations as ann
from flexai_node.inventory import CardReading
from flexai_node.pods import BoundPod
from flexai_node.reporter import Reporter, node_annotation

from .fakes import CARDS, FakeNodeApi, bound_pod, container, slice_on

A, B = CARDS
T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


def pods() -> list[BoundPod]:
    raw = [
        # 2 app containers on card A: 20+30 cores, 4+6 GiB; one of them also on B.
        bound_pod(
            "p",
            "u1",
            [container("a", 1, 20, 4), container("b", 2, 30, 6)],
            [slice_on(A, "a", 20, 4096), slice_on(A, "b", 30, 6144), slice_on(B, "b", 30, 6144)],
        ),
        # An init container holds its slice only before the app: the peak, not the sum, counts.
        bound_pod(
            "q",
            "u2",
            [container("main", 1, 10, 2)],
            [slice_on(B, "setup", 50, 8192, init=True), slice_on(B, "main", 10, 2048)],
            init_containers=[container("setup", 1, 50, 8)],
        ),
        # Deleting pods still hold theirs (containers run through the grace period) ...
        dict(
            bound_pod("leaving", "u4", [container("main", 1, 5, 1)], [slice_on(B, "main", 5, 1024)]),
            metadata={
                "namespace": "default",
                "name": "leaving",
                "uid": "u4",
                "deletionTimestamp": "2026-11-29T10:00:00Z",
                "annotations": bound_pod("leaving", "u4", [], [slice_on(B, "main", 5, 1024)])["metadata"][
                    "annotations"
                ],
            },
        ),
        # ... finished pods hold nothing.
        dict(
            bound_pod("done", "u3", [container("main", 1, 100, 1)], [slice_on(A, "main", 100, 1024)]),
            status={"phase": "Succeeded"},
        ),
    ]
    parsed = [BoundPod.parse(p, "gpu-1") for p in raw]
    return [p for p in parsed if p is not None]


def decode(text: str) -> dict[int, dict[str, object]]:
    import json

    return {c["index"]: c for c in json.loads(text)["cards"]}


def test_annotation_carries_allocations_and_memory_used_by_others() -> None:
    readings = [CardReading(A, 40, 15000), CardReading(B, 0, 6144 + 8192 + 1024 + 500)]
    text = node_annotation(readings, pods(), T0)
    cards = decode(text)
    # A: 20+30 cores, 4096+6144 MiB held; NVML says 15000 used -> 15000-10240 by others.
    assert (cards[0]["allocatedCores"], cards[0]["allocatedMiB"], cards[0]["usedOutsideMiB"]) == (50, 10240, 4760)
    # B: p holds 30/6144; q's peak is its init phase 50/8192 (not 60/10240); leaving 5/1024;
    # others 500.
    assert (cards[1]["allocatedCores"], cards[1]["allocatedMiB"], cards[1]["usedOutsideMiB"]) == (85, 15360, 500)
    # The scheduler's own decoder reads it back (the one format), heartbeat in UTC.
    inv = ann.decode_inventory("gpu-1", text)
    assert inv.heartbeat == T0 and [c.used_outside_mib for c in inv.cards] == [4760, 500]
    assert inv.cards[1].numa == 1


def test_measured_usage_of_our_containers_beats_their_allocation() -> None:
    readings = [CardReading(A, 40, 15000), CardReading(B, 0, 0)]
    cards = decode(node_annotation(readings, pods(), T0, {A.uuid: 1000}))
    assert cards[0]["usedOutsideMiB"] == 14000
    assert cards[1]["usedOutsideMiB"] == 0  # never negative


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_written_on_change_and_every_30s_otherwise() -> None:
    api, clock = FakeNodeApi(), Clock()
    r = Reporter("gpu-1", api, every_s=30, clock=lambda: T0, monotonic=clock)
    readings = [CardReading(A, 0, 0), CardReading(B, 0, 0)]
    assert r.report(readings, [])  # first: always
    clock.t = 10
    assert not r.report(readings, [])  # same content, heartbeat not due
    assert r.report([CardReading(A, 0, 0), CardReading(replace(B, healthy=False), 0, 0)], [])  # changed
    clock.t = 39
    assert not r.report([CardReading(A, 0, 0), CardReading(replace(B, healthy=False), 0, 0)], [])
    clock.t = 40
    assert r.report([CardReading(A, 0, 0), CardReading(replace(B, healthy=False), 0, 0)], [])  # heartbeat
    assert api.patches == 3
    # Memory used by others: a small move waits for the heartbeat, a large one is written now.
    unhealthy = replace(B, healthy=False)
    assert not r.report([CardReading(A, 0, 500), CardReading(unhealthy, 0, 0)], [])
    assert r.report([CardReading(A, 0, 2048), CardReading(unhealthy, 0, 0)], [])
    assert api.patches == 4
    inv = ann.decode_inventory("gpu-1", api.node_annotations["gpu-1"][ann.NODE_INVENTORY])
    assert [c.healthy for c in inv.cards] == [True, False]


def test_a_failed_patch_is_retried_next_time() -> None:
    from flexai_node.nodeapi import KubeError

    api = FakeNodeApi()
    r = Reporter("gpu-1", api, clock=lambda: T0, monotonic=Clock())
    api.fail = KubeError("boom")
    with pytest.raises(KubeError):
        r.report([CardReading(A)], [])
    assert r.report([CardReading(A)], [])
