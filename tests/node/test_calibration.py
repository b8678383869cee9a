"""calibration.RefClocks: which clock each card's vGPUs get, the cache, and retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexai_node.hook.calibration import CACHE_VERSION, RETRY_S, RefClocks, figures_of, parse_mode
from flexai_node.hook.config import CardFigures
from flexai_node.hook.shim import Calibration, CalibrationError

A, B = "GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000"


CURVE = (1210, 1160, 1140, 1110, 1040)


def cal(mhz: int, curve: tuple[int, ...] = CURVE, idle: int = 120000, top: int = 1980, gap: int = 0) -> Calibration:
    return Calibration(
        sm_clock_mhz=mhz,
        max_sm_clock_mhz=top,
        samples=200,
        kernel="mma",
        power_mw=699000,
        power_limit_mw=700000,
        burst_ms=4000.0,
        idle_power_mw=idle,
        speedup_pm=curve,
        gap_power_mw=gap,
    )


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


@pytest.mark.parametrize(
    "text,mode",
    [("auto", "auto"), (" AUTO ", "auto"), ("off", "off"), ("0", "off"), ("1455", 1455)],
    ids=["auto", "auto-spaced", "off", "zero", "mhz"],
)
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
    assert clocks.figures(A) == CardFigures(1455, CURVE, 120000)
    assert json.loads(cache.read_text())["cards"][B] == {
        "sm_clock_mhz": 1755,
        "speedup_pm": list(CURVE),
        "idle_power_mw": 120000,
        "gap_power_mw": 0,
    }
    # A restarted agent reads the cache and measures nothing.
    again = FakeCards({})
    restarted = RefClocks("auto", cache, again)
    assert restarted.calibrate_missing([A, B]) == {} and again.calls == []
    assert restarted.get(B) == 1755 and restarted.figures(B) == CardFigures(1755, CURVE, 120000)


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


V = f'{{"version": {CACHE_VERSION}, '  # a versioned document's opening


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        V + '"cards": []}',
        V + '"cards": {"GPU-a": {"sm_clock_mhz": 99999}}}',
        V + '"cards": {"GPU-a": {"sm_clock_mhz": "1455"}}}',
        "[1, 2]",
        V + '"cards": {"GPU-a": {"sm_clock_mhz": 1455, "speedup_pm": [1200, 900, 1, 2, 3]}}}',
        V + '"cards": {"GPU-a": {"sm_clock_mhz": 1455, "idle_power_mw": -4}}}',
        V + '"cards": {"GPU-a": {"sm_clock_mhz": 0, "gap_power_mw": 2e9}}}',
        V + '"cards": {"GPU-a": 7}}',
        '{"cards": {"GPU-a": {"sm_clock_mhz": 1980, "idle_power_mw": 70000}}}',
    ],
    ids=[
        "garbage",
        "list",
        "out-of-range",
        "string",
        "top-list",
        "bad-curve",
        "bad-power",
        "bad-gap",
        "not-a-dict",
        "version-1",
    ],
)
def test_bad_cache_is_measured_again(tmp_path: Path, text: str) -> None:
    """Version 1 (no gap power) too: those cards are measured again for the power model."""
    cache = tmp_path / "c.json"
    cache.write_text(text)
    cards = FakeCards({"GPU-a": 1455})
    clocks = RefClocks("auto", cache, cards)
    assert clocks.get("GPU-a") == 0
    assert clocks.calibrate_missing(["GPU-a"]) == {"GPU-a": 1455}


@pytest.mark.parametrize(
    "curve,expect",
    [
        ((1210, 1160, 1140, 1110, 1040), (1210, 1160, 1140, 1110, 1040)),
        ((1210, 1160, 1140, 1010, 995), (1210, 1160, 1140, 1010, 1000)),  # a little under 1000: noise, no speed-up
        ((1210, 0, 1140, 1110, 1040), ()),  # a point not measured: no curve (the hook falls back to the clock)
        ((), ()),
    ],
    ids=["measured", "clamped", "missing-point", "none"],
)
def test_figures_of_a_calibration(curve: tuple[int, ...], expect: tuple[int, ...]) -> None:
    assert figures_of(cal(1455, curve)) == CardFigures(1455, expect, 120000)


def test_fixed_mode_writes_the_clock_only(tmp_path: Path) -> None:
    assert RefClocks(1485, tmp_path / "c.json").figures(A) == CardFigures(ref_clock_mhz=1485)


def test_a_burst_at_the_top_clock_gives_no_figure_and_is_not_repeated(tmp_path: Path) -> None:
    """H100, issue 23: the burst drew 597 W of 700 at 1980 MHz; its flat curve says nothing about
    matmuls, which the limit holds at ~1455 MHz. Shares of time then; the card is not measured
    again at every agent start."""
    assert figures_of(cal(1980, (995, 997, 999, 1000, 1000), idle=69248)) == CardFigures(idle_power_mw=69248)
    cache = tmp_path / "c.json"
    clocks = RefClocks("auto", cache, lambda u: cal(1980, (995, 997, 999, 1000, 1000)))
    clocks.calibrate_missing([A])
    assert clocks.figures(A) == CardFigures(idle_power_mw=120000) and clocks.get(A) == 0
    again = FakeCards({})
    assert RefClocks("auto", cache, again).calibrate_missing([A]) == {} and again.calls == []


def test_a_gap_power_gives_the_power_model_alone(tmp_path: Path) -> None:
    """H100, issue 23: the burst stayed under the limit (no clock, flat curve), but the card's power
    between windows is what the hook's power model needs; nothing else is written."""
    flat = (995, 997, 999, 1000, 1000)
    assert figures_of(cal(1980, flat, idle=69248, gap=134000)) == CardFigures(idle_power_mw=69248, gap_power_mw=134000)
    assert figures_of(cal(1455, CURVE, gap=134000)) == CardFigures(idle_power_mw=120000, gap_power_mw=134000)
    # A gap at or above the limit is no figure: the older ones then.
    assert figures_of(cal(1455, CURVE, gap=700000)) == CardFigures(1455, CURVE, 120000)
    cache = tmp_path / "c.json"
    clocks = RefClocks("auto", cache, lambda u: cal(1980, flat, gap=134000))
    clocks.calibrate_missing([A])
    assert clocks.figures(A) == CardFigures(idle_power_mw=120000, gap_power_mw=134000)
    body = json.loads(cache.read_text())
    assert body["version"] == CACHE_VERSION and body["cards"][A]["gap_power_mw"] == 134000
    again = FakeCards({})
    restarted = RefClocks("auto", cache, again)
    assert restarted.calibrate_missing([A]) == {} and again.calls == []
    assert restarted.figures(A).gap_power_mw == 134000
