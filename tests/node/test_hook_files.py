"""The hook's files per container: config (read-only), region directory, compute windows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flexai_node.hook import config as hook_config
from flexai_node.hook.files import HookConfigFiles

from .fakes import CARDS, slice_on

A, B = CARDS


def offsets(files: HookConfigFiles, root: Path, name: str, *slices: tuple[int, int]) -> list[int]:
    d = root / "uid" / name
    d.mkdir(parents=True)
    files.prepare(d, tuple(slice_on(A if i == 0 else B, name, cores, 1024) for i, (cores, _) in enumerate(slices)))
    return [v.core_offset for v in hook_config.parse((d / "vgpu.conf").read_text()).vgpus]


@pytest.mark.parametrize(
    "existing, cores, expect",
    [
        ([], 30, 0),
        ([30], 70, 30),  # [0,30) taken -> [30,100)
        ([30, 20], 50, 50),  # [0,30) [30,50) taken -> [50,100)
        ([100], 30, 0),  # an unlimited (100%) vGPU holds no window
        ([0], 30, 0),  # nor does a no-limit (0%) one
    ],
    ids=["alone", "after-one", "after-two", "whole-card-ignored", "no-limit-ignored"],
)
def test_windows_do_not_overlap(tmp_path: Path, existing: list[int], cores: int, expect: int) -> None:
    files = HookConfigFiles(tmp_path, Path("/hook.so"))
    for i, c in enumerate(existing):
        offsets(files, tmp_path, f"c{i}", (c, 0))
    assert offsets(files, tmp_path, "new", (cores, 0)) == [expect]


def test_no_contiguous_window_shares_by_time_slicing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = HookConfigFiles(tmp_path, Path("/hook.so"))
    offsets(files, tmp_path, "a", (30, 0))  # [0,30)
    offsets(files, tmp_path, "b", (30, 0))  # [30,60)
    offsets(files, tmp_path, "c", (10, 0))  # [60,70)
    (tmp_path / "uid" / "b" / "vgpu.conf").unlink()  # b is gone: [30,60) free, [70,100) free
    with caplog.at_level(logging.WARNING):
        assert offsets(files, tmp_path, "d", (40, 0)) == [0]
    assert "no free 40% compute window" in caplog.text


def test_files_env_and_mounts(tmp_path: Path) -> None:
    files = HookConfigFiles(tmp_path, Path("/opt/hook.so"))
    d = tmp_path / "uid" / "main"
    d.mkdir(parents=True)
    env, mounts = files.prepare(d, (slice_on(A, "main", 25, 2048),))
    assert env == {"LD_PRELOAD": hook_config.DEFAULT_LIBRARY, hook_config.ENV_CONFIG: "/etc/flexai/vgpu.conf"}
    assert [(m.container_path, m.host_path, m.read_only) for m in mounts] == [
        (hook_config.DEFAULT_LIBRARY, "/opt/hook.so", True),
        ("/etc/flexai/vgpu.conf", str(d / "vgpu.conf"), True),
        ("/var/run/flexai/vgpu", str(d / "region"), False),
    ]
    assert (d / "region").stat().st_mode & 0o777 == 0o777  # any container user creates the region
    assert files.region_file(d) == d / "region" / "region"


def test_ref_clock_goes_to_limited_vgpus_only(tmp_path: Path) -> None:
    files = HookConfigFiles(tmp_path, Path("/hook.so"), ref_clock_mhz=1485)
    d = tmp_path / "uid" / "main"
    d.mkdir(parents=True)
    files.prepare(d, (slice_on(A, "main", 25, 2048), slice_on(B, "main", 100, 4096)))
    config = hook_config.parse((d / "vgpu.conf").read_text())
    assert [(v.cores, v.ref_clock_mhz) for v in config.vgpus] == [(25, 1485), (100, 0)]


def test_ref_clock_per_card(tmp_path: Path) -> None:
    """The agent's measured figures (calibration.RefClocks.figures): each card its own; unknown: none."""
    measured = hook_config.CardFigures(1455, (1210, 1160, 1140, 1110, 1040), 120000)
    power = hook_config.CardFigures(idle_power_mw=69000, gap_power_mw=134000)
    files = HookConfigFiles(
        tmp_path, Path("/hook.so"), ref_clock_mhz=lambda uuid: measured if uuid == A.uuid else power
    )
    d = tmp_path / "uid" / "main"
    d.mkdir(parents=True)
    files.prepare(d, (slice_on(A, "main", 30, 2048), slice_on(B, "main", 40, 4096)))
    text = (d / "vgpu.conf").read_text()
    assert "device.0.speedup_pm=1210,1160,1140,1110,1040\ndevice.0.idle_power_mw=120000\n" in text
    config = hook_config.parse(text)
    assert "device.1.idle_power_mw=69000\ndevice.1.gap_power_mw=134000\n" in text
    assert [(v.uuid, v.ref_clock_mhz, v.speedup_pm, v.idle_power_mw, v.gap_power_mw) for v in config.vgpus] == [
        (A.uuid, 1455, (1210, 1160, 1140, 1110, 1040), 120000, 0),
        (B.uuid, 0, (), 69000, 134000),
    ]
