"""System calls the hook makes for N allocate/free pairs in one process (fake driver, strace).

    .venv/bin/python bench/hook_syscalls.py [build/hook]

Prints, for N = 10 and N = 10000 pairs of cuMemAlloc_v2/cuMemFree_v2 under a 1 GiB limit
with a shared region, the count of each locking-related system call (fcntl: the slot's
liveness lock and sweeps; flock: region initialisation). Equal counts for both N = nothing
per call on the allocation path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

CALLS = ("fcntl", "flock", "openat", "pread64")
CLIENT = """
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0
dev, ctx = ctypes.c_int(), ctypes.c_void_p()
assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
assert cuda.cuCtxSetCurrent(ctx) == 0
p = ctypes.c_uint64()
for _ in range(int(sys.argv[1])):
    assert cuda.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(1 << 20)) == 0
    assert cuda.cuMemFree_v2(p) == 0
"""


def counts(build: Path, n: int, tmp: Path) -> dict[str, int]:
    conf = tmp / f"{n}.conf"
    conf.write_text(f"version=1\nregion={tmp}/{n}.region\ndevice.0.cuda_index=0\ndevice.0.memory_bytes=1073741824\n")
    out = tmp / f"{n}.strace"
    env = dict(
        os.environ,
        LD_PRELOAD=str(build / "libflexai_hook.so"),
        LD_LIBRARY_PATH=str(build / "fake"),
        FLEXAI_VGPU_CONFIG=str(conf),
    )
    subprocess.run(
        ["strace", "-f", "-c", "-e", "trace=" + ",".join(CALLS), "-o", str(out), sys.executable, "-c", CLIENT, str(n)],
        env=env,
        check=True,
    )
    found = dict.fromkeys(CALLS, 0)
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in found:
            found[parts[-1]] = int(parts[3])
    return found


def main() -> None:
    build = Path(sys.argv[1] if len(sys.argv) > 1 else "build/hook").resolve()
    with tempfile.TemporaryDirectory() as d:
        rows = {n: counts(build, n, Path(d)) for n in (10, 10000)}
    print("pairs  " + "  ".join(f"{c:>8}" for c in CALLS))
    for n, c in rows.items():
        print(f"{n:>5}  " + "  ".join(f"{c[k]:>8}" for k in CALLS))
    extra = {k: rows[10000][k] - rows[10][k] for k in CALLS}
    print("extra for 9990 more pairs:", extra)


if __name__ == "__main__":
    main()
