"""A CUDA program in Python (ctypes on libcuda.so.1), run under the hook by the tests.

    python ctypes_client.py <action> [MiB]

ctypes resolves every function with dlsym on libcuda's handle, so this exercises the
hook's dlsym path; `gpa_alloc` goes through cuGetProcAddress_v2 like the CUDA runtime.
Prints one JSON object; exit 0 unless the driver answered something unexpected.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time

OOM = 2
MiB = 1 << 20

cuda = ctypes.CDLL("libcuda.so.1")


def check(rc: int, what: str) -> None:
    if rc != 0:
        raise SystemExit(f"{what} -> {rc}")


def open_ctx() -> None:
    check(cuda.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "retain")
    check(cuda.cuCtxSetCurrent(ctx), "set")


def mem_info() -> tuple[int, int]:
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    check(cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo_v2")
    return free.value, total.value


def main() -> None:
    action = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if action == "init_routes":  # cuInit reached directly, through cuGetProcAddress_v2, then a context
        fn = ctypes.c_void_p()
        status = ctypes.c_int()
        check(
            cuda.cuGetProcAddress_v2(b"cuInit", ctypes.byref(fn), 13000, ctypes.c_uint64(0), ctypes.byref(status)),
            "gpa",
        )
        assert fn.value is not None
        via_gpa = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint)(fn.value)(0)
        direct = cuda.cuInit(0)
        ctx, dev = ctypes.c_void_p(), ctypes.c_int()
        retain = cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), ctypes.c_int(0))
        count = ctypes.c_int()
        print(
            json.dumps(
                {
                    "direct": direct,
                    "gpa": via_gpa,
                    "retain": retain,
                    "device_get": cuda.cuDeviceGet(ctypes.byref(dev), 0),
                    "device_count": cuda.cuDeviceGetCount(ctypes.byref(count)),
                }
            )
        )
        return
    open_ctx()
    ptr = ctypes.c_uint64()
    if action == "alloc":  # allocate mib, report rc and what the getters say
        rc = cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(mib * MiB))
        free, total = mem_info()
        print(json.dumps({"rc": rc, "free": free, "total": total}))
    elif action == "gpa_alloc":  # the same through cuGetProcAddress_v2
        fn = ctypes.c_void_p()
        status = ctypes.c_int()
        check(
            cuda.cuGetProcAddress_v2(b"cuMemAlloc", ctypes.byref(fn), 13000, ctypes.c_uint64(0), ctypes.byref(status)),
            "gpa",
        )
        assert fn.value is not None
        alloc = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t)(fn.value)
        first = alloc(ctypes.byref(ptr), mib * MiB)
        second = alloc(ctypes.byref(ptr), mib * MiB)
        print(json.dumps({"first": first, "second": second}))
    elif action == "hold":  # allocate mib and wait to be killed
        check(cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(mib * MiB)), "alloc")
        print(json.dumps({"ready": True}), flush=True)
        time.sleep(60)
    else:
        raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    main()
