"""Each card's figures for limits in throughput (config.CardFigures): measured by the agent, cached per card.

A power-capped card runs faster when it idles part of the time, so a vGPU held to c% of the
card's time gets more than c% of the card's full-load throughput. The hook corrects for that
(csrc/hook/README.md, "Compute") with its power model, given the card's power between the windows
of a duty cycle (``gap_power_mw``; NVML gives the hook the rest). That differs between card models
and between cards of one model, so the agent measures it on each card itself
(``HookShim.calibrate``: about 10 s of tensor-core work, only while the card is idle) and keeps it
in a JSON file under its state directory, keyed by card UUID, so a restarted agent does not
measure again. A calibration that found no gap power falls back to the older figures (full-load
clock and speed-up curve, only when the burst reached the power limit).

    clocks = RefClocks.parse("auto", state_dir / "ref-clocks.json", shim.calibrate)
    clocks.calibrate_missing(uuids)     # at start, and again in later ticks for busy cards
    clocks.figures(uuid)                # for the hook config; CardFigures() = share of time

Modes (``--ref-clock-mhz``): ``auto`` (the default) measures; ``off`` (or 0) keeps shares of
time; a number is one clock for every card (the old setting).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .config import SPEEDUP_POINTS, CardFigures
from .shim import Calibration, CalibrationError

__all__ = ["CACHE_NAME", "CACHE_VERSION", "RETRY_S", "RefClocks", "figures_of", "parse_mode", "power_capped"]

log = logging.getLogger(__name__)

CACHE_NAME = "ref-clocks.json"
CACHE_VERSION = 2  # 2: gap_power_mw; a cache of another version is measured again
RETRY_S = 300.0  # a card that was busy is tried again after this long
MIN_MHZ, MAX_MHZ = 100, 10000
MAX_POWER_MW = 10_000_000
CAPPED_BELOW_PCT = 98  # a burst median under 98% of the top clock: the power limit held it back

Measure = Callable[[str], Calibration]


def parse_mode(text: str) -> str | int:
    """``auto``, ``off`` or MHz (0 is ``off``); ValueError naming the value otherwise."""
    value = text.strip().lower()
    if value in ("auto", "off"):
        return value
    try:
        mhz = int(value)
    except ValueError:
        raise ValueError(f"ref clock {text!r}: expected auto, off or MHz") from None
    if mhz == 0:
        return "off"
    if not MIN_MHZ <= mhz <= MAX_MHZ:
        raise ValueError(f"ref clock {mhz}: expected {MIN_MHZ}..{MAX_MHZ} MHz, auto or off")
    return mhz


@dataclass
class _Attempt:
    at: float
    busy: bool


class RefClocks:
    """Per card UUID, the MHz the agent writes as ``ref_clock_mhz`` (0: share of time)."""

    def __init__(
        self,
        mode: str | int,
        cache: Path | None = None,
        measure: Measure | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._mode = mode
        self._cache = cache
        self._measure = measure
        self._clock = clock
        self._cards: dict[str, CardFigures] = self._load() if mode == "auto" else {}
        self._tried: dict[str, _Attempt] = {}

    @classmethod
    def parse(cls, text: str, cache: Path | None = None, measure: Measure | None = None) -> RefClocks:
        return cls(parse_mode(text), cache, measure)

    @property
    def mode(self) -> str | int:
        return self._mode

    def get(self, uuid: str) -> int:
        """The full-load clock the config gets for this card (0: share of time)."""
        return self.figures(uuid).ref_clock_mhz

    def figures(self, uuid: str) -> CardFigures:
        if isinstance(self._mode, int):
            return CardFigures(ref_clock_mhz=self._mode)
        return self._cards.get(uuid, CardFigures())

    def calibrate_missing(self, uuids: Iterable[str]) -> dict[str, int]:
        """Measure every card of ``uuids`` without a figure (auto mode); a busy card is tried
        again after RETRY_S, one that failed otherwise is not (the log says why). Returns the
        figures measured now."""
        if self._mode != "auto" or self._measure is None:
            return {}
        new: dict[str, int] = {}
        for uuid in uuids:
            if uuid in self._cards:
                continue
            last = self._tried.get(uuid)
            if last is not None and (not last.busy or self._clock() - last.at < RETRY_S):
                continue
            try:
                cal = self._measure(uuid)
            except CalibrationError as e:
                self._tried[uuid] = _Attempt(self._clock(), e.busy)
                log.log(
                    logging.INFO if e.busy else logging.WARNING,
                    "%s%s",
                    e,
                    "; trying again when it is idle" if e.busy else "; its vGPUs get shares of time",
                )
                continue
            if not MIN_MHZ <= cal.sm_clock_mhz <= MAX_MHZ and power_capped(cal):
                self._tried[uuid] = _Attempt(self._clock(), False)
                log.warning(
                    "card %s: implausible full-load clock %d MHz; its vGPUs get shares of time", uuid, cal.sm_clock_mhz
                )
                continue
            fig = figures_of(cal)
            if not fig.gap_power_mw and not power_capped(cal):
                log.warning(
                    "card %s: the calibration burst ran at the top clock (%d MHz, %.1f of %.1f W): the power "
                    "limit was not reached, so there is no full-load figure; its core limits stay shares "
                    "of time",
                    uuid,
                    cal.sm_clock_mhz,
                    cal.power_mw / 1e3,
                    cal.power_limit_mw / 1e3,
                )
            log.info(
                "card %s: full-load SM clock %d MHz (top %d, %d samples, %s kernel, %.1f of %.1f W, idle %.1f W, "
                "between windows %.1f W); speed-up by duty 10-90%%: %s",
                uuid,
                cal.sm_clock_mhz,
                cal.max_sm_clock_mhz,
                cal.samples,
                cal.kernel,
                cal.power_mw / 1e3,
                cal.power_limit_mw / 1e3,
                cal.idle_power_mw / 1e3,
                cal.gap_power_mw / 1e3,
                cal.speedup_pm or "not measured",
            )
            self._cards[uuid] = fig
            new[uuid] = fig.ref_clock_mhz
        if new:
            self._save()
        return new

    def _load(self) -> dict[str, CardFigures]:
        """The cache; a card whose entry is unreadable or out of range is measured again."""
        if self._cache is None or not self._cache.exists():
            return {}
        try:
            raw = json.loads(self._cache.read_text())
        except (OSError, ValueError) as e:
            log.warning("ignoring %s: %s", self._cache, e)
            return {}
        if not isinstance(raw, dict) or raw.get("version") != CACHE_VERSION:
            log.info("%s is of another version: every card is measured again", self._cache)
            return {}
        cards = raw.get("cards", {})
        if not isinstance(cards, dict):
            return {}
        out: dict[str, CardFigures] = {}
        for u, v in cards.items():
            try:
                fig = CardFigures(
                    ref_clock_mhz=v["sm_clock_mhz"],
                    speedup_pm=tuple(v.get("speedup_pm", ())),
                    idle_power_mw=v.get("idle_power_mw", 0),
                    gap_power_mw=v.get("gap_power_mw", 0),
                )
            except (TypeError, KeyError, AttributeError):
                continue
            if (
                isinstance(u, str)
                and isinstance(fig.ref_clock_mhz, int)
                and (fig.ref_clock_mhz == 0 or MIN_MHZ <= fig.ref_clock_mhz <= MAX_MHZ)
                and _curve_ok(fig.speedup_pm)
                and isinstance(fig.idle_power_mw, int)
                and 0 <= fig.idle_power_mw <= MAX_POWER_MW
                and isinstance(fig.gap_power_mw, int)
                and 0 <= fig.gap_power_mw <= MAX_POWER_MW
            ):
                out[u] = fig
        return out

    def _save(self) -> None:
        if self._cache is None:
            return
        body = {
            "version": CACHE_VERSION,
            "cards": {
                u: {
                    "sm_clock_mhz": f.ref_clock_mhz,
                    "speedup_pm": list(f.speedup_pm),
                    "idle_power_mw": f.idle_power_mw,
                    "gap_power_mw": f.gap_power_mw,
                }
                for u, f in sorted(self._cards.items())
            },
        }
        self._cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._cache.parent, prefix=".ref-clocks-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, indent=1)
            os.replace(tmp, self._cache)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _curve_ok(curve: tuple[int, ...]) -> bool:
    return curve == () or (
        len(curve) == SPEEDUP_POINTS and all(isinstance(v, int) and 1000 <= v <= 3000 for v in curve)
    )


def power_capped(cal: Calibration) -> bool:
    """Did the burst reach the card's power limit, i.e. hold a clock under the top one? If not,
    its curve and clock say nothing about work that the limit holds back (H100: the burst drew
    597 W of 700 at the top clock, where cuBLAS matmuls are held at ~1455 MHz)."""
    return cal.max_sm_clock_mhz == 0 or cal.sm_clock_mhz * 100 < cal.max_sm_clock_mhz * CAPPED_BELOW_PCT


def figures_of(cal: Calibration) -> CardFigures:
    """The config's figures from a calibration: with a gap power (under the power limit), that
    and the idle power, for the hook's power model, which needs nothing else. Without one, the
    older figures: the curve clamped to 1000..3000 per mille (a point measured a little under
    1000 is noise: no speed-up), dropped if a point is missing; nothing but the idle power when
    the burst was not held back by the power limit."""
    idle = cal.idle_power_mw if 0 < cal.idle_power_mw <= MAX_POWER_MW else 0
    limit = cal.power_limit_mw or MAX_POWER_MW
    if 0 < cal.gap_power_mw < limit:
        return CardFigures(idle_power_mw=idle, gap_power_mw=cal.gap_power_mw)
    if not power_capped(cal):
        return CardFigures(idle_power_mw=idle)
    curve = tuple(min(3000, max(1000, v)) for v in cal.speedup_pm)
    if len(curve) != SPEEDUP_POINTS or any(v == 0 for v in cal.speedup_pm):
        curve = ()
    return CardFigures(ref_clock_mhz=cal.sm_clock_mhz, speedup_pm=curve, idle_power_mw=idle)
