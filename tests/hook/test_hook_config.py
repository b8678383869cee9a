"""flexai_node.hook_config: what Python writes is what the C hook enforces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flexai_node.hook_config import (
    HookConfig,
    VGPULimit,
    container_env,
    first_free_window,
    parse,
    render,
    write_config,
)

from .conftest import HookBuild

CLIENT = str(Path(__file__).with_name("ctypes_client.py"))
GiB = 1 << 30
MiB = 1 << 20


def run_client(build: HookBuild, config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, CLIENT, *args], env=build.env(config), capture_output=True, text=True, timeout=60
    )


def test_render_parse_round_trip() -> None:
    cfg = HookConfig(
        vgpus=(
            VGPULimit(uuid="GPU-1234", memory_bytes=8 * GiB, cores=30, core_offset=10, ref_clock_mhz=1755),
            VGPULimit(cuda_index=1, memory_bytes=0, cores=0, context_overhead_bytes=0),
        ),
        region_path="/run/flexai/region",
        period_ms=40,
    )
    assert parse(render(cfg)) == cfg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "uuid or cuda_index"),
        ({"uuid": "1234"}, "expected GPU-"),
        ({"cuda_index": 0, "cores": 101}, "cores"),
        ({"cuda_index": 0, "core_offset": 100}, "core_offset"),
        ({"cuda_index": 0, "memory_bytes": -1}, "byte counts"),
    ],
    ids=["no-card", "bad-uuid", "cores", "offset", "negative-bytes"],
)
def test_vgpu_limit_validates(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VGPULimit(**kwargs)  # type: ignore[arg-type]


def test_container_env() -> None:
    assert container_env("/etc/flexai/vgpu.conf", "/lib/h.so") == {
        "LD_PRELOAD": "/lib/h.so",
        "FLEXAI_VGPU_CONFIG": "/etc/flexai/vgpu.conf",
    }


@pytest.mark.parametrize(
    "taken, cores, expected",
    [
        ([], 30, 0),
        ([(0, 30)], 70, 30),  # 30 + 70 fill the card
        ([(0, 30)], 71, None),
        ([(0, 30), (50, 20)], 20, 30),  # the gap between them
        ([(0, 30), (50, 20)], 30, 70),  # after both
        ([(0, 30), (50, 20)], 31, None),  # 50 free in total but not in one piece
    ],
    ids=["empty", "fill", "too-big", "gap", "tail", "fragmented"],
)
def test_first_free_window(taken: list[tuple[int, int]], cores: int, expected: int | None) -> None:
    assert first_free_window(taken, cores) == expected


def test_written_config_is_enforced(hook_build: HookBuild, tmp_path: Path) -> None:
    conf = tmp_path / "vgpu.conf"
    write_config(
        conf,
        HookConfig(
            vgpus=(VGPULimit(cuda_index=0, memory_bytes=2 * GiB, context_overhead_bytes=256 * MiB),),
            region_path=str(tmp_path / "region"),
        ),
    )
    ok = json.loads(run_client(hook_build, conf, "alloc", "1024").stdout)
    assert ok == {"rc": 0, "free": 2 * GiB - GiB - 256 * MiB, "total": 2 * GiB}
    over = json.loads(run_client(hook_build, conf, "alloc", "1900").stdout)
    assert over["rc"] == 2  # CUDA_ERROR_OUT_OF_MEMORY: 1900 MiB + 256 MiB context > 2 GiB


def test_cu_get_proc_address_from_python(hook_build: HookBuild, tmp_path: Path) -> None:
    conf = tmp_path / "vgpu.conf"
    write_config(conf, HookConfig(vgpus=(VGPULimit(cuda_index=0, memory_bytes=GiB, context_overhead_bytes=0),)))
    r = run_client(hook_build, conf, "gpa_alloc", "600")
    assert json.loads(r.stdout) == {"first": 0, "second": 2}, r.stderr


def test_no_config_no_limits(hook_build: HookBuild) -> None:
    r = run_client(hook_build, None, "alloc", "15000")
    assert json.loads(r.stdout) == {"rc": 0, "free": 16384 * MiB - 15000 * MiB, "total": 16384 * MiB}
    assert r.stderr == ""


# Malformed configs: a message naming the line and field on stderr, the documented fallback, no crash.
@pytest.mark.parametrize(
    "text, message, expect_total",
    [
        ("version=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=lots\n", "device.0.memory_bytes: 'lots'", 16384),
        ("version=7\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\n", "version: '7'", 16384),
        ("version=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\nbogus line\n", "line 4", 1024),
        ("version=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\ncolour=blue\n", "unknown key 'colour'", 1024),
        ("version=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\ndevice.0.cores=150\n", "device.0.cores", 1024),
        ("version=1\ndevice.99.cuda_index=0\n", "device index must be 0..15", 16384),
        ("version=1\ndevice.0.memory_bytes=1073741824\n", "neither uuid nor cuda_index", 16384),
        ("version=1\nperiod_ms=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\n", "period_ms", 1024),
        ("\x00\x01garbage\xff", "NUL byte at offset 0", 16384),
        ("\x01\x02garbage\xff\n", "line 1: expected key=value", 16384),
    ],
    ids=["bytes", "version", "no-equals", "unknown-key", "cores", "index", "no-card", "period", "binary", "control-chars"],
)
def test_malformed_config(hook_build: HookBuild, tmp_path: Path, text: str, message: str, expect_total: int) -> None:
    conf = tmp_path / "vgpu.conf"
    conf.write_bytes(text.encode("latin-1"))
    r = run_client(hook_build, conf, "alloc", "1")
    assert r.returncode == 0, r.stderr
    assert message in r.stderr, r.stderr
    assert "flexai-hook:" in r.stderr
    assert json.loads(r.stdout)["total"] == expect_total * MiB


def test_missing_config_file(hook_build: HookBuild, tmp_path: Path) -> None:
    r = run_client(hook_build, tmp_path / "absent.conf", "alloc", "1")
    assert r.returncode == 0
    assert "cannot read FLEXAI_VGPU_CONFIG" in r.stderr and "WITHOUT limits" in r.stderr
