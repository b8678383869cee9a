"""Each card's full-load SM clock, the hook's ``ref_clock_mhz``: measured by the agent, cached per card.

A power-capped card runs faster when it idles part of the time, so a vGPU held to c% of the
card's time gets more than c% of the card's full-load throughput. The hook corrects for that
given the clock the card sustains under full load (csrc/hook/README.md, "Compute"). That clock
differs between card models and between cards of one model, so the agent measures it on each
card itself (``HookShim.calibrate``: a few seconds of tensor-core work, only while the card is
idle) and keeps the figure in a JSON file under its state directory, keyed by card UUID, so a
restarted agent does not measure again.

    clocks = RefClocks.parse("auto", state_dir / "ref-clocks.json", shim.calibrate)
    clocks.calibrate_missing(uuids)     # at start, and again in later ticks for busy cards
    clocks.get(uuid)                    # MHz for the hook config; 0 = share of time

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

from .hook_shim import Calibration, CalibrationError

__all__ = ["CACHE_NAME", "RETRY_S", "RefClocks", "parse_mode"]

log = logging.getLogger(__name__)

CACHE_NAME = "ref-clocks.json"
RETRY_S = 300.0  # a card that was busy is tried again after this long
MIN_MHZ, MAX_MHZ = 100, 10000

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

    def __init__(self, mode: str | int, cache: Path | None = None, measure: Measure | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._mode = mode
        self._cache = cache
        self._measure = measure
        self._clock = clock
        self._mhz: dict[str, int] = self._load() if mode == "auto" else {}
        self._tried: dict[str, _Attempt] = {}

    @classmethod
    def parse(cls, text: str, cache: Path | None = None, measure: Measure | None = None) -> RefClocks:
        return cls(parse_mode(text), cache, measure)

    @property
    def mode(self) -> str | int:
        return self._mode

    def get(self, uuid: str) -> int:
        if isinstance(self._mode, int):
            return self._mode
        return self._mhz.get(uuid, 0)

    def figures(self) -> dict[str, int]:
        return dict(self._mhz)

    def calibrate_missing(self, uuids: Iterable[str]) -> dict[str, int]:
        """Measure every card of ``uuids`` without a figure (auto mode); a busy card is tried
        again after RETRY_S, one that failed otherwise is not (the log says why). Returns the
        figures measured now."""
        if self._mode != "auto" or self._measure is None:
            return {}
        new: dict[str, int] = {}
        for uuid in uuids:
            if uuid in self._mhz:
                continue
            last = self._tried.get(uuid)
            if last is not None and (not last.busy or self._clock() - last.at < RETRY_S):
                continue
            try:
                cal = self._measure(uuid)
            except CalibrationError as e:
                self._tried[uuid] = _Attempt(self._clock(), e.busy)
                log.log(logging.INFO if e.busy else logging.WARNING, "%s%s", e,
                        "; trying again when it is idle" if e.busy else "; its vGPUs get shares of time")
                continue
            if not MIN_MHZ <= cal.sm_clock_mhz <= MAX_MHZ:
                self._tried[uuid] = _Attempt(self._clock(), False)
                log.warning("card %s: implausible full-load clock %d MHz; its vGPUs get shares of time",
                            uuid, cal.sm_clock_mhz)
                continue
            log.info("card %s: full-load SM clock %d MHz (top %d, %d samples, %s kernel, %.1f of %.1f W)", uuid,
                     cal.sm_clock_mhz, cal.max_sm_clock_mhz, cal.samples, cal.kernel, cal.power_mw / 1e3,
                     cal.power_limit_mw / 1e3)
            self._mhz[uuid] = new[uuid] = cal.sm_clock_mhz
        if new:
            self._save()
        return new

    def _load(self) -> dict[str, int]:
        """The cache; anything unreadable or out of range is dropped (measured again)."""
        if self._cache is None or not self._cache.exists():
            return {}
        try:
            raw = json.loads(self._cache.read_text())
        except (OSError, ValueError) as e:
            log.warning("ignoring %s: %s", self._cache, e)
            return {}
        cards = raw.get("cards", {}) if isinstance(raw, dict) else {}
        if not isinstance(cards, dict):
            return {}
        return {u: int(v["sm_clock_mhz"]) for u, v in cards.items()
                if isinstance(u, str) and isinstance(v, dict) and isinstance(v.get("sm_clock_mhz"), int)
                and MIN_MHZ <= v["sm_clock_mhz"] <= MAX_MHZ}

    def _save(self) -> None:
        if self._cache is None:
            return
        body = {"cards": {u: {"sm_clock_mhz": m} for u, m in sorted(self._mhz.items())}}
        self._cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._cache.parent, prefix=".ref-clocks-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, indent=1)
            os.replace(tmp, self._cache)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
