"""The CUDA hook's vGPU config: the one place it is written (format: csrc/hook/README.md).

The device plugin builds a :class:`HookConfig` for a container, writes it with
:func:`write_config` to a file it mounts read-only into the container, and adds
:func:`container_env` to the container's environment. The hook (libflexai_hook.so)
reads the file once per process.

    cfg = HookConfig(
        vgpus=(VGPULimit(uuid="GPU-...", memory_bytes=8 << 30, cores=30, core_offset=0),),
        region_path="/var/run/flexai/vgpu/region",   # writable, shared by the container's processes
    )
    write_config("/var/lib/flexai/pods/<uid>/<container>/vgpu.conf", cfg)
    env = container_env("/etc/flexai/vgpu.conf")   # path as the container sees it

Compute windows: a vGPU with ``cores`` = c and ``core_offset`` = o runs in [o, o+c) percent
of every period. vGPUs on the same card must get windows that do not overlap, or they share
the card by time-slicing and their 3:7 becomes less exact; :func:`first_free_window` picks one.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CONFIG_VERSION",
    "CardFigures",
    "DEFAULT_CONTEXT_OVERHEAD",
    "DEFAULT_LIBRARY",
    "DEFAULT_PERIOD_MS",
    "ENV_CONFIG",
    "MAX_VGPUS",
    "HookConfig",
    "VGPULimit",
    "container_env",
    "first_free_window",
    "parse",
    "render",
    "write_config",
]

CONFIG_VERSION = 1
ENV_CONFIG = "FLEXAI_VGPU_CONFIG"
DEFAULT_LIBRARY = "/usr/local/flexai/lib/libflexai_hook.so"
DEFAULT_PERIOD_MS = 50
DEFAULT_CONTEXT_OVERHEAD = 512 << 20  # bytes a CUDA context costs that no allocation shows
MAX_VGPUS = 16  # FLEXAI_MAX_DEVICES in csrc/hook/include/flexai_hook.h
MAX_CONFIG_BYTES = 16383  # what the hook reads of the file
_DIGITS = re.compile(r"[0-9]+")
_DEVICE_KEY = re.compile(r"device\.([0-9]+)\.(.+)")
_DEVICE_FIELDS = (
    "uuid",
    "cuda_index",
    "memory_bytes",
    "cores",
    "core_offset",
    "context_overhead_bytes",
    "ref_clock_mhz",
    "speedup_pm",
    "idle_power_mw",
    "gap_power_mw",
)


SPEEDUP_POINTS = 5  # duties 10, 30, 50, 70, 90%


@dataclass(frozen=True)
class CardFigures:
    """What the agent measured on a card (calibration.py) for limits in throughput: its full-load
    SM clock, its speed-up curve by duty (per mille; () = not measured), its idle power and its
    power between the windows of a duty cycle (mW; 0 = not measured)."""

    ref_clock_mhz: int = 0
    speedup_pm: tuple[int, ...] = ()
    idle_power_mw: int = 0
    gap_power_mw: int = 0


@dataclass(frozen=True)
class VGPULimit:
    """One vGPU: which card (UUID, or failing that the ordinal the process sees) and its limits."""

    uuid: str | None = None
    cuda_index: int | None = None
    memory_bytes: int = 0  # 0 = no memory limit
    cores: int = 0  # percent of the card; 0 or 100 = no compute limit
    core_offset: int = 0  # percent: where the compute window opens in each period
    context_overhead_bytes: int = DEFAULT_CONTEXT_OVERHEAD
    # SM clock (MHz) the card sustains at full load; set, the hook holds the vGPU to a share of the
    # card's full-load throughput instead of a share of its time (needs uuid; see csrc/hook/README.md).
    ref_clock_mhz: int = 0
    # The card's measured speed per busy second at 10/30/50/70/90% duty over full load (per mille,
    # 1000..3000) and idle power (mW): the hook then uses these instead of ref_clock_mhz.
    speedup_pm: tuple[int, ...] = ()
    idle_power_mw: int = 0
    # The card's power between the windows of a duty cycle (mW): the hook's power model, which
    # wins over the two above (csrc/hook/src/speedup.c).
    gap_power_mw: int = 0

    def __post_init__(self) -> None:
        if self.uuid is None and self.cuda_index is None:
            raise ValueError("a vGPU needs uuid or cuda_index")
        if self.uuid is not None and (not self.uuid.startswith("GPU-") or len(self.uuid) >= 64):
            raise ValueError(f"uuid {self.uuid!r}: expected GPU-... (under 64 characters)")
        if self.cuda_index is not None and not 0 <= self.cuda_index <= 1023:
            raise ValueError(f"cuda_index {self.cuda_index}: expected 0..1023")
        if self.memory_bytes < 0 or self.context_overhead_bytes < 0:
            raise ValueError("byte counts must be >= 0")
        if not 0 <= self.cores <= 100:
            raise ValueError(f"cores {self.cores}: expected 0..100")
        if not 0 <= self.core_offset <= 99:
            raise ValueError(f"core_offset {self.core_offset}: expected 0..99")
        if not 0 <= self.ref_clock_mhz <= 10000:
            raise ValueError(f"ref_clock_mhz {self.ref_clock_mhz}: expected 0..10000")
        if self.speedup_pm and (
            len(self.speedup_pm) != SPEEDUP_POINTS or not all(1000 <= v <= 3000 for v in self.speedup_pm)
        ):
            raise ValueError(f"speedup_pm {self.speedup_pm}: expected {SPEEDUP_POINTS} values 1000..3000")
        if not 0 <= self.idle_power_mw <= 10_000_000:
            raise ValueError(f"idle_power_mw {self.idle_power_mw}: expected 0..10000000")
        if not 0 <= self.gap_power_mw <= 10_000_000:
            raise ValueError(f"gap_power_mw {self.gap_power_mw}: expected 0..10000000")


@dataclass(frozen=True)
class HookConfig:
    """All vGPUs of one container; ``region_path`` "" = each process on its own."""

    vgpus: tuple[VGPULimit, ...] = field(default_factory=tuple)
    region_path: str = ""
    period_ms: int = DEFAULT_PERIOD_MS

    def __post_init__(self) -> None:
        if len(self.vgpus) > MAX_VGPUS:
            raise ValueError(f"{len(self.vgpus)} vGPUs: at most {MAX_VGPUS}")
        if not 5 <= self.period_ms <= 10000:
            raise ValueError(f"period_ms {self.period_ms}: expected 5..10000")
        if "\n" in self.region_path or "#" in self.region_path or len(self.region_path) >= 512:
            raise ValueError("region_path: one line without '#' (it starts a comment), under 512 characters")


def render(config: HookConfig) -> str:
    """The file's text, one ``key=value`` a line."""
    lines = ["# Flex:ai vGPU limits, read by libflexai_hook.so (csrc/hook/README.md)", f"version={CONFIG_VERSION}"]
    if config.region_path:
        lines.append(f"region={config.region_path}")
    lines.append(f"period_ms={config.period_ms}")
    for i, v in enumerate(config.vgpus):
        p = f"device.{i}."
        if v.uuid is not None:
            lines.append(f"{p}uuid={v.uuid}")
        if v.cuda_index is not None:
            lines.append(f"{p}cuda_index={v.cuda_index}")
        lines += [
            f"{p}memory_bytes={v.memory_bytes}",
            f"{p}cores={v.cores}",
            f"{p}core_offset={v.core_offset}",
            f"{p}context_overhead_bytes={v.context_overhead_bytes}",
        ]
        if v.ref_clock_mhz:
            lines.append(f"{p}ref_clock_mhz={v.ref_clock_mhz}")
        if v.speedup_pm:
            lines.append(f"{p}speedup_pm={','.join(str(x) for x in v.speedup_pm)}")
        if v.idle_power_mw:
            lines.append(f"{p}idle_power_mw={v.idle_power_mw}")
        if v.gap_power_mw:
            lines.append(f"{p}gap_power_mw={v.gap_power_mw}")
    return "\n".join(lines) + "\n"


def _speedup(value: object) -> tuple[int, ...]:
    return tuple(int(x) for x in str(value).split(",")) if value else ()


def _number(n: int, key: str, value: str) -> int:
    if not _DIGITS.fullmatch(value):
        raise ValueError(f"line {n}: {key}: {value!r} is not a number")
    return int(value)


def parse(text: str) -> HookConfig:
    """Strict reader, as strict as the hook (csrc/hook/src/config.c): raises ValueError naming the line.

    ``#`` starts a comment anywhere on a line (so no value holds one), as in the hook.
    """
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise ValueError(f"longer than {MAX_CONFIG_BYTES} bytes")
    region, period, version_seen = "", DEFAULT_PERIOD_MS, False
    fields: dict[int, dict[str, tuple[int, str]]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        key, sep, value = (s.strip() for s in line.partition("="))
        if not sep:
            raise ValueError(f"line {n}: expected key=value")
        device = _DEVICE_KEY.fullmatch(key)
        if key == "version":
            version_seen = True
            if value != str(CONFIG_VERSION):
                raise ValueError(f"line {n}: version {value!r} is not {CONFIG_VERSION}")
        elif key == "region":
            if not value:
                raise ValueError(f"line {n}: region: empty path")
            region = value
        elif key == "period_ms":
            period = _number(n, key, value)
        elif device is not None:
            index, name = int(device[1]), device[2]
            if index >= MAX_VGPUS or name not in _DEVICE_FIELDS:
                raise ValueError(f"line {n}: {key}: index 0..{MAX_VGPUS - 1} and one of {', '.join(_DEVICE_FIELDS)}")
            fields.setdefault(index, {})[name] = (n, value)
        else:
            raise ValueError(f"line {n}: unknown key {key!r}")
    if not version_seen:
        raise ValueError(f"no version line (expected version={CONFIG_VERSION})")
    if sorted(fields) != list(range(len(fields))):
        raise ValueError(f"devices {sorted(fields)}: expected device.0 .. device.{len(fields) - 1}")
    vgpus = []
    for i in sorted(fields):
        f = {
            name: _number(line, f"device.{i}.{name}", v) if name not in ("uuid", "speedup_pm") else v
            for name, (line, v) in fields[i].items()
        }
        if "speedup_pm" in f:
            at = fields[i]["speedup_pm"][0]
            if not re.fullmatch(rf"\d+(,\d+){{{SPEEDUP_POINTS - 1}}}", str(f["speedup_pm"])):
                raise ValueError(
                    f"line {at}: device.{i}.speedup_pm: {f['speedup_pm']!r} is not "
                    f"{SPEEDUP_POINTS} comma-separated numbers"
                )
        vgpus.append(
            VGPULimit(
                uuid=str(f["uuid"]) if "uuid" in f else None,
                cuda_index=int(f["cuda_index"]) if "cuda_index" in f else None,
                memory_bytes=int(f.get("memory_bytes", 0)),
                cores=int(f.get("cores", 0)),
                core_offset=int(f.get("core_offset", 0)),
                context_overhead_bytes=int(f.get("context_overhead_bytes", DEFAULT_CONTEXT_OVERHEAD)),
                ref_clock_mhz=int(f.get("ref_clock_mhz", 0)),
                speedup_pm=_speedup(f.get("speedup_pm", "")),
                idle_power_mw=int(f.get("idle_power_mw", 0)),
                gap_power_mw=int(f.get("gap_power_mw", 0)),
            )
        )
    return HookConfig(vgpus=tuple(vgpus), region_path=region, period_ms=period)


def write_config(path: str | os.PathLike[str], config: HookConfig) -> None:
    """Write atomically (temp file + rename): a process starting meanwhile reads old or new, never half."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".vgpu-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render(config))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def container_env(config_path: str, library_path: str = DEFAULT_LIBRARY) -> dict[str, str]:
    """Environment a container needs: preload the hook and point it at its config (paths inside the container)."""
    return {"LD_PRELOAD": library_path, ENV_CONFIG: config_path}


def first_free_window(taken: Sequence[tuple[int, int]], cores: int) -> int | None:
    """Lowest ``core_offset`` whose window [offset, offset+cores) misses every (offset, cores) in ``taken``.

    ``None`` when no contiguous window is free (the caller may then place the vGPU on another card).
    E.g. taken [(0, 30)] and cores 70 -> 30; taken [(0, 30), (50, 20)] and cores 30 -> None.
    """
    if not 0 < cores <= 100:
        return 0
    busy = [False] * 100
    for off, c in taken:
        for p in range(off, min(off + c, 100)):
            busy[p] = True
    for start in range(0, 101 - cores):
        if not any(busy[start : start + cores]):
            return start
    return None
