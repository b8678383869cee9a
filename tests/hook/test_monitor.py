"""hook.shim + gpu-monitor on a region that live (and killed) processes use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flexai_node.hook.config import HookConfig, VGPULimit, write_config
from flexai_node.hook.monitor import main
from flexai_node.hook.shim import HookShim, ShimError

from .conftest import HookBuild

CLIENT = str(Path(__file__).with_name("ctypes_client.py"))
GiB = 1 << 30
MiB = 1 << 20
Holder = tuple["subprocess.Popen[str]", Path, Path]  # the process, its region, its config


@pytest.fixture
def holder(hook_build: HookBuild, tmp_path: Path) -> Iterator[Holder]:
    """A process under the hook holding 300 MiB (+64 MiB context) of a 1 GiB, 40% vGPU."""
    conf = tmp_path / "vgpu.conf"
    region = tmp_path / "region"
    write_config(
        conf,
        HookConfig(
            vgpus=(VGPULimit(cuda_index=0, memory_bytes=GiB, cores=40, context_overhead_bytes=64 * MiB),),
            region_path=str(region),
        ),
    )
    p = subprocess.Popen(
        [sys.executable, CLIENT, "hold", "300"], env=hook_build.env(conf), stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and json.loads(p.stdout.readline()) == {"ready": True}
    yield p, region, conf
    p.kill()
    p.wait()
    p.stdout.close()


def test_snapshot_sees_the_process_and_sweeps_it_once_killed(hook_build: HookBuild, holder: Holder) -> None:
    proc, region, _ = holder
    shim = HookShim(hook_build.shim)
    snap = shim.snapshot(region)
    assert [v.memory_used for v in snap.vgpus] == [364 * MiB]
    assert snap.vgpus[0].memory_limit == GiB and snap.vgpus[0].cores == 40
    assert [(p.pid, p.alive, p.memory_used) for p in snap.processes] == [(proc.pid, True, (364 * MiB,))]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    after = shim.snapshot(region)  # the reader sweeps the dead
    assert after.vgpus[0].memory_used == 0 and after.processes == ()


def test_gpu_monitor_text_and_json(
    hook_build: HookBuild, holder: Holder, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, region, conf = holder
    monkeypatch.setenv("FLEXAI_VGPU_CONFIG", str(conf))
    assert main(["-p", "0.1", "--shim", str(hook_build.shim)]) == 0
    text = capsys.readouterr().out
    assert "vGPU 0 (cuda:0): usage 0%, limit 40%, memory usage 364/1024 MB" in text
    assert f"pid {proc.pid}: core usage 0%, memory 364 MB" in text
    assert main(["-p", "0.1", "-o", "json", "--region", str(region), "--shim", str(hook_build.shim)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vgpus"] == [
        {
            "index": 0,
            "uuid": None,
            "usage_percent": 0.0,
            "limit_percent": 40,
            "memory_used_mb": 364,
            "memory_quota_mb": 1024,
            "processes": [{"pid": proc.pid, "core_usage_percent": 0.0, "memory_mb": 364}],
        }
    ]


def test_shim_errors(hook_build: HookBuild, tmp_path: Path) -> None:
    shim = HookShim(hook_build.shim)
    with pytest.raises(ShimError, match="ENOENT"):
        shim.snapshot(tmp_path / "nothing")
    (tmp_path / "junk").write_bytes(b"x" * 100000)
    with pytest.raises(ShimError, match="EINVAL"):
        shim.snapshot(tmp_path / "junk")
    # A region of layout version 1 (pids judged by the reader): a hook of another build.
    old = b"FLEXAIRG" + (1).to_bytes(4, "little") + (71448).to_bytes(4, "little")
    (tmp_path / "v1").write_bytes(old.ljust(100000, b"\0"))
    with pytest.raises(ShimError, match="EPROTO.*another layout version"):
        shim.snapshot(tmp_path / "v1")


def test_gpu_monitor_before_any_process(
    hook_build: HookBuild, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-p", "0.05", "-o", "json", "--region", str(tmp_path / "none"), "--shim", str(hook_build.shim)]) == 0
    assert json.loads(capsys.readouterr().out)["vgpus"] == []


def test_gpu_monitor_through_a_linked_directory_of_its_own(
    hook_build: HookBuild, holder: Holder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Images link /var/run to /run: gpu-monitor resolves its own directories, the file itself is not followed."""
    _, region, _ = holder
    (tmp_path / "varrun").symlink_to(region.parent)
    linked = tmp_path / "varrun" / region.name
    assert main(["-p", "0.01", "-o", "json", "--region", str(linked), "--shim", str(hook_build.shim)]) == 0
    assert json.loads(capsys.readouterr().out)["vgpus"][0]["memory_used_mb"] == 364
