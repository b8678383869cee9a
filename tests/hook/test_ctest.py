"""The C tests of the hook against the fake driver (CTest), run from pytest."""

from __future__ import annotations

import subprocess

from .conftest import HookBuild


def test_ctest_passes(hook_build: HookBuild) -> None:
    r = subprocess.run(
        ["ctest", "--test-dir", str(hook_build.build_dir), "--output-on-failure", "-j", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "100% tests passed" in r.stdout, r.stdout
