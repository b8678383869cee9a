"""Two cards, one process (issue 8): run on a device machine with two GPUs, never in CI.

    python3 tests/gpu/two_gpu.py --hook build/hook-gpu/libflexai_hook.so [--out report.md]

One process gets a vGPU on each card with different limits (card 0: 12 GiB and 30%, card 1:
20 GiB and 60%, both as shares of throughput with each card's own reference clock), in a
config written by flexai_node.hook.config, as the device plugin writes it. Checked:

1. Memory: PyTorch fills each device until OutOfMemoryError; each stops at its own card's
   limit (at most the limit, at least the limit minus 1 GiB), and mem_get_info and nvidia-smi
   (under the hook) show each card's slice.
2. Renumbering: with CUDA_VISIBLE_DEVICES=1 and with the two UUIDs in reverse order, the
   process's device 0 is card 1 and keeps card 1's limits.
3. Compute: CUDA-graph replay of bf16 matmuls on both devices at once (one thread per device,
   graphs captured beforehand in the main thread) delivers each card's share of its own
   unlimited throughput within 3 points, also with the devices renumbered; the matmul loop on
   each card in turn (one process, both limits loaded) likewise. Reported, not checked: the
   matmul loop on both at once from two Python threads (a thread held at a shut window could
   stall the other through Python's GIL) and the graph run without the hook (the control).

Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from hook_gpu import NvmlSampler  # noqa: E402

from flexai_node.hook.config import HookConfig, VGPULimit, container_env, write_config  # noqa: E402
from tests.gpu.report import finish_report  # noqa: E402

GIB = 1 << 30
LIMITS = ((12, 30), (20, 60))  # (GiB, cores %) of card 0 and card 1
TOLERANCE = 3.0  # points of throughput share

# The child: `memory` fills every visible device; `compute <how> <devices> <seconds>` runs one
# thread per listed device and prints TFLOP/s per device.
PROBE = r"""
import json, os, sys, threading, time, torch
from hook_workload import FLOP, captured_matmuls, matmul_operands, timed_loop  # bench/, on PYTHONPATH
mode = sys.argv[1]
if mode == "memory":
    out = []
    held = []
    for d in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(d)
        n, err = 0, ""
        try:
            while True:
                held.append(torch.empty(256 << 20, dtype=torch.uint8, device=f"cuda:{d}"))
                n += 1
        except torch.OutOfMemoryError as e:
            err = type(e).__name__
        out.append({"device": d, "total": total, "free": free, "held": n * (256 << 20), "error": err})
    print(json.dumps(out), flush=True)
    sys.exit(0)
how, devices, seconds = sys.argv[2], [int(x) for x in sys.argv[3].split(",")], float(sys.argv[4])
result, steps = {}, {}
def prepare(d):
    # Built in the main thread, graphs captured one device at a time: no capture runs
    # while another thread works (a capture forbids other threads' unsafe calls).
    torch.cuda.set_device(d)
    a, b, c = matmul_operands()
    if how == "graph":
        g = captured_matmuls(a, b, c, 20, os.environ.get("CAPTURE_MODE", "global"))
        torch.cuda.synchronize()
        steps[d] = (g.replay, 20 * FLOP, 8, (a, b, c, g))
    else:
        steps[d] = ((lambda: torch.matmul(a, b, out=c)), FLOP, 256, (a, b, c))
def run(d):
    torch.cuda.set_device(d)
    step, flop, every, _ = steps[d]
    result[d] = timed_loop(step, seconds, flop, start_at, every)["tflops"]
def guarded(d):
    try:
        run(d)
    except BaseException as e:  # say so; the other thread goes on
        result[d] = 0.0
        print(f"device {d}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
for d in devices:
    prepare(d)
start_at = time.time() + 3  # both warmed up by then: the timed parts overlap
threads = [threading.Thread(target=guarded, args=(d,)) for d in devices]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({str(d): result.get(d, 0.0) for d in devices}), flush=True)
"""


def smi(*query: str) -> list[list[str]]:
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [[x.strip() for x in line.split(",")] for line in out.strip().splitlines()]


ERRORS: list[str] = []  # stderr of probes that reported a failure, for the report


def child(args: list[str], env: dict[str, str], timeout: float = 180) -> Any:
    r = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("{", "["))]
    if not lines:
        raise RuntimeError(f"probe {args} failed (rc {r.returncode}): {r.stderr[-2000:]}")
    if "device " in r.stderr or "returned CUDA error" in r.stderr:
        ERRORS.append(f"probe {args}: " + " | ".join(r.stderr.strip().splitlines()[-8:]))
    return json.loads(lines[-1])


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FLEXAI_VGPU_CONFIG")}
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA ordinals in NVML's (and nvidia-smi's) order
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "bench"), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hook", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    hook = str(args.hook.resolve())
    lines = ["# Two cards, one process (issue 8)", "", f"`{' '.join(sys.argv)}`", ""]
    ok = True

    def check(cond: bool, what: str) -> None:
        nonlocal ok
        ok &= cond
        lines.append(f"- {'ok  ' if cond else 'FAIL'} {what}")

    cards = smi("index", "uuid", "name", "memory.total")
    lines += ["Cards (nvidia-smi): " + "; ".join(" ".join(c) for c in cards), ""]
    if len(cards) < 2:
        print("\n".join(lines + ["**needs two GPUs**"]))
        return 2
    uuids = [cards[0][1], cards[1][1]]
    secs = str(args.seconds)

    # Unlimited baselines per card, and each card's full-load SM clock (its reference).
    base: dict[tuple[str, int], float] = {}
    ref: list[int] = []
    for i in range(2):
        for how in ("matmul", "graph"):
            sampler = NvmlSampler(0.25, index=i)
            sampler.start()
            r = child(["compute", how, "0", secs], base_env(CUDA_VISIBLE_DEVICES=str(i)))
            sampler.stop.set()
            sampler.join()
            base[(how, i)] = r["0"]
            if how == "matmul":
                clocks = sorted(s[2] for s in sampler.samples[4:]) or [0]
                ref.append(clocks[len(clocks) // 2])
    lines += [
        "## Unlimited, each card alone",
        "",
        *(
            f"- card {i}: matmul {base[('matmul', i)]:.1f} TFLOP/s (SM clock {ref[i]} MHz), "
            f"graph {base[('graph', i)]:.1f} TFLOP/s"
            for i in range(2)
        ),
        "",
    ]

    tmp = Path(tempfile.mkdtemp(prefix="two-gpu-"))
    conf = tmp / "vgpu.conf"
    write_config(
        conf,
        HookConfig(
            vgpus=tuple(
                VGPULimit(uuid=uuids[i], memory_bytes=LIMITS[i][0] * GIB, cores=LIMITS[i][1], ref_clock_mhz=ref[i])
                for i in range(2)
            ),
            region_path=str(tmp / "region"),
        ),
    )
    lines += ["Config (flexai_node.hook.config):", "", "```", conf.read_text().strip(), "```", ""]

    def hooked(visible: str) -> dict[str, str]:
        return base_env(CUDA_VISIBLE_DEVICES=visible, FLEXAI_DEBUG="1", **container_env(str(conf), hook))

    # 1 + 2. Memory, in three orders. `order` lists the physical card behind each ordinal.
    lines += [
        "## Memory",
        "",
        "| CUDA_VISIBLE_DEVICES | ordinal | card | mem_get_info total | held at OOM | limit |",
        "|---|---|---|---|---|---|",
    ]
    checks: list[tuple[bool, str]] = []
    for visible, order in (("0,1", (0, 1)), ("1", (1,)), (f"{uuids[1]},{uuids[0]}", (1, 0))):
        res = child(["memory"], hooked(visible))
        for d, card in enumerate(order):
            r = res[d]
            lim = LIMITS[card][0] * GIB
            good = r["total"] == lim and r["error"] == "OutOfMemoryError" and lim - GIB <= r["held"] <= lim
            shown = visible if len(visible) < 12 else "uuid1,uuid0"
            lines.append(
                f"| {shown} | {d} | {card} | {r['total'] / GIB:.2f} GiB | {r['held'] / GIB:.2f} GiB "
                f"({r['error'] or 'no OOM'}) | {LIMITS[card][0]} GiB |"
            )
            checks.append(
                (good, f"CUDA_VISIBLE_DEVICES={shown}: ordinal {d} holds card {card}'s {LIMITS[card][0]} GiB limit")
            )
    lines.append("")
    for good, what in checks:
        check(good, what)
    shown = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,memory.total,memory.used", "--format=csv,noheader"],
        env=hooked("0,1"),
        capture_output=True,
        text=True,
    ).stdout.strip()
    lines += ["", "nvidia-smi under the hook:", "", "```", shown, "```", ""]
    totals = [row.split(",")[1].strip() for row in shown.splitlines()]
    check(
        totals == [f"{LIMITS[0][0] * 1024} MiB", f"{LIMITS[1][0] * 1024} MiB"],
        f"nvidia-smi shows {LIMITS[0][0]} and {LIMITS[1][0]} GiB",
    )

    # 3. Compute.
    lines += [
        "",
        "## Compute (share of each card's unlimited throughput)",
        "",
        "| workload | CUDA_VISIBLE_DEVICES | ordinal: card, delivered / limit | checked |",
        "|---|---|---|---|",
    ]
    # (label, workload, CUDA_VISIBLE_DEVICES, card behind each ordinal, ordinals run, hooked, checked)
    runs: list[tuple[str, str, str, tuple[int, ...], str, bool, bool]] = [
        ("graph, both at once, no hook (control)", "graph", "0,1", (0, 1), "0,1", False, False),
        ("graph, both at once", "graph", "0,1", (0, 1), "0,1", True, True),
        ("graph, both at once, renumbered", "graph", "1,0", (1, 0), "0,1", True, True),
        ("matmul loop, card 0 alone", "matmul", "0,1", (0, 1), "0", True, True),
        ("matmul loop, card 1 alone", "matmul", "0,1", (0, 1), "1", True, True),
        ("matmul loop, card 1 as ordinal 0 (only card 1 visible)", "matmul", "1", (1,), "0", True, True),
        ("matmul loop, both at once (two Python threads)", "matmul", "0,1", (0, 1), "0,1", True, False),
    ]
    verdicts: list[tuple[bool, str]] = []
    for label, how, visible, behind, devices, with_hook, checked in runs:
        env = hooked(visible) if with_hook else base_env(CUDA_VISIBLE_DEVICES=visible)
        try:
            r = child(["compute", how, devices, secs], env)
        except (RuntimeError, subprocess.TimeoutExpired) as e:  # a failed run is a result too
            ERRORS.append(f"{label}: {str(e)[-600:]}")
            r = {}
        cells, good = [], True
        for d in (int(x) for x in devices.split(",")):
            card = behind[d]
            pct = 100 * r.get(str(d), 0.0) / base[(how, card)]
            limit = LIMITS[card][1] if with_hook else 100
            good &= abs(pct - limit) <= TOLERANCE
            cells.append(f"{d}: card {card}, {pct:.1f}% / {limit}%")
        lines.append(f"| {label} | {visible} | {'; '.join(cells)} | {'yes' if checked else 'reported'} |")
        if checked:
            verdicts.append((good, f"{label}: within {TOLERANCE:.0f} points on each card"))
    lines.append("")
    for good, what in verdicts:
        check(good, what)

    lines += ["", *(f"- error: {e}" for e in ERRORS), ""]
    return finish_report(lines, ok, args.out)


if __name__ == "__main__":
    sys.exit(main())
