"""flexai_node.hook.config: what Python writes is what the C hook enforces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flexai_node.hook.config import HookConfig, VGPULimit, container_env, first_free_window, parse, render, write_config

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
            VGPULimit(uuid="GPU-5678", cores=40, speedup_pm=(1210, 1160, 1140, 1110, 1040), idle_power_mw=120000),
            VGPULimit(uuid="GPU-9abc", cores=30, idle_power_mw=69000, gap_power_mw=134000),
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


NOT_PERMITTED = 800  # CUDA_ERROR_NOT_PERMITTED: what cuInit answers when the hook fails closed
REPO = Path(__file__).resolve().parents[2]


def assert_no_gpu(r: subprocess.CompletedProcess[str]) -> None:
    """The program got no GPU: cuInit refused, by every route, and nothing after it works."""
    assert r.returncode == 0, r.stderr
    routes = json.loads(r.stdout)
    assert routes["direct"] == routes["gpa"] == routes["retain"] == NOT_PERMITTED, routes
    assert routes["device_get"] != 0 and routes["device_count"] != 0, routes
    assert "CUDA is disabled for this process" in r.stderr, r.stderr


# A config that is named but wrong fails closed: no GPU, and stderr names the file, the line and the reason.
@pytest.mark.parametrize(
    "text, message",
    [
        (
            "version=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=lots\n",
            "line 3: device.0.memory_bytes: 'lots' is not a byte count",
        ),
        ("version=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1G\n", "line 3: device.0.memory_bytes: '1G'"),
        (
            "version=7\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\n",
            "line 1: version: '7' is not supported",
        ),
        ("device.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\n", "no version line"),
        (
            "version=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\nbogus line\n",
            "line 4: expected key=value",
        ),
        (
            "version=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\ncolour=blue\n",
            "line 4: unknown key 'colour'",
        ),
        (
            "version=1\ndevice.0.cuda_index=0\ndevice.0.memory_byte=1073741824\n",
            "line 3: unknown field 'device.0.memory_byte'",
        ),
        (
            "version=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\ndevice.0.cores=150\n",
            "line 4: device.0.cores",
        ),
        ("version=1\ndevice.99.cuda_index=0\n", "line 2: 'device.99.cuda_index': device index must be 0..15"),
        ("version=1\ndevice.0.memory_bytes=1073741824\n", "device.0 has neither uuid nor cuda_index"),
        ("version=1\nperiod_ms=1\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\n", "line 2: period_ms: '1'"),
        ("version=1\nregion=\ndevice.0.cuda_index=0\n", "line 2: region: empty path"),
        (
            "version=1\ndevice.0.cuda_index=0\ndevice.0.cores=30\ndevice.0.speedup_pm=1200,1100,1000,1000\n",
            "line 4: device.0.speedup_pm: '1200,1100,1000,1000' is not 5 per-mille speeds",
        ),
        (
            "version=1\ndevice.0.cuda_index=0\ndevice.0.cores=30\ndevice.0.speedup_pm=1200,1100,900,1000,1000\n",
            "line 4: device.0.speedup_pm",
        ),
        (
            "version=1\ndevice.0.cuda_index=0\ndevice.0.cores=30\ndevice.0.idle_power_mw=lots\n",
            "line 4: device.0.idle_power_mw: 'lots' is not a power in mW",
        ),
        (
            "version=1\ndevice.0.cuda_index=0\ndevice.0.cores=30\ndevice.0.gap_power_mw=20000000\n",
            "line 4: device.0.gap_power_mw: '20000000' is not a power in mW",
        ),
        ("\x00\x01garbage\xff", "NUL byte at offset 0"),
        ("\x01\x02garbage\xff\n", "line 1: expected key=value"),
        ("version=1\n" + "# padding\n" * 2000, "longer than"),
    ],
    ids=[
        "bytes",
        "unit",
        "version",
        "no-version",
        "no-equals",
        "unknown-key",
        "unknown-field",
        "cores",
        "index",
        "no-card",
        "period",
        "empty-region",
        "speedup-count",
        "speedup-range",
        "idle-power",
        "gap-power",
        "binary",
        "control-chars",
        "too-long",
    ],
)
def test_malformed_config_gives_no_gpu(hook_build: HookBuild, tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "vgpu.conf"
    conf.write_bytes(text.encode("latin-1"))
    r = run_client(hook_build, conf, "init_routes")
    assert_no_gpu(r)
    assert f"flexai-hook: config {conf}" in r.stderr and message in r.stderr, r.stderr
    checker = subprocess.run(
        [str(hook_build.build_dir / "flexai_config_check"), str(conf)], capture_output=True, text=True
    )
    assert checker.returncode == 1 and message in checker.stderr, checker.stderr
    with pytest.raises(ValueError):  # the agent's parser refuses what the hook refuses
        parse(text)


def test_missing_config_file_gives_no_gpu(hook_build: HookBuild, tmp_path: Path) -> None:
    r = run_client(hook_build, tmp_path / "absent.conf", "init_routes")
    assert_no_gpu(r)
    assert f"config {tmp_path / 'absent.conf'}: cannot read it (No such file or directory)" in r.stderr


def test_inline_comments_are_comments(hook_build: HookBuild, tmp_path: Path) -> None:
    conf = tmp_path / "vgpu.conf"
    conf.write_text(
        "version=1            # the format\n"
        f"region={tmp_path}/region   # shared\n"
        "device.0.cuda_index=0 # the first card\n"
        "device.0.memory_bytes=1073741824   # 1 GiB\n"
        "device.0.context_overhead_bytes=0\n"
    )
    assert parse(conf.read_text()).vgpus[0].memory_bytes == GiB
    over = run_client(hook_build, conf, "alloc", "2000")
    assert json.loads(over.stdout) == {"rc": 2, "free": GiB, "total": GiB}, over.stderr
    assert over.stderr == ""


def test_region_path_with_a_hash_is_refused_by_the_writer() -> None:
    with pytest.raises(ValueError, match="region_path"):
        HookConfig(vgpus=(VGPULimit(cuda_index=0),), region_path="/run/a#b")


def doc_configs() -> list[tuple[str, str]]:
    """(where, text) of every fenced block in the repository's Markdown that is a hook config."""
    tracked = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True)
    found = []
    for name in tracked.stdout.split():
        blocks = (REPO / name).read_text().split("```")[1::2]
        for i, block in enumerate(blocks):
            body = block.partition("\n")[2]  # drop the info string
            if any(line.partition("#")[0].strip().startswith("version=") for line in body.splitlines()):
                found.append((f"{name}#{i}", body))
    return found


def test_every_config_in_the_docs_parses(hook_build: HookBuild, tmp_path: Path) -> None:
    examples = doc_configs()
    assert any(where.startswith("csrc/hook/README.md") for where, _ in examples)
    for i, (where, text) in enumerate(examples):
        path = tmp_path / f"example{i}.conf"
        path.write_text(text)
        parse(text)  # the agent's reader
        checker = subprocess.run(
            [str(hook_build.build_dir / "flexai_config_check"), str(path)], capture_output=True, text=True
        )
        assert checker.returncode == 0, f"{where}: {checker.stderr}"


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink", "empty-file"])
def test_region_file_kinds(hook_build: HookBuild, tmp_path: Path, kind: str) -> None:
    """The hook opens only regular files, never through a final link, and never changes a mode it did not set."""
    import os
    import stat

    region = tmp_path / "region"
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    target.chmod(0o600)
    if kind == "fifo":
        os.mkfifo(region, 0o600)
    elif kind == "device":
        os.mknod(region, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == "symlink":
        region.symlink_to(target)
    else:
        region.write_bytes(b"")
        region.chmod(0o600)
    conf = tmp_path / "vgpu.conf"
    write_config(conf, HookConfig(vgpus=(VGPULimit(cuda_index=0, memory_bytes=GiB),), region_path=str(region)))
    r = run_client(hook_build, conf, "init_routes")
    if kind == "empty-file":  # a regular file: used as it is
        assert json.loads(r.stdout)["direct"] == 0, r.stderr
    else:
        assert_no_gpu(r)
        assert f"region {region}: " in r.stderr
    assert stat.S_IMODE(os.lstat(region).st_mode) == 0o600 or kind == "symlink"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
