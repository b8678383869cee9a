"""Inventory sources: the file source, and the NVML source over a fake pynvml."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flexai_node.inventory import CardReading, FileInventory, InventoryError, dumps
from flexai_node.nvml import NvmlError, NvmlInventory

from .fakes import CARDS


def test_file_inventory_reads_json_and_yaml_and_sees_edits(tmp_path: Path) -> None:
    path = tmp_path / "cards.json"
    path.write_text(dumps([CardReading(c, 10, 100) for c in CARDS]))
    assert [r.card for r in FileInventory(path).read()] == list(CARDS)
    path.write_text("cards:\n  - {index: 0, uuid: GPU-y, model: T4, memoryMiB: 15360, healthy: false}\n")
    (r,) = FileInventory(path, max_vgpus=3).read()
    assert (r.card.uuid, r.card.max_vgpus, r.card.healthy, r.memory_used_mib) == ("GPU-y", 3, False, None)


@pytest.mark.parametrize(
    "text, message",
    [
        ("cards: 3", "needs a 'cards' list"),
        ("cards: [{index: 0}]", r"cards\[0\]: KeyError\(.uuid.\)"),
        (
            "cards: [{index: 0, uuid: a, model: m, memoryMiB: 1}, {index: 0, uuid: b, model: m, memoryMiB: 1}]",
            "duplicate card index",
        ),
        ("{", "inventory file"),
    ],
    ids=["not-a-list", "missing-field", "duplicate", "not-yaml"],
)
def test_file_inventory_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cards.yaml"
    path.write_text(text)
    with pytest.raises(InventoryError, match=message):
        FileInventory(path).read()


def test_missing_file_is_an_inventory_error(tmp_path: Path) -> None:
    with pytest.raises(InventoryError):
        FileInventory(tmp_path / "nope.yaml").read()


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml:
    """The dozen pynvml functions the source uses, over two cards."""

    NVMLError = NVMLError
    NVML_ERROR_TIMEOUT = 10
    nvmlMemory_v2 = 0x02000028
    nvmlEventTypeXidCriticalError = 8

    def __init__(self) -> None:
        self.broken: set[int] = set()  # card indexes whose calls fail (GPU lost)
        self.lost: set[int] = set()  # ... even the UUID
        self.events: list[Any] = []
        self.event_served = threading.Event()

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def _check(self, h: int) -> None:
        if h in self.broken:
            raise NVMLError(15)

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        if h in self.lost:
            raise NVMLError(15)
        return f"GPU-{h}".encode()  # old pynvml returned bytes

    def nvmlDeviceGetName(self, h: int) -> str:
        self._check(h)
        return "NVIDIA H200"

    def nvmlDeviceGetMemoryInfo(self, h: int, version: int | None = None) -> Any:
        self._check(h)
        used = 1000 if version else 1500  # v2 leaves reserved memory out
        return SimpleNamespace(total=143771 << 20, used=used << 20)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self._check(h)
        return SimpleNamespace(gpu=37)

    def nvmlDeviceGetNumaNodeId(self, h: int) -> int:
        return h

    def nvmlEventSetCreate(self) -> str:
        return "set"

    def nvmlDeviceRegisterEvents(self, h: int, kinds: int, s: str) -> None: ...
    def nvmlEventSetFree(self, s: str) -> None: ...

    def nvmlEventSetWait_v2(self, s: str, timeout_ms: int) -> Any:
        if self.events:
            e = self.events.pop(0)
            if not self.events:
                self.event_served.set()
            return e
        raise NVMLError(self.NVML_ERROR_TIMEOUT)


def test_nvml_reads_cards() -> None:
    inv = NvmlInventory(max_vgpus=4, nvml=FakeNvml(), watch_xids=False)
    r0, r1 = inv.read()
    assert (r0.card.uuid, r0.card.model, r0.card.memory_mib, r0.card.numa, r0.card.max_vgpus) == (
        "GPU-0",
        "NVIDIA H200",
        143771,
        0,
        4,
    )
    assert (r1.utilisation_pct, r1.memory_used_mib, r1.card.healthy) == (37, 1000, True)


def test_nvml_error_marks_only_that_card_unhealthy() -> None:
    nvml = FakeNvml()
    inv = NvmlInventory(nvml=nvml, watch_xids=False)
    nvml.broken.add(1)
    r0, r1 = inv.read()
    assert (r0.card.healthy, r1.card.healthy, r1.card.uuid) == (True, False, "GPU-1")
    nvml.broken.clear()
    assert all(r.card.healthy for r in inv.read())  # NVML errors are per reading


def test_a_card_that_stops_answering_keeps_its_name_and_turns_unhealthy() -> None:
    nvml = FakeNvml()
    inv = NvmlInventory(nvml=nvml, watch_xids=False)
    before = inv.read()[1].card
    nvml.lost.add(1)
    after = inv.read()[1].card
    assert (after.uuid, after.memory_mib, after.healthy) == (before.uuid, before.memory_mib, False)


def test_critical_xid_marks_a_card_unhealthy_until_restart_but_application_xids_do_not() -> None:
    nvml = FakeNvml()
    nvml.events = [
        SimpleNamespace(device=0, eventType=8, eventData=13),  # application fault: ignored
        SimpleNamespace(device=1, eventType=8, eventData=79),  # fallen off the bus
    ]
    inv = NvmlInventory(nvml=nvml)
    try:
        assert nvml.event_served.wait(10)
        # The event thread records after it receives; read until it has (never a time assertion).
        for _ in range(1000):
            if inv.xid_failures():
                break
            threading.Event().wait(0.01)
        assert inv.xid_failures() == {"GPU-1": 79}
        assert [r.card.healthy for r in inv.read()] == [True, False]
    finally:
        inv.close()


def test_nvml_init_and_count_failures_are_inventory_errors_naming_the_nvml_error() -> None:
    class NoDriver(FakeNvml):
        def nvmlInit(self) -> None:
            raise NVMLError(9)  # NVML_ERROR_DRIVER_NOT_LOADED

    with pytest.raises(InventoryError, match="NVML init failed: NVML error 9"):
        NvmlInventory(nvml=NoDriver(), watch_xids=False)

    class NoCount(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:
            raise NVMLError(999)

    with pytest.raises(InventoryError, match="cannot count devices: NVML error 999"):
        NvmlInventory(nvml=NoCount(), watch_xids=False).read()


def test_nvml_errors_are_translated_with_their_code_and_nothing_else_is() -> None:
    inv = NvmlInventory(nvml=FakeNvml(), watch_xids=False)

    def lost() -> None:
        raise NVMLError(15)

    with pytest.raises(NvmlError) as caught:
        inv._call(lost)
    assert (caught.value.code, str(caught.value)) == (15, "NVML error 15")

    def bug() -> None:
        raise RuntimeError("not NVML")

    with pytest.raises(RuntimeError):  # a bug is not mistaken for an unhealthy card
        inv._call(bug)
