"""HookShim.calibrate through ctypes against the fake driver (the C side: CTest hook.calibrate)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.hook.conftest import REPO, HookBuild

UUID0 = "GPU-a0a1a2a3-a4a5-a6a7-a8a9-aaabacadae00"  # fake_cuda.c's card 0

PROBE = """
import json, sys
from flexai_node.hook.shim import CalibrationError, HookShim
shim = HookShim(sys.argv[1])
try:
    c = shim.calibrate(sys.argv[2], burst_ms=300)
    print(json.dumps({"mhz": c.sm_clock_mhz, "top": c.max_sm_clock_mhz, "kernel": c.kernel, "samples": c.samples}))
except CalibrationError as e:
    print(json.dumps({"error": str(e), "busy": e.busy}))
"""


def calibrate(hook_build: HookBuild, uuid: str, **env: str) -> dict[str, object]:
    e = {
        "PYTHONPATH": str(REPO),
        "FLEXAI_REAL_LIBCUDA": str(hook_build.fake_dir / "libcuda.so.1"),
        "FLEXAI_REAL_LIBNVML": str(hook_build.fake_dir / "libnvidia-ml.so.1"),
        "FAKECUDA_KERNEL_US": "2000",
        "FAKECUDA_SM_MAX_CLOCK": "1980",
        "FAKECUDA_SM_CLOCK": "1455",
        **env,
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(hook_build.shim), uuid],
        env=e,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_calibrate_reads_the_full_load_clock(hook_build: HookBuild) -> None:
    r = calibrate(hook_build, UUID0)
    assert (r["mhz"], r["top"], r["kernel"]) == (1455, 1980, "mma")
    assert isinstance(r["samples"], int) and r["samples"] > 20


def test_busy_card_raises_busy(hook_build: HookBuild) -> None:
    r = calibrate(hook_build, UUID0, FAKECUDA_UTIL="60")
    assert r["busy"] is True and "EBUSY" in str(r["error"])


def test_unknown_card_raises_not_busy(hook_build: HookBuild) -> None:
    r = calibrate(hook_build, "GPU-00000000-0000-0000-0000-000000000000")
    assert r["busy"] is False and "ENODEV" in str(r["error"])
