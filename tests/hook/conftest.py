"""Build the hook (CMake, into build/hook) once per session; give tests its paths and an env to run under it."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "csrc" / "hook"
BUILD = REPO / "build" / "hook"


@dataclass(frozen=True)
class HookBuild:
    build_dir: Path
    hook: Path  # libflexai_hook.so
    shim: Path  # libflexai_shim.so
    fake_dir: Path  # fake libcuda.so.1 / libnvidia-ml.so.1
    tests: Path  # hook_tests

    def env(self, config: Path | None, **extra: str) -> dict[str, str]:
        """Environment of a process running under the hook on the fake driver."""
        env = {k: v for k, v in os.environ.items() if k not in ("FLEXAI_VGPU_CONFIG", "CUDA_VISIBLE_DEVICES")}
        env.update(LD_PRELOAD=str(self.hook), LD_LIBRARY_PATH=str(self.fake_dir), FAKECUDA_MEM_MB="16384")
        if config is not None:
            env["FLEXAI_VGPU_CONFIG"] = str(config)
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def hook_build() -> HookBuild:
    configure = [
        "cmake",
        "-S",
        str(SOURCE),
        "-B",
        str(BUILD),
        "-DFLEXAI_WERROR=ON",
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
    ]
    subprocess.run(configure, check=True, capture_output=True, text=True)
    build = subprocess.run(
        ["cmake", "--build", str(BUILD), "-j", str(os.cpu_count() or 2)], capture_output=True, text=True
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "warning" not in build.stdout + build.stderr
    return HookBuild(
        build_dir=BUILD,
        hook=BUILD / "libflexai_hook.so",
        shim=BUILD / "libflexai_shim.so",
        fake_dir=BUILD / "fake",
        tests=BUILD / "hook_tests",
    )
