"""Isolation on a real node: tenants and readers in different PID namespaces, links a tenant plants.

Each tenant runs in its own PID namespace (``unshare --pid --fork --mount-proc``), as a
container's processes do; the test process plays the node agent (another namespace).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flexai_node.hook.config import HookConfig, VGPULimit, write_config
from flexai_node.hook.monitor import main as gpu_monitor
from flexai_node.hook.regions import RegionUsageReader
from flexai_node.hook.shim import HookShim, ShimError

from .conftest import HookBuild

CLIENT = str(Path(__file__).with_name("ctypes_client.py"))
GiB = 1 << 30
MiB = 1 << 20
OOM = 2
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def slice_config(tmp_path: Path, name: str = "vgpu.conf") -> tuple[Path, Path]:
    """A 1 GiB vGPU without context overhead, its region under tmp_path/region/."""
    (tmp_path / "region").mkdir(exist_ok=True)
    region = tmp_path / "region" / "region"
    conf = tmp_path / name
    write_config(
        conf,
        HookConfig(
            vgpus=(VGPULimit(cuda_index=0, memory_bytes=GiB, context_overhead_bytes=0),), region_path=str(region)
        ),
    )
    return conf, region


class Tenant:
    """A CUDA process holding memory, alone in its own PID namespace."""

    def __init__(self, build: HookBuild, conf: Path, mib: int) -> None:
        self.proc = subprocess.Popen(
            [*UNSHARE, sys.executable, CLIENT, "hold", str(mib)], env=build.env(conf), stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def child_pid(self) -> int:
        """The tenant's pid as the parent namespace sees it (unshare's only child)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1
        return int(children[0])

    def kill(self) -> None:
        os.kill(self.child_pid(), signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def tenants(hook_build: HookBuild) -> Iterator[list[Tenant]]:
    started: list[Tenant] = []
    yield started
    for t in started:
        t.close()


def other_tenant_alloc(build: HookBuild, conf: Path, mib: int) -> int:
    """Another process of the container, in a third PID namespace: its cuMemAlloc's result."""
    r = subprocess.run(
        [*UNSHARE, sys.executable, CLIENT, "alloc", str(mib)],
        env=build.env(conf),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["rc"])


def test_readers_in_other_pid_namespaces_free_nothing(
    hook_build: HookBuild, tmp_path: Path, tenants: list[Tenant], capsys: pytest.CaptureFixture[str]
) -> None:
    conf, region = slice_config(tmp_path)
    tenants.append(Tenant(hook_build, conf, 700))
    shim = HookShim(hook_build.shim)
    agent = RegionUsageReader(lambda uid, c: region, shim)
    for _ in range(3):  # the agent's reader, every poll
        snap = shim.snapshot(region)
        assert snap.vgpus[0].memory_used == 700 * MiB
        assert [(p.alive, p.memory_used) for p in snap.processes] == [(True, (700 * MiB,))]
        assert agent.read("uid", "main")[""].memory_used_mib == 700
    assert gpu_monitor(["-p", "0.01", "-o", "json", "--region", str(region), "--shim", str(hook_build.shim)]) == 0
    assert json.loads(capsys.readouterr().out)["vgpus"][0]["memory_used_mb"] == 700
    # gpu-monitor in a namespace of its own, as `kubectl exec` into a sidecar would run it
    monitor = subprocess.run(
        [
            *UNSHARE,
            sys.executable,
            "-m",
            "flexai_node.hook.monitor",
            "-p",
            "0.01",
            "-o",
            "json",
            "--region",
            str(region),
            "--shim",
            str(hook_build.shim),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(monitor.stdout)["vgpus"][0]["processes"][0]["memory_mb"] == 700, monitor.stderr
    # A process of the container in a third namespace attaches (and sweeps) too: 700 + 700 > 1024.
    assert other_tenant_alloc(hook_build, conf, 700) == OOM
    assert other_tenant_alloc(hook_build, conf, 300) == 0
    assert shim.snapshot(region).vgpus[0].memory_used == 700 * MiB


def test_a_killed_tenant_is_freed_whoever_reads(hook_build: HookBuild, tmp_path: Path, tenants: list[Tenant]) -> None:
    conf, region = slice_config(tmp_path)
    tenant = Tenant(hook_build, conf, 700)
    tenants.append(tenant)
    shim = HookShim(hook_build.shim)
    assert shim.snapshot(region).vgpus[0].memory_used == 700 * MiB
    tenant.kill()
    deadline = time.monotonic() + 3
    while shim.snapshot(region).vgpus[0].memory_used != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    snap = shim.snapshot(region)  # a read-only reader reports the dead as freed
    assert snap.vgpus[0].memory_used == 0 and snap.processes == ()
    assert other_tenant_alloc(hook_build, conf, 700) == 0  # and a live hook process frees them


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_reader_never_writes_the_region(hook_build: HookBuild, tmp_path: Path, tenants: list[Tenant]) -> None:
    conf, region = slice_config(tmp_path)
    tenant = Tenant(hook_build, conf, 700)
    tenants.append(tenant)
    tenant.kill()  # a dead slot a writing reader would sweep
    before = digest(region)
    snap = HookShim(hook_build.shim).snapshot(region)
    assert snap.vgpus[0].memory_used == 0
    assert digest(region) == before


@pytest.fixture
def two_containers(hook_build: HookBuild, tmp_path: Path, tenants: list[Tenant]) -> tuple[Path, Path]:
    """Container A with a live tenant holding 700 MiB; container B's region directory, empty."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    conf, region_a = slice_config(a)
    tenants.append(Tenant(hook_build, conf, 700))
    (b / "region").mkdir()
    return region_a, b / "region" / "region"


def test_a_planted_symlink_is_not_followed(
    hook_build: HookBuild, two_containers: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    region_a, region_b = two_containers
    region_b.symlink_to(region_a)  # B's tenant points its region at A's
    shim = HookShim(hook_build.shim)
    with pytest.raises(ShimError, match="ELOOP"):
        shim.snapshot(region_b)
    with caplog.at_level(logging.WARNING):
        assert RegionUsageReader(lambda uid, c: region_b, shim).read("uid-b", "main") == {}
    assert f"region {region_b} refused" in caplog.text
    region_b.unlink()
    region_b.symlink_to(region_b.parent / "missing")  # a dangling one: no usage, no error
    assert RegionUsageReader(lambda uid, c: region_b, shim).read("uid-b", "main") == {}


def test_a_symlinked_directory_is_not_followed(hook_build: HookBuild, two_containers: tuple[Path, Path]) -> None:
    region_a, region_b = two_containers
    region_b.parent.rmdir()
    region_b.parent.symlink_to(region_a.parent)  # the whole region directory swapped for A's
    with pytest.raises(ShimError, match="ENOTDIR|ELOOP"):
        HookShim(hook_build.shim).snapshot(region_b)


def test_a_hard_link_is_refused(hook_build: HookBuild, two_containers: tuple[Path, Path]) -> None:
    region_a, _ = two_containers
    os.link(region_a, region_a.parent / "alias")
    with pytest.raises(ShimError, match="EPERM"):
        HookShim(hook_build.shim).snapshot(region_a.parent / "alias")


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_region_that_is_not_a_regular_file_is_refused_without_blocking(
    hook_build: HookBuild, tmp_path: Path, kind: str
) -> None:
    region = tmp_path / "region"
    if kind == "fifo":
        os.mkfifo(region, 0o600)
    elif kind == "device":
        os.mknod(region, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    else:
        region.mkdir()
    # A FIFO opened for reading would block forever: run the read in a child with a timeout.
    code = (
        "import sys; from flexai_node.hook.shim import HookShim, ShimError\n"
        f"try: HookShim({str(hook_build.shim)!r}).snapshot({str(region)!r})\n"
        "except ShimError as e: print(e); sys.exit(3)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert r.returncode == 3 and "EPERM" in r.stdout, r.stdout + r.stderr
    assert stat.S_IMODE(os.lstat(region).st_mode) in (0o600, 0o755)  # untouched


def test_a_reader_survives_the_tenant_truncating_the_region(hook_build: HookBuild, tmp_path: Path) -> None:
    """The tenant can truncate its region at any moment: the reader copies, it never maps (SIGBUS)."""
    conf, region = slice_config(tmp_path)
    r = subprocess.run(
        [sys.executable, CLIENT, "alloc", "1"], env=hook_build.env(conf), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    size = region.stat().st_size
    tenant = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys\nwhile True:\n os.truncate(sys.argv[1], 0); os.truncate(sys.argv[1], int(sys.argv[2]))",
            str(region),
            str(size),
        ]
    )
    code = (
        "import sys, time; from flexai_node.hook.shim import HookShim, ShimError\n"
        f"shim, end, ok = HookShim({str(hook_build.shim)!r}), time.monotonic() + 1.5, 0\n"
        "while time.monotonic() < end:\n"
        "    try: shim.snapshot(sys.argv[1]); ok += 1\n"
        "    except ShimError: pass\n"
        "print(ok)\n"
    )
    try:
        reader = subprocess.run([sys.executable, "-c", code, str(region)], capture_output=True, text=True, timeout=60)
    finally:
        tenant.kill()
        tenant.wait()
    assert reader.returncode == 0, (reader.returncode, reader.stderr)
