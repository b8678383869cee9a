"""calibration.RefClocks: which clock each card's vGPUs get, the cache, and retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexai_node.calibration import RETRY_S, RefClocks, parse_mode
from flexai_node.hook_shim import Calibration, CalibrationError

A, B = "GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000"


def cal(mhz: int) -> Calibration:
    return Calibration(sm_clock_mhz=mhz, max_sm_clock_mhz=1980, samples=200, kernel="mma", power_mw=699000,
                       power_limit_mw=700000, burst_ms=4000.0)


class FakeCards:
    """``measure`` for RefClocks: per UUID a clock, or an error (busy or not)."""

    def __init__(self, answers: dict[str, int | CalibrationError]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, uuid: str) -> Calibration:
        self.calls.append(uuid)
        a = self.answers[uuid]
        if isinstance(a, CalibrationError):
            raise a
        return cal(a)


@pytest.mark.parametrize("text,mode", [("auto", "auto"), (" AUTO ", "auto"), ("off", "off"), ("0", "off"),
                                       ("1455", 1455)], ids=["auto", "auto-spaced", "off", "zero", "mhz"])
def test_parse_mode(text: str, mode: str | int) -> None:
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", ["-5", "50", "20000", "fast", ""])
def test_parse_mode_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="ref clock"):
        parse_mode(text)


def test_auto_measures_each_card_once_and_caches(tmp_path: Path) -> None:
    cache = tmp_path / "ref-clocks.json"
    cards = FakeCards({A: 1455, B: 1755})
    clocks = RefClocks("auto", cache, cards)
    assert clocks.get(A) == 0  # not measured yet: shares of time
    assert clocks.calibrate_missing([A, B]) == {A: 1455, B: 1755}
    assert (clocks.get(A), clocks.get(B)) == (1455, 1755)
    assert clocks.calibrate_missing([A, B]) == {} and cards.calls == [A, B]
    assert json.loads(cache.read_text()) == {"cards": {A: {"sm_clock_mhz": 1455}, B: {"sm_clock_mhz": 1755}}}
    # A restarted agent reads the cache and measures nothing.
    again = FakeCards({})
    restarted = RefClocks("auto", cache, again)
    assert restarted.calibrate_missing([A, B]) == {} and again.calls == []
    assert restarted.get(B) == 1755


def test_busy_card_is_tried_again_later(tmp_path: Path) -> None:
    now = [1000.0]
    cards = FakeCards({A: CalibrationError("busy", busy=True)})
    clocks = RefClocks("auto", tmp_path / "c.json", cards, clock=lambda: now[0])
    clocks.calibrate_missing([A])
    clocks.calibrate_missing([A])  # too soon
    assert cards.calls == [A] and clocks.get(A) == 0
    now[0] += RETRY_S
    cards.answers[A] = 1500
    assert clocks.calibrate_missing([A]) == {A: 1500}
    assert cards.calls == [A, A]


def test_a_failed_card_is_not_retried_and_implausible_figures_are_dropped(tmp_path: Path) -> None:
    now = [0.0]
    cards = FakeCards({A: CalibrationError("no driver"), B: 20})
    clocks = RefClocks("auto", tmp_path / "c.json", cards, clock=lambda: now[0])
    assert clocks.calibrate_missing([A, B]) == {}
    now[0] += 10 * RETRY_S
    clocks.calibrate_missing([A, B])
    assert cards.calls == [A, B]
    assert (clocks.get(A), clocks.get(B)) == (0, 0)


@pytest.mark.parametrize("mode,expect", [("off", 0), (1485, 1485)], ids=["off", "fixed"])
def test_off_and_fixed_measure_nothing(tmp_path: Path, mode: str | int, expect: int) -> None:
    cards = FakeCards({A: 1455})
    clocks = RefClocks(mode, tmp_path / "c.json", cards)
    assert clocks.calibrate_missing([A]) == {} and cards.calls == []
    assert clocks.get(A) == expect


@pytest.mark.parametrize("text", ["not json", '{"cards": []}', '{"cards": {"GPU-a": {"sm_clock_mhz": 99999}}}',
                                  '{"cards": {"GPU-a": {"sm_clock_mhz": "1455"}}}', "[1, 2]"],
                         ids=["garbage", "list", "out-of-range", "string", "top-list"])
def test_bad_cache_is_measured_again(tmp_path: Path, text: str) -> None:
    cache = tmp_path / "c.json"
    cache.write_text(text)
    cards = FakeCards({"GPU-a": 1455})
    clocks = RefClocks("auto", cache, cards)
    assert clocks.get("GPU-a") == 0
    assert clocks.calibrate_missing(["GPU-a"]) == {"GPU-a": 1455}
