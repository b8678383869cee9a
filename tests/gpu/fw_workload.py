"""One framework workload in a child process, for tests/gpu/frameworks.py (under the hook or not).

    python tests/gpu/fw_workload.py <kind> [--seconds S] [--start-at T] [--chunk-mib M] ...

Prints one JSON line (the last line starting with "{") with what it measured. Kinds:
  matmul, graph, elementwise   PyTorch: bf16 4096^3 products; the same 20 in a CUDA graph;
                               x = x * a + b over 256 MiB (memory-bound)
  triton                       a Triton bf16 matmul kernel (4096^3) in a loop
  jax                          a jitted bf16 4096^3 matmul in a loop
  llama                        tokens/s of a ~1.1B Llama built from a config (random weights),
                               generate() with a static cache under torch.compile(mode="reduce-overhead")
  mem_torch, mem_jax, mem_cupy allocate until the framework's out-of-memory error; what each
                               framework, nvidia-smi and pynvml report (env decides JAX preallocation)
  workers                      a parent and 4 spawned DataLoader-style workers allocate in one slice
  fork                         CUDA initialised, then fork(): the child tries CUDA, then execs an allocator
  serve                        --serve NAME: one block per stdin line (bench/hook_gpu.py interleaved())
"""

# mypy: disable-error-code="no-untyped-def,untyped-decorator"
# (Triton kernels take untyped parameters: Triton reads their annotations itself.)
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

N = 4096
MATMUL_FLOP = 2 * N**3
MiB = 1 << 20


def wait_until(t: float | None) -> None:
    if t is not None:
        while time.time() < t:
            time.sleep(0.001)


def timed(
    step: Callable[[], object],
    sync: Callable[[], object],
    seconds: float,
    per_step: float,
    start_at: float | None,
    sync_every: int,
    warm_s: float = 0.5,
) -> dict[str, Any]:
    """Steps for `seconds` after a warm-up, synchronising every `sync_every` steps (~10+ ms of
    GPU work apart, so the unlimited baseline keeps the card busy). Rate = per_step units / s."""
    for _ in range(5):
        step()
    sync()
    t_end = time.time() + warm_s
    while time.time() < t_end:
        for _ in range(sync_every):
            step()
        sync()
    wait_until(start_at)
    t_start = time.time()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(sync_every):
            step()
        n += sync_every
        sync()
    dt = time.perf_counter() - t0
    return {"steps": n, "seconds": round(dt, 3), "rate": n * per_step / dt, "t_start": t_start, "t_end": time.time()}


# ---- PyTorch ----------------------------------------------------------------------------


def torch_matmul(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    a = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    c = torch.empty_like(a)
    r = timed(
        lambda: torch.matmul(a, b, out=c), torch.cuda.synchronize, args.seconds, MATMUL_FLOP / 1e12, args.start_at, 256
    )
    return {**r, "unit": "TFLOP/s"}


def torch_graph(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    a = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    c = torch.empty_like(a)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            torch.matmul(a, b, out=c)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        for _ in range(20):
            torch.matmul(a, b, out=c)
    r = timed(g.replay, torch.cuda.synchronize, args.seconds, 20 * MATMUL_FLOP / 1e12, args.start_at, 8)
    return {**r, "unit": "TFLOP/s"}


def torch_elementwise(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    x = torch.randn(64 * MiB, device="cuda")  # 256 MiB of float32
    bytes_per_step = 2 * x.numel() * 4  # read + write

    def step() -> None:
        x.mul_(0.999).add_(0.001)

    r = timed(step, torch.cuda.synchronize, args.seconds, 2 * bytes_per_step / 1e9, args.start_at, 64)
    return {**r, "unit": "GB/s"}


# ---- Triton -----------------------------------------------------------------------------

_TRITON: dict[str, Any] = {}


def triton_step() -> tuple[Callable[[], None], float]:
    """A launch of a Triton bf16 matmul kernel on 4096^3 (built once per process), and its
    relative error against PyTorch's product in float32."""
    if "step" in _TRITON:
        return _TRITON["step"], _TRITON["err"]
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(
        a_ptr,
        b_ptr,
        c_ptr,
        M,
        N_,
        K,
        sam,
        sak,
        sbk,
        sbn,
        scm,
        scn,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
        GM: tl.constexpr,
    ):
        pid = tl.program_id(0)
        npm, npn = tl.cdiv(M, BM), tl.cdiv(N_, BN)
        group = GM * npn
        first = (pid // group) * GM
        gm = min(npm - first, GM)
        pm = first + ((pid % group) % gm)
        pn = (pid % group) // gm
        rm = (pm * BM + tl.arange(0, BM)) % M
        rn = (pn * BN + tl.arange(0, BN)) % N_
        rk = tl.arange(0, BK)
        a = a_ptr + rm[:, None] * sam + rk[None, :] * sak
        b = b_ptr + rk[:, None] * sbk + rn[None, :] * sbn
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for _ in range(0, tl.cdiv(K, BK)):
            acc += tl.dot(tl.load(a), tl.load(b))
            a += BK * sak
            b += BK * sbk
        cm = pm * BM + tl.arange(0, BM)
        cn = pn * BN + tl.arange(0, BN)
        tl.store(c_ptr + cm[:, None] * scm + cn[None, :] * scn, acc.to(tl.bfloat16))

    a = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    c = torch.empty_like(a)
    grid = (triton.cdiv(N, 128) * triton.cdiv(N, 128),)

    def step() -> None:
        kernel[grid](
            a,
            b,
            c,
            N,
            N,
            N,
            a.stride(0),
            a.stride(1),
            b.stride(0),
            b.stride(1),
            c.stride(0),
            c.stride(1),
            BM=128,
            BN=128,
            BK=64,
            GM=8,
            num_warps=8,
            num_stages=3,
        )

    c.fill_(float("nan"))
    step()
    torch.cuda.synchronize()
    ref = a.float() @ b.float()
    err = float(((c.float() - ref).norm() / ref.norm()).item())
    _TRITON.update(step=step, err=err)
    return step, err


def triton_matmul(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    step, err = triton_step()
    r = timed(step, torch.cuda.synchronize, args.seconds, MATMUL_FLOP / 1e12, args.start_at, 64)
    return {**r, "unit": "TFLOP/s", "rel_error": err}


# ---- JAX --------------------------------------------------------------------------------


def jax_matmul(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (N, N), dtype=jnp.bfloat16)
    b = jax.random.normal(kb, (N, N), dtype=jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    out: list[Any] = [f(a, b)]

    def step() -> None:
        out[0] = f(a, b)

    r = timed(step, lambda: out[0].block_until_ready(), args.seconds, MATMUL_FLOP / 1e12, args.start_at, 64)
    return {**r, "unit": "TFLOP/s", "backend": jax.default_backend()}


# ---- transformers Llama -----------------------------------------------------------------


def build_llama() -> tuple[Any, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    # 1.09B parameters: d 2048, 16 layers, MLP 8192, grouped-query attention (4 KV heads).
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16).eval()
    return model, cfg


def llama_generator(batch: int, prompt: int, new: int) -> tuple[Callable[[], Any], dict[str, Any]]:
    """A call that generates `new` tokens for `batch` prompts, compiled the vLLM way (static KV
    cache, torch.compile mode reduce-overhead: CUDA graphs); and facts about the model."""
    import torch

    model, cfg = build_llama()
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt), device="cuda")
    kw: dict[str, Any] = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static")
    how = "generate(compile_config=CompileConfig(mode='reduce-overhead'))"
    try:
        from transformers import CompileConfig

        kw["compile_config"] = CompileConfig(mode="reduce-overhead", fullgraph=True)
    except ImportError:
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        how = "model.forward = torch.compile(mode='reduce-overhead')"

    def gen() -> Any:
        with torch.inference_mode():
            return model.generate(ids, **kw)

    t0 = time.perf_counter()
    out = gen()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    assert out.shape == (batch, prompt + new), out.shape
    gen()  # the second call may still capture graphs
    torch.cuda.synchronize()
    import torch._dynamo.utils as du

    info = {
        "params": params,
        "how": how,
        "first_call_s": round(first, 1),
        "dynamo_graphs": int(du.counters["stats"].get("unique_graphs", 0)),
    }
    return gen, info


def llama(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    batch, prompt, new = 8, 128, 64
    gen, info = llama_generator(batch, prompt, new)
    r = timed(gen, torch.cuda.synchronize, args.seconds, batch * new, args.start_at, 1, warm_s=0.3)
    return {**r, "unit": "tokens/s", **info}


# ---- memory -----------------------------------------------------------------------------


def smi_and_nvml() -> dict[str, Any]:
    """What nvidia-smi and pynvml show from inside this (hooked) process, for card 0."""
    out: dict[str, Any] = {}
    r = subprocess.run(
        ["nvidia-smi", "-i", "0", "--query-gpu=memory.total,memory.used,memory.free", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    )
    out["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()[-200:]
    try:
        import pynvml

        pynvml.nvmlInit()
        m = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        out["pynvml_mib"] = {"total": m.total >> 20, "used": m.used >> 20, "free": m.free >> 20}
        pynvml.nvmlShutdown()
    except Exception as e:  # a report, not the measurement
        out["pynvml_mib"] = {"error": repr(e)}
    return out


def mem_torch(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    free0, total0 = torch.cuda.mem_get_info()
    held, allocated, err = [], 0, ""
    try:
        while True:
            held.append(torch.empty(args.chunk_mib * MiB, dtype=torch.uint8, device="cuda"))
            allocated += args.chunk_mib * MiB
    except torch.cuda.OutOfMemoryError as e:
        err = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    free1, _ = torch.cuda.mem_get_info()
    return {
        "mem_get_info_mib": [free0 >> 20, total0 >> 20],
        "free_after_mib": free1 >> 20,
        "allocated_mib": allocated >> 20,
        "error": err,
        **smi_and_nvml(),
    }


def mem_jax(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    dev = jax.devices()[0]
    x = jnp.ones((1024,), jnp.float32).block_until_ready()
    stats0 = dev.memory_stats() or {}
    seen = smi_and_nvml()  # with preallocation: the pool is taken now
    held, allocated, err = [x], 0, ""
    n = args.chunk_mib * MiB // 4
    try:
        for i in range(10000):
            held.append(jnp.full((n,), float(i), jnp.float32).block_until_ready())
            allocated += args.chunk_mib * MiB
    except Exception as e:  # XlaRuntimeError / JaxRuntimeError: RESOURCE_EXHAUSTED
        err = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    stats1 = dev.memory_stats() or {}
    keys = (
        "bytes_limit",
        "bytes_in_use",
        "peak_bytes_in_use",
        "bytes_reserved",
        "largest_free_block_bytes",
        "pool_bytes",
    )
    return {
        "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "default"),
        "stats_before_mib": {k: stats0[k] >> 20 for k in keys if k in stats0},
        "stats_after_mib": {k: stats1[k] >> 20 for k in keys if k in stats1},
        "allocated_mib": allocated >> 20,
        "error": err,
        **seen,
    }


def mem_cupy(args: argparse.Namespace) -> dict[str, Any]:
    import cupy

    free0, total0 = cupy.cuda.runtime.memGetInfo()
    dev_info = cupy.cuda.Device(0).mem_info
    held, allocated, err = [], 0, ""
    try:
        while True:
            held.append(cupy.empty(args.chunk_mib * MiB, dtype=cupy.uint8))
            allocated += args.chunk_mib * MiB
    except cupy.cuda.memory.OutOfMemoryError as e:
        err = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    pool = cupy.get_default_memory_pool()
    return {
        "memGetInfo_mib": [free0 >> 20, total0 >> 20],
        "device_mem_info_mib": [dev_info[0] >> 20, dev_info[1] >> 20],
        "allocated_mib": allocated >> 20,
        "pool_total_mib": pool.total_bytes() >> 20,
        "error": err,
        **smi_and_nvml(),
    }


def _worker(rank: int, chunk_mib: int, barrier: Any, results: Any) -> None:
    """A DataLoader-style worker (spawned) that allocates until refused, then waits for the rest."""
    import torch

    got, err, total = 0, "", 0
    held = []
    try:
        total = torch.cuda.mem_get_info()[1]
        for _ in range(1000):
            held.append(torch.empty(chunk_mib * MiB, dtype=torch.uint8, device="cuda"))
            got += chunk_mib
            time.sleep(0.01)  # the workers take turns at the last bytes
    except torch.cuda.OutOfMemoryError as e:
        err = type(e).__name__
    except Exception as e:
        err = repr(e)[:200]
    results[rank] = (got, err, total >> 20)
    barrier.wait(timeout=60)  # hold everything until every worker has been refused


def workers(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.multiprocessing as mp

    parent = torch.empty(1024 * MiB, dtype=torch.uint8, device="cuda")  # the training process's own memory
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(5)
    manager = ctx.Manager()
    results = manager.dict()
    procs = [ctx.Process(target=_worker, args=(r, args.chunk_mib, barrier, results)) for r in range(4)]
    for p in procs:
        p.start()
    shim_view: dict[str, Any] = {}
    try:
        barrier.wait(timeout=120)
        shim_view = region_view()
    finally:
        for p in procs:
            p.join(timeout=60)
    del parent
    return {
        "parent_mib": 1024,
        "workers": {str(k): list(v) for k, v in results.items()},
        "exitcodes": [p.exitcode for p in procs],
        **shim_view,
    }


def region_view() -> dict[str, Any]:
    """The container's region as the node agent reads it (shim), while everyone holds memory."""
    region = os.environ.get("FW_REGION")
    shim = os.environ.get("FLEXAI_SHIM_LIBRARY")
    if not region or not shim:
        return {}
    sys.path.insert(0, os.environ.get("FW_REPO", "."))
    from flexai_node.hook.shim import HookShim

    snap = HookShim(shim).snapshot(region)
    v = snap.vgpus[0]
    return {
        "region_used_mib": v.memory_used >> 20,
        "region_limit_mib": v.memory_limit >> 20,
        "region_processes": sum(1 for p in snap.processes if p.alive and p.memory_used[0] > 0),
    }


def driver_probe(slice_mib: int) -> dict[str, Any]:
    """The driver API through ctypes (as Triton or a custom allocator reaches it): ask for a
    whole slice at once; the answer codes (2 = out of memory, 3 = not initialised)."""
    import ctypes

    cuda = ctypes.CDLL("libcuda.so.1")
    ptr, dev, ctx = ctypes.c_uint64(), ctypes.c_int(), ctypes.c_void_p()
    out = {"cuInit": cuda.cuInit(0), "cuDeviceGet": cuda.cuDeviceGet(ctypes.byref(dev), 0)}
    out["ctx_retain"] = cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)
    out["ctx_set"] = cuda.cuCtxSetCurrent(ctx)
    out["alloc_whole_slice"] = cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(slice_mib * MiB))
    return out


def fork(args: argparse.Namespace) -> dict[str, Any]:
    """CUDA initialised and memory held, then fork(). The child tries PyTorch's CUDA (PyTorch
    refuses in a forked child) and the driver directly (ctypes), then execs a fresh allocator
    that must stay inside what the parent left of the slice."""
    import signal
    import tempfile

    import torch

    held = torch.empty(args.hold_mib * MiB, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    exec_out = tempfile.mktemp(prefix="fw-fork-", suffix=".json")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        res: dict[str, Any] = {}
        signal.alarm(30)  # a hang in the driver shows as SIGALRM, not as a stuck test
        try:
            torch.empty(16, device="cuda")
            res["torch_in_child"] = "allocated"
        except Exception as e:
            res["torch_in_child"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        try:
            res["driver_in_child"] = driver_probe(args.slice_mib)
        except Exception as e:
            res["driver_in_child"] = repr(e)[:200]
        signal.alarm(0)
        os.write(w, json.dumps(res).encode())
        os.close(w)
        fd = os.open(exec_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.execv(sys.executable, [sys.executable, __file__, "mem_torch", "--chunk-mib", str(args.chunk_mib)])
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    child = json.loads(b"".join(chunks) or b"{}")
    _, status = os.waitpid(pid, 0)
    lines = [ln for ln in open(exec_out).read().splitlines() if ln.startswith("{")] if os.path.exists(exec_out) else []
    execd = json.loads(lines[-1]) if lines else {}
    parent_view = torch.cuda.mem_get_info()
    del held
    return {
        "hold_mib": args.hold_mib,
        "child": child,
        "child_exit": os.waitstatus_to_exitcode(status),
        "exec_allocator": {k: execd.get(k) for k in ("allocated_mib", "error", "mem_get_info_mib")},
        "parent_mem_get_info_mib": [parent_view[0] >> 20, parent_view[1] >> 20],
    }


# ---- overhead: long-lived workers (bench/hook_gpu.py interleaved()) -----------------------


def serve_block(name: str, args: argparse.Namespace) -> Callable[[], float]:
    """One block of `name` work; returns its time in ms (lower is better)."""
    if name in ("transformer", "tiny"):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
        import hook_workload

        if name == "transformer":
            return hook_workload.transformer_block(args.steps, 0.0)
        tiny = hook_workload.tiny_block(args.launches)
        return lambda: 1e3 / tiny()
    if name == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.ones((N, N), jnp.bfloat16)
        f = jax.jit(lambda x: jnp.tanh(x @ x) * 0.5)
        f(a).block_until_ready()

        def block_jax() -> float:
            t0 = time.perf_counter()
            y = a
            for _ in range(50):
                y = f(y)
            y.block_until_ready()
            return (time.perf_counter() - t0) * 1e3

        return block_jax
    if name == "cupy":
        import cupy

        x = cupy.random.random(16 * MiB, dtype=cupy.float32)

        def block_cupy() -> float:
            cupy.cuda.Device().synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                cupy.multiply(x, 0.999, out=x)
                cupy.add(x, 0.001, out=x)
            cupy.cuda.Device().synchronize()
            return (time.perf_counter() - t0) * 1e3

        return block_cupy
    if name == "triton":
        import torch

        step, _ = triton_step()

        def block_triton() -> float:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(64):
                step()
            torch.cuda.synchronize()
            return (time.perf_counter() - t0) * 1e3

        return block_triton
    if name == "llama":
        import torch

        gen, _ = llama_generator(8, 128, 32)

        def block_llama() -> float:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen()
            torch.cuda.synchronize()
            return (time.perf_counter() - t0) * 1e3

        return block_llama
    raise ValueError(f"unknown serve workload {name!r}")


def serve(args: argparse.Namespace) -> None:
    block = serve_block(args.serve, args)
    block()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in iter(sys.stdin.readline, ""):
        vals = [block() for _ in range(args.repeat)]
        print(json.dumps({"value": statistics.median(vals), "cmd": line.strip()}), flush=True)


KINDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "matmul": torch_matmul,
    "graph": torch_graph,
    "elementwise": torch_elementwise,
    "triton": triton_matmul,
    "jax": jax_matmul,
    "llama": llama,
    "mem_torch": mem_torch,
    "mem_jax": mem_jax,
    "mem_cupy": mem_cupy,
    "workers": workers,
    "fork": fork,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=[*KINDS, "serve"])
    ap.add_argument(
        "--serve", default="transformer", help="with kind serve: transformer, tiny, jax, cupy, triton, llama"
    )
    ap.add_argument("--seconds", type=float, default=2.5)
    ap.add_argument("--start-at", type=float, default=None)
    ap.add_argument("--chunk-mib", type=int, default=256)
    ap.add_argument("--hold-mib", type=int, default=1024)
    ap.add_argument("--slice-mib", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--launches", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if args.kind == "serve":
        serve(args)
        return
    try:
        result = KINDS[args.kind](args)
    except Exception as e:  # report it as the child's result: the parent records and goes on
        result = {"error": f"{type(e).__name__}: {e}"[:600], "trace": traceback.format_exc()[-1500:]}
    print(json.dumps({"kind": args.kind, "pid": os.getpid(), **result}), flush=True)


if __name__ == "__main__":
    main()
