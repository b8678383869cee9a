"""One GPU workload, run by bench/hook_gpu.py in a child process (under the hook or not).

    python bench/hook_workload.py <kind> [--seconds S] [--start-at T] ...

Prints one JSON line with its measurement. Kinds:
  matmul       bf16 4096^3 matrix products in a loop: TFLOP/s over --seconds (sync every 256)
  graph        the same 20 products captured in a CUDA graph, replayed
  fill         allocate --chunk-mib tensors until torch.cuda.OutOfMemoryError
  tiny         launch rate of one-element kernels (median of --blocks x --launches)
  transformer  training step time of an 8-layer encoder built in code (no downloads),
               with --duty D sleeping D x step time after each step
  serve        --serve tiny|transformer: one block per line on stdin (hook_gpu.py interleaved())
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

N = 4096
FLOP = 2 * N**3


def wait_until(t: float | None) -> None:
    if t is not None:
        while time.time() < t:
            time.sleep(0.001)


def timed_loop(
    step: Callable[[], object], seconds: float, per_step_flop: float, start_at: float | None, sync_every: int
) -> dict[str, object]:
    """Steps for `seconds`, synchronising every `sync_every` steps: ~10+ ms of GPU work apart,
    so the unlimited baseline keeps the card busy (every 8 matmuls left it idle 3% of the time,
    and a hook that gives N% of the card's time then looks like N/0.97% of that baseline)."""
    for _ in range(10):  # warm-up: kernels chosen, clocks up, hook's first windows settled
        step()
    torch.cuda.synchronize()
    t_end = time.time() + 0.5
    while time.time() < t_end:
        step()
    torch.cuda.synchronize()
    wait_until(start_at)
    t_start = time.time()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(sync_every):
            step()
        n += sync_every
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {
        "steps": n,
        "seconds": dt,
        "tflops": n * per_step_flop / dt / 1e12,
        "t_start": t_start,
        "t_end": time.time(),
    }


def matmul(args: argparse.Namespace) -> dict[str, object]:
    a, b, c = matmul_operands()

    def step() -> None:
        torch.matmul(a, b, out=c)

    return timed_loop(step, args.seconds, FLOP, args.start_at, 256)  # 256 x 0.2 ms


def matmul_operands() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a, b and an output for bf16 N x N products, on the current device."""
    a = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    return a, torch.randn(N, N, device="cuda", dtype=torch.bfloat16), torch.empty_like(a)


def captured_matmuls(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, n: int = 20, capture_error_mode: str = "global"
) -> torch.cuda.CUDAGraph:
    """`n` products c = a @ b captured in one CUDA graph, warmed up on and captured in a side
    stream of the current device. Not torch.cuda.graph's default capture stream: PyTorch
    makes that once per process, on the device current at the first capture, so a capture on
    a second card would use the first card's stream ("operation not permitted when stream is
    capturing"; pytorch/pytorch#87794)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            torch.matmul(a, b, out=c)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s, capture_error_mode=capture_error_mode):
        for _ in range(n):
            torch.matmul(a, b, out=c)
    return g


def graph(args: argparse.Namespace) -> dict[str, object]:
    g = captured_matmuls(*matmul_operands())
    return timed_loop(g.replay, args.seconds, 20 * FLOP, args.start_at, 8)  # 8 x 4 ms


def fill(args: argparse.Namespace) -> dict[str, object]:
    free0, total0 = torch.cuda.mem_get_info()
    # nvidia-smi and NVML number cards their own way: name this process's card by UUID.
    uuid = str(torch.cuda.get_device_properties(0).uuid)
    uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    # What the context really costs on the card (NVML's per-process view is not virtualised).
    apps = subprocess.run(
        ["nvidia-smi", "-i", uuid, "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    held, allocated = [], 0
    chunk = args.chunk_mib << 20
    err = ""
    try:
        while True:
            held.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
            allocated += chunk
    except torch.cuda.OutOfMemoryError as e:
        err = type(e).__name__
    free1, total1 = torch.cuda.mem_get_info()
    smi = subprocess.run(
        ["nvidia-smi", "-i", uuid, "--query-gpu=memory.total,memory.used,memory.free", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    nvml = {}
    try:
        import pynvml

        pynvml.nvmlInit()
        m = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByUUID(uuid))
        nvml = {"total_mib": m.total >> 20, "used_mib": m.used >> 20, "free_mib": m.free >> 20}
        pynvml.nvmlShutdown()
    except Exception as e:  # report, don't fail the measurement
        nvml = {"error": str(e)}
    return {
        "error": err,
        "allocated_mib": allocated >> 20,
        "reserved_mib": torch.cuda.memory_reserved() >> 20,
        "mem_get_info_before_mib": [free0 >> 20, total0 >> 20],
        "mem_get_info_after_mib": [free1 >> 20, total1 >> 20],
        "nvidia_smi": smi,
        "compute_apps_at_start": apps,
        "nvml": nvml,
        "allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") or "default",
    }


def tiny_block(launches: int) -> Callable[[], float]:
    """A block of `launches` one-element kernels; returns launches per second."""
    x = torch.zeros(1, device="cuda")

    def block() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(launches):
            x.add_(1)
        torch.cuda.synchronize()
        return launches / (time.perf_counter() - t0)

    return block


def tiny(args: argparse.Namespace) -> dict[str, object]:
    block = tiny_block(args.launches)
    rates = [block() for _ in range(args.blocks + 1)][1:]  # the first block warms up, and is dropped
    return {"launches_per_s": statistics.median(rates), "all": rates}


def transformer_block(steps: int, duty: float) -> Callable[[], float]:
    """`steps` training steps of an 8-layer encoder (d 1024, 16 heads, batch 16 x 512, bf16
    autocast, AdamW), sleeping `duty` x step time after each; returns the median step in ms."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=1024, nhead=16, dim_feedforward=4096, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, num_layers=8).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(16, 512, 1024, device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()

    def block() -> float:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            times.append(dt)
            if duty > 0:
                time.sleep(dt * duty)
        return statistics.median(times) * 1e3

    return block


def transformer(args: argparse.Namespace) -> dict[str, object]:
    median = transformer_block(args.steps, args.duty)()
    return {"step_ms_median": median}


def serve(args: argparse.Namespace) -> None:
    """Build the workload once, then run one block per line read from stdin and print its
    figure: bench/hook_gpu.py's interleaved() keeps such processes per configuration and
    lets them take turns, so hook and no hook are compared seconds apart, in
    processes that stay put (on the H200 VM, a figure differed by up to 40% between
    processes started one after another)."""
    block = tiny_block(args.launches) if args.serve == "tiny" else transformer_block(args.steps, args.duty)
    block()  # warm-up
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in iter(sys.stdin.readline, ""):
        print(json.dumps({"value": block(), "cmd": line.strip()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["matmul", "graph", "fill", "tiny", "transformer", "serve"])
    ap.add_argument(
        "--serve",
        choices=["tiny", "transformer"],
        default="tiny",
        help="with kind serve: the workload whose blocks stdin asks for",
    )
    ap.add_argument("--seconds", type=float, default=2.5)
    ap.add_argument("--start-at", type=float, default=None)
    ap.add_argument("--chunk-mib", type=int, default=256)
    ap.add_argument("--launches", type=int, default=20000)
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--duty", type=float, default=0.0)
    args = ap.parse_args()
    torch.cuda.init()
    if args.kind == "serve":
        serve(args)
        return
    result = globals()[args.kind](args)
    print(json.dumps({"kind": args.kind, "pid": os.getpid(), **result}), flush=True)


if __name__ == "__main__":
    main()
