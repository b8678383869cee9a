"""The chart's images, built here from the Dockerfiles (tools/images/build.sh: buildah on a
debootstrap base, no registry) and run with podman: each holds what the chart runs from it,
and the node image carries no web stack.

The build is cached outside the repository by its inputs, so only a change to the code,
the Dockerfiles or pyproject.toml rebuilds (cold: about 10 minutes on 2 cores).
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.e2e.controlplane import REPO_ROOT

BUILD = REPO_ROOT / "tools" / "images" / "build.sh"
SCHED = "docker.io/flexai/flexai-sched:0.1.0"
NODE = "docker.io/flexai/flexai-node:0.1.0"

pytestmark = pytest.mark.timeout(1800)  # a cold build: debootstrap, pip from PyPI, the hook


@cache
def built() -> dict[str, Path]:
    """Image reference -> archive, built (or found in the cache) once per session."""
    r = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{BUILD} failed ({r.returncode}):\n{r.stderr[-4000:]}"
    pairs = [line.split(" ", 1) for line in r.stdout.strip().splitlines()]
    return {ref: Path(path) for ref, path in pairs}


def run(image: str, *argv: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` in a fresh container of ``image`` (no network, removed afterwards)."""
    built()
    # Explicit limits: podman's defaults (and "host") are refused by these VMs' runc; runc, not
    # crun, because crun refuses hosts that mount cgroup v1 beside an empty v2 hierarchy.
    cmd = [
        "podman",
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
    ]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, image, *argv], capture_output=True, text=True, timeout=120, check=False)


def test_every_image_is_archived_for_the_node_runtime() -> None:
    images = built()
    assert set(images) >= {SCHED, NODE}
    assert any(ref.startswith("localhost/kube-scheduler:") for ref in images)
    assert any(ref.startswith("localhost/flexai-views-nginx:") for ref in images)
    for ref, archive in images.items():
        assert archive.is_file() and archive.stat().st_size > 1 << 20, (ref, archive)
        assert not archive.is_relative_to(REPO_ROOT), f"{archive}: caches live outside the repository"


def test_a_second_build_is_the_cache() -> None:
    first = built()
    r = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, check=True)
    again = {ref: Path(path) for ref, path in (line.split(" ", 1) for line in r.stdout.strip().splitlines())}
    assert again == first
    assert "building" not in r.stderr and "making" not in r.stderr, r.stderr


def test_the_scheduler_image_runs_the_extender_as_the_charts_user() -> None:
    r = run(SCHED, "-c", "import os, flexai_sched.app; print(os.getuid())", entrypoint="python")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "65532"  # scheduler-deployment.yaml's runAsUser
    r = run(SCHED, "serve", "--help")
    assert r.returncode == 0 and "--in-cluster" in r.stdout, r.stderr
    r = run(SCHED, "-m", "pip", "--version", entrypoint="python")
    assert r.returncode != 0, "pip is left out of the image"


def test_the_node_image_has_the_agent_and_the_hook_but_no_web_stack() -> None:
    r = run(NODE, "flexai-node", "--help")
    assert r.returncode == 0, r.stderr
    r = run(NODE, "gpu-monitor", "--help")
    assert r.returncode == 0, r.stderr
    r = run(NODE, "python", "-c", "import grpc, pynvml, kubernetes, flexai_node.agent")
    assert r.returncode == 0, r.stderr
    # pydantic stays: the Kubernetes client itself requires it.
    for web in ("fastapi", "starlette", "uvicorn", "httptools", "uvloop"):
        r = run(NODE, "python", "-c", f"import {web}")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, f"{web} is in the node image"
    r = run(
        NODE,
        "python",
        "-c",
        "import ctypes; [ctypes.CDLL('/usr/local/flexai/lib/' + n) for n in "
        "('libflexai_shim.so',)]; print(open('/usr/local/flexai/lib/libflexai_hook.so','rb').read(4))",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(b"\x7fELF")


def test_the_kube_scheduler_image_is_the_control_plane_build() -> None:
    ref = next(r for r in built() if r.startswith("localhost/kube-scheduler:"))
    r = run(ref, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == ref.rsplit(":", 1)[1]
