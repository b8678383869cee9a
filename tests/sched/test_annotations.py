"""The versioned annotation encodings round-trip, and bad ones name key and field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flexai_core import annotations as ann
from flexai_core.model import Allocation, Card, CardUsage, Slice


def test_inventory_round_trip_in_utc() -> None:
    cards = (Card(0, "GPU-a", "NVIDIA H200", 143771, 5, True, 0, 512), Card(1, "GPU-b", "NVIDIA H200", 143771))
    text = ann.encode_inventory(cards, datetime(2026, 11, 29, 9, 0, tzinfo=UTC), {0: (20, 3072)})
    assert '"heartbeat":"2026-11-29T09:00:00Z"' in text and '"allocatedCores":20' in text
    inv = ann.decode_inventory("n1", text)
    assert inv.cards == cards
    assert inv.heartbeat == datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def test_naive_heartbeat_is_read_as_utc_not_local_time() -> None:
    inv = ann.decode_inventory("n", '{"v":1,"heartbeat":"2026-11-29T09:00:00","cards":[]}')
    assert inv.heartbeat == datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def test_allocation_round_trip_and_peak_usage() -> None:
    a = Allocation.build(
        "ns",
        "p",
        "u",
        "n1",
        (
            Slice("main", 0, "GPU-a", 30, 1024),
            Slice("side", 0, "GPU-a", 20, 512),
            Slice("init", 0, "GPU-a", 90, 100, True),
        ),
    )
    b = ann.decode_allocation("ns", "p", "u", ann.encode_allocation(a))
    assert b == a
    # app phase: 30+20 cores, 1536 MiB, 2 slices; init phase: 90 cores, 100 MiB, 1 slice -> peak
    assert b.card_usage == {0: CardUsage(90, 1536, 2)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "vgpu.flexai.io/inventory: not valid JSON"),
        ('{"v":2,"cards":[]}', "unsupported version 2"),
        (
            '{"v":1,"cards":[{"index":0,"uuid":"g","model":"m","memoryMiB":0}]}',
            "cards[0]: field 'memoryMiB' must be a positive",
        ),
        ('{"v":1,"cards":[{"index":true,"uuid":"g","model":"m","memoryMiB":1}]}', "field 'index' must be int"),
        (
            '{"v":1,"cards":[{"index":0,"uuid":"g","model":"m","memoryMiB":1},{"index":0,"uuid":"h","model":"m","memoryMiB":1}]}',
            "duplicate card index",
        ),
        ('{"v":1,"heartbeat":"yesterday","cards":[]}', "heartbeat: not an ISO-8601 time"),
        (
            '{"v":1,"cards":[{"index":0,"uuid":"g","model":"m","memoryMiB":1,"usedOutsideMiB":"abc"}]}',
            "cards[0]: field 'usedOutsideMiB' must be a non-negative integer, got str",
        ),
        (
            '{"v":1,"cards":[{"index":0,"uuid":"g","model":"m","memoryMiB":1,"usedOutsideMiB":[1]}]}',
            "field 'usedOutsideMiB' must be a non-negative integer, got list",
        ),
        ('{"v":1,"cards":[' + "1" * 5000 + "]}", "vgpu.flexai.io/inventory: not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "vgpu.flexai.io/inventory: not valid JSON"),
    ],
)
def test_bad_inventory(text: str, message: str) -> None:
    with pytest.raises(ann.EncodingError) as e:
        ann.decode_inventory("n", text)
    assert message in str(e.value)


def test_bad_allocation_names_the_field() -> None:
    with pytest.raises(ann.EncodingError, match=r"slices\[0\]: field 'cores' must be int"):
        ann.decode_allocation(
            "ns", "p", "u", '{"v":1,"node":"n","slices":[{"container":"c","card":0,"uuid":"g","memoryMiB":1}]}'
        )


def test_every_pod_annotation_is_the_users_or_the_schedulers() -> None:
    # The chart's allocation-write policy lets users write USER_POD_ANNOTATIONS only: a new
    # pod key must be put in one list or the other (the policy spells the user list).
    keys = {v for k, v in vars(ann).items() if k.isupper() and isinstance(v, str) and v.startswith(ann.PREFIX)}
    on_pods = keys - {ann.PREFIX, ann.NODE_INVENTORY, ann.GPU_NODE_LABEL, ann.QUOTA_LABEL}
    assert set(ann.USER_POD_ANNOTATIONS) | set(ann.SCHEDULER_POD_ANNOTATIONS) == on_pods
    assert not set(ann.USER_POD_ANNOTATIONS) & set(ann.SCHEDULER_POD_ANNOTATIONS)
