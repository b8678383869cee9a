"""Read a container's shared hook region through libflexai_shim.so (ctypes).

The C side is ``flexai_region_snapshot()`` of csrc/hook/include/flexai_hook.h; the
structures below mirror its version-1 layout field for field (sizes asserted at import).
This module is the one place ctypes and the shim's error codes are translated.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import NodeError

__all__ = [
    "Calibration",
    "CalibrationError",
    "HookShim",
    "ProcessUsage",
    "RegionSnapshot",
    "ShimError",
    "VGPUUsage",
    "find_shim",
]

API_VERSION = 1
MAX_DEVICES = 16
MAX_PROCS = 256
UUID_LEN = 64


class _Device(ctypes.Structure):
    _fields_ = [
        ("uuid", ctypes.c_char * UUID_LEN),
        ("memory_limit", ctypes.c_uint64),
        ("memory_used", ctypes.c_uint64),
        ("busy_ns", ctypes.c_uint64),
        ("period_ns", ctypes.c_uint64),
        ("reserved0", ctypes.c_uint64),
        ("reserved1", ctypes.c_uint64),
        ("cores", ctypes.c_uint32),
        ("core_offset", ctypes.c_uint32),
        ("cuda_index", ctypes.c_int32),
        ("reserved2", ctypes.c_uint32),
    ]


class _Proc(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_int32),
        ("alive", ctypes.c_uint32),
        ("memory_used", ctypes.c_uint64 * MAX_DEVICES),
        ("busy_ns", ctypes.c_uint64 * MAX_DEVICES),
    ]


class _Snapshot(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("ndevices", ctypes.c_uint32),
        ("nprocs", ctypes.c_uint32),
        ("devices", _Device * MAX_DEVICES),
        ("procs", _Proc * MAX_PROCS),
    ]


class _Calibration(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint32),
        ("sm_clock_mhz", ctypes.c_uint32),
        ("max_sm_clock_mhz", ctypes.c_uint32),
        ("samples", ctypes.c_uint32),
        ("busy_pct_before", ctypes.c_uint32),
        ("kernel", ctypes.c_uint32),
        ("power_mw", ctypes.c_uint32),
        ("power_limit_mw", ctypes.c_uint32),
        ("burst_ns", ctypes.c_uint64),
        ("procs_before", ctypes.c_uint32),
        ("idle_power_mw", ctypes.c_uint32),
        ("speedup_pm", ctypes.c_uint32 * 5),
        ("gap_power_mw", ctypes.c_uint32),
    ]


assert ctypes.sizeof(_Calibration) == 72
assert ctypes.sizeof(_Device) == 128 and ctypes.sizeof(_Proc) == 264 and ctypes.sizeof(_Snapshot) == 69648


# What the shim's codes mean for a region (csrc/hook/include/flexai_hook.h).
_REASONS = {
    errno.ELOOP: "a symbolic link: not followed",
    errno.ENOTDIR: "a symbolic link or non-directory on the way: not followed",
    errno.EPERM: "not a regular file with one link: not opened",
    errno.EINVAL: "not a hook region",
    errno.EPROTO: "a region of another layout version (hook and shim from different builds)",
}


class ShimError(NodeError):
    """The shim could not be loaded or could not read a region (``errno`` when it said why)."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class CalibrationError(ShimError):
    """A card could not be calibrated; ``busy`` when it was in use (try again when idle)."""

    def __init__(self, message: str, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


@dataclass(frozen=True)
class Calibration:
    """What ``flexai_calibrate()`` measured on one card (csrc/hook/include/flexai_hook.h)."""

    sm_clock_mhz: int  # median SM clock over the second half of a full-load burst
    max_sm_clock_mhz: int
    samples: int
    kernel: str  # "mma" (tensor cores) or "fma"
    power_mw: int
    power_limit_mw: int
    burst_ms: float
    idle_power_mw: int = 0  # the card idle, before the burst
    speedup_pm: tuple[int, ...] = ()  # speed per busy second at 10/30/50/70/90% duty over full load
    gap_power_mw: int = 0  # the card's power between the busy parts of a duty cycle (0: unknown)


@dataclass(frozen=True)
class VGPUUsage:
    index: int
    uuid: str
    cuda_index: int  # -1 when matched by uuid
    memory_limit: int  # bytes, 0 = unlimited
    memory_used: int  # bytes, every live process, context overhead included
    busy_ns: int  # cumulative GPU time measured (limited vGPUs only)
    period_ns: int
    cores: int  # 0 or 100 = unlimited
    core_offset: int


@dataclass(frozen=True)
class ProcessUsage:
    pid: int
    alive: bool
    memory_used: tuple[int, ...]  # bytes per vGPU index
    busy_ns: tuple[int, ...]  # cumulative GPU time per vGPU index


@dataclass(frozen=True)
class RegionSnapshot:
    vgpus: tuple[VGPUUsage, ...]
    processes: tuple[ProcessUsage, ...]


def find_shim() -> Path:
    """$FLEXAI_SHIM_LIBRARY, else beside the installed hook, else the repo's build/hook."""
    candidates = [
        os.environ.get("FLEXAI_SHIM_LIBRARY", ""),
        "/usr/local/flexai/lib/libflexai_shim.so",
        str(Path(__file__).resolve().parents[2] / "build" / "hook" / "libflexai_shim.so"),
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise ShimError("libflexai_shim.so not found (set FLEXAI_SHIM_LIBRARY)")


class HookShim:
    """``HookShim().snapshot(region_path)``; one loaded library per instance."""

    def __init__(self, library: str | os.PathLike[str] | None = None) -> None:
        path = Path(library) if library is not None else find_shim()
        try:
            self._lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise ShimError(f"cannot load {path}: {e}") from e
        self._lib.flexai_api_version.restype = ctypes.c_int
        self._lib.flexai_region_snapshot.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Snapshot), ctypes.c_size_t]
        self._lib.flexai_region_snapshot.restype = ctypes.c_int
        self._calibrate = getattr(self._lib, "flexai_calibrate", None)  # a shim older than calibration: None
        if self._calibrate is not None:
            self._calibrate.argtypes = [
                ctypes.c_char_p,
                ctypes.c_uint32,
                ctypes.c_uint32,
                ctypes.POINTER(_Calibration),
                ctypes.c_size_t,
            ]
            self._calibrate.restype = ctypes.c_int
        version = int(self._lib.flexai_api_version())
        if version != API_VERSION:
            raise ShimError(f"{path} speaks API version {version}, this module {API_VERSION}")

    def calibrate(self, uuid: str, burst_ms: int = 4000, max_busy_pct: int = 5) -> Calibration:
        """Run the full-load burst on card ``uuid`` (seconds of work: call while it is idle).

        Raises CalibrationError, with ``busy`` set when the card was in use and nothing ran."""
        if self._calibrate is None:
            raise CalibrationError("this libflexai_shim.so has no flexai_calibrate")
        raw = _Calibration()
        rc = int(self._calibrate(uuid.encode(), burst_ms, max_busy_pct, ctypes.byref(raw), ctypes.sizeof(raw)))
        if rc != 0:
            name = errno.errorcode.get(-rc, str(rc))
            why = f": {raw.busy_pct_before}% busy, {raw.procs_before} compute processes" if rc == -errno.EBUSY else ""
            raise CalibrationError(f"calibrating {uuid}: {name} ({os.strerror(-rc)}){why}", busy=rc == -errno.EBUSY)
        return Calibration(
            sm_clock_mhz=int(raw.sm_clock_mhz),
            max_sm_clock_mhz=int(raw.max_sm_clock_mhz),
            samples=int(raw.samples),
            kernel="mma" if raw.kernel == 1 else "fma",
            power_mw=int(raw.power_mw),
            power_limit_mw=int(raw.power_limit_mw),
            burst_ms=round(raw.burst_ns / 1e6, 1),
            idle_power_mw=int(raw.idle_power_mw),
            speedup_pm=tuple(int(v) for v in raw.speedup_pm),
            gap_power_mw=int(raw.gap_power_mw),
        )

    def snapshot(self, region_path: str | os.PathLike[str]) -> RegionSnapshot:
        raw = _Snapshot()
        rc = int(self._lib.flexai_region_snapshot(os.fsencode(region_path), ctypes.byref(raw), ctypes.sizeof(raw)))
        if rc != 0:
            why = _REASONS.get(-rc, os.strerror(-rc))
            raise ShimError(f"{region_path}: {errno.errorcode.get(-rc, rc)} ({why})", -rc)
        vgpus = tuple(
            VGPUUsage(
                index=i,
                uuid=d.uuid.decode(errors="replace"),
                cuda_index=int(d.cuda_index),
                memory_limit=int(d.memory_limit),
                memory_used=int(d.memory_used),
                busy_ns=int(d.busy_ns),
                period_ns=int(d.period_ns),
                cores=int(d.cores),
                core_offset=int(d.core_offset),
            )
            for i, d in enumerate(raw.devices[: raw.ndevices])
        )
        procs = tuple(
            ProcessUsage(
                pid=int(p.pid),
                alive=bool(p.alive),
                memory_used=tuple(int(x) for x in p.memory_used[: raw.ndevices]),
                busy_ns=tuple(int(x) for x in p.busy_ns[: raw.ndevices]),
            )
            for p in raw.procs[: raw.nprocs]
        )
        return RegionSnapshot(vgpus=vgpus, processes=procs)
