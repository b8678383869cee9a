"""The node agent on a real GPU (run on the device machine, never in CI).

    python3 tests/gpu/node_agent_check.py --hook build/hook/libflexai_hook.so \
        [--shim build/hook/libflexai_shim.so] [--slice-gib 8] [--cards 1] [--out report.md] [--symlink-mounts]

1. Inventory: ``NvmlInventory`` against ``nvidia-smi --query-gpu=uuid,name,memory.total``.
2. Device plugin: the real plugin server on a unix socket, registered with the fake
   kubelet of tests/node, advertising the real cards; a pod with one vGPU
   (``--slice-gib``) on each of the first ``--cards`` cards is admitted through a gRPC Allocate.
3. The Allocate response applied by hand to a PyTorch process: its env, each mount as a
   symlink from its container path to its host path (no container runtime here), and
   ``NVIDIA_VISIBLE_DEVICES`` as ``CUDA_VISIBLE_DEVICES`` (what the NVIDIA runtime would
   expose). The process must see the slice on every device in ``torch.cuda.mem_get_info`` and
   get ``OutOfMemoryError`` past it; a control process without the response sees the cards.
4. While it holds memory, the agent's region reader (``hook.shim``) reports its use.

Exit status 0 only if every check passed. Needs no Kubernetes; gRPC if importable.
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

from flexai_node.nvml import NvmlInventory  # noqa: E402
from tests.gpu.report import finish_report  # noqa: E402

GIB = 1 << 30
PROBE = r"""
import json, sys, torch
mode = sys.argv[1]
out, held, step = [], [], 256 << 20
for d in range(torch.cuda.device_count()):
    free, total = torch.cuda.mem_get_info(d)
    one = {"device": torch.cuda.get_device_name(d), "free": free, "total": total, "held_bytes": 0}
    n = 0
    try:
        while mode != "look":
            held.append(torch.empty(step, dtype=torch.uint8, device=f"cuda:{d}"))
            n += 1
    except torch.OutOfMemoryError as e:
        one["oom"] = type(e).__name__
    one["held_bytes"] = n * step
    out.append(one)
print(json.dumps(out), flush=True)
if mode == "hold":   # keep the memory until told to go (the parent reads the region)
    sys.stdin.readline()
"""


def check_inventory(lines: list[str]) -> bool:
    inv = NvmlInventory()
    try:
        readings = inv.read()
    finally:
        inv.close()
    smi = (
        subprocess.run(
            ["nvidia-smi", "--query-gpu=uuid,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    ok = len(smi) == len(readings)
    lines += [
        "## 1. Inventory (NVML) vs nvidia-smi",
        "",
        "| index | UUID (agent) | model (agent) | MiB (agent) | nvidia-smi | numa | healthy | match |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, row in zip(readings, smi, strict=False):
        uuid, name, mib = (x.strip() for x in row.split(","))
        match = (r.card.uuid, r.card.model, r.card.memory_mib) == (uuid, name, int(mib))
        ok &= match
        lines.append(
            f"| {r.card.index} | {r.card.uuid} | {r.card.model} | {r.card.memory_mib} | "
            f"{uuid}, {name}, {mib} | {r.card.numa} | {r.card.healthy} | {'yes' if match else 'NO'} |"
        )
    lines.append("")
    return ok


def allocate(
    hook: Path, slice_gib: int, ncards: int, state: Path, lines: list[str]
) -> tuple[dict[str, str], list[Any], Path]:
    """The grant for a pod with one vGPU on each of the first ``ncards`` cards, through gRPC when
    grpc is importable."""
    from flexai_node.admitter import NodeAdmitter
    from flexai_node.grant import GrantBuilder
    from flexai_node.hook.files import HookConfigFiles
    from flexai_node.ledger import Ledger
    from flexai_node.workdirs import Workdirs
    from tests.node.fakes import FakeNodeApi, bound_pod, container, slice_on

    inv = NvmlInventory(watch_xids=False)
    cards = [r.card for r in inv.read()]
    inv.close()
    api = FakeNodeApi()
    api.add(
        bound_pod(
            "torch",
            "uid-torch",
            [container("main", ncards, memory_gib=slice_gib)],
            [slice_on(cards[i], "main", 0, slice_gib * 1024) for i in range(ncards)],
        )
    )
    workdirs = Workdirs(state / "containers")
    admitter = NodeAdmitter(
        "gpu-1",
        api,
        Ledger(state / "ledger.json"),
        workdirs,
        GrantBuilder(HookConfigFiles(workdirs.root, hook)),
        lambda: cards,
    )
    try:
        from flexai_node.deviceplugin import api_pb2 as pb
        from flexai_node.deviceplugin.devices import device_id
        from flexai_node.deviceplugin.server import DevicePluginService, PluginServer
        from tests.node.fake_kubelet import FakeKubelet
    except (ImportError, RuntimeError) as e:  # no grpc, or an older one than the stubs need
        lines.append(f"gRPC not available ({e}); Allocate called in-process\n")
        grant = admitter.allocate([[f"dev-{i}" for i in range(ncards)]])[0]
        return dict(grant.envs), [(m.container_path, m.host_path, m.read_only) for m in grant.mounts], workdirs.root
    kubelet = FakeKubelet(state / "dp")
    kubelet.start()
    plugin = PluginServer(DevicePluginService(admitter, cards), kubelet.dir, watch_every_s=0.1)
    plugin.start()
    try:
        reg = kubelet.registrations.get(timeout=30)
        devices = kubelet.device_lists.get(timeout=30)
        lines += [
            "## 2. Device plugin (gRPC over a unix socket, fake kubelet)",
            "",
            f"Register: version={reg.version} endpoint={reg.endpoint} resource={reg.resource_name}; "
            f"ListAndWatch: {len(devices)} devices, {sum(h == 'Healthy' for h in devices.values())} healthy",
            "",
        ]
        stub = kubelet.plugin(reg.endpoint)
        resp = stub.Allocate(
            pb.AllocateRequest(
                container_requests=[
                    pb.ContainerAllocateRequest(devices_ids=[device_id(cards[i].uuid, 0) for i in range(ncards)])
                ]
            ),
            timeout=30,
        )
        c = resp.container_responses[0]
        return dict(c.envs), [(m.container_path, m.host_path, m.read_only) for m in c.mounts], workdirs.root
    finally:
        plugin.stop()
        kubelet.stop()


def apply_by_hand(
    envs: dict[str, str], mounts: list[Any], symlinks: bool, made: list[Path], lines: list[str]
) -> dict[str, str]:
    """What the container runtime would do. With ``symlinks`` (a scratch machine, as root):
    each mount as a symlink at its container path, recorded in ``made`` for removal.
    Otherwise env values are rewritten to host paths (the config's region path then stays
    unreachable and each process accounts alone: noted). Visible cards as CUDA_VISIBLE_DEVICES."""
    env = dict(os.environ)
    env.update(envs)
    for cpath, hpath, ro in mounts:
        target = Path(cpath)
        if symlinks:
            try:
                missing = [p for p in reversed(target.parents) if not p.exists()]
                target.parent.mkdir(parents=True, exist_ok=True)
                made.extend(reversed(missing))
                target.symlink_to(hpath)
                made.insert(0, target)
                lines.append(f"- mount {cpath} -> {hpath} ({'ro' if ro else 'rw'}): symlink")
                continue
            except OSError as e:
                lines.append(f"- mount {cpath}: no symlink ({e})")
        lines.append(f"- mount {cpath} -> {hpath}: env rewritten to the host path")
        for key, value in envs.items():
            if value == cpath or value.startswith(cpath + "/"):
                env[key] = hpath + value[len(cpath) :]
    env["CUDA_VISIBLE_DEVICES"] = env.pop("NVIDIA_VISIBLE_DEVICES")
    lines.append("")
    return env


def remove(made: list[Path]) -> None:
    """Symlinks first, then the directories made for them, deepest first."""
    for p in made:
        if p.is_symlink():
            p.unlink()
    for p in sorted((p for p in made if not p.is_symlink()), key=lambda p: -len(p.parts)):
        try:
            p.rmdir()
        except OSError:
            pass


def probe(env: dict[str, str], hold: bool = False) -> tuple[list[dict[str, Any]], subprocess.Popen[str]]:
    args = [sys.executable, "-c", PROBE, "hold" if hold else "look"]
    p = subprocess.Popen(
        args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"probe failed: {p.communicate()[1][-3000:]}")
    devices: list[dict[str, Any]] = json.loads(line)  # one entry per visible device
    return devices, p


def check_slice(args: argparse.Namespace, tmp: Path, lines: list[str]) -> bool:
    envs, mounts, root = allocate(args.hook.resolve(), args.slice_gib, args.cards, tmp, lines)
    lines += [
        "## 3. Allocate response applied by hand to PyTorch",
        "",
        "```",
        *(f"env   {k}={v}" for k, v in sorted(envs.items())),
        *(f"mount {c} <- {h} ({'ro' if ro else 'rw'})" for c, h, ro in mounts),
        "```",
        "",
    ]
    config = next(h for c, h, _ in mounts if c.endswith(".conf"))
    lines += ["Hook config written by the agent:", "", "```", Path(config).read_text().strip(), "```", ""]
    control, first = probe(dict(os.environ, CUDA_VISIBLE_DEVICES=envs["NVIDIA_VISIBLE_DEVICES"]))
    first.wait(timeout=120)
    made: list[Path] = []
    ok: bool = True
    usage_line = "region reader: not run (no --shim)"
    try:
        env = apply_by_hand(envs, mounts, args.symlink_mounts, made, lines)
        sliced, child = probe(env, hold=True)
        try:
            if args.shim is not None:
                from flexai_node.hook.files import HookConfigFiles
                from flexai_node.hook.regions import RegionUsageReader
                from flexai_node.hook.shim import HookShim

                files = HookConfigFiles(root, args.hook)
                reader = RegionUsageReader(lambda uid, c: files.region_file(root / uid / c), HookShim(args.shim))
                usage = reader.read("uid-torch", "main")
                usage_line = (
                    f"region reader while the probe holds {[d['held_bytes'] >> 20 for d in sliced]} MiB: {usage}"
                )
                used = sorted(u.memory_used_mib for u in usage.values())
                ok &= len(used) == len(sliced) and all(
                    u >= h for u, h in zip(used, sorted(d["held_bytes"] >> 20 for d in sliced), strict=False)
                )
        finally:
            assert child.stdin is not None and child.stderr is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            child.wait(timeout=120)
            hook_log = child.stderr.read().strip().splitlines()[-15:]
    finally:
        remove(made)
    slice_bytes = args.slice_gib * GIB
    ok &= len(sliced) == len(control) == args.cards
    lines += [
        "| process | device | mem_get_info total | free | allocated before OOM | OOM raised |",
        "|---|---|---|---|---|---|",
    ]
    for d, (c, s) in enumerate(zip(control, sliced, strict=False)):
        ok &= bool(s["total"] <= slice_bytes and s.get("oom") == "OutOfMemoryError")
        ok &= bool(slice_bytes - GIB <= s["held_bytes"] <= slice_bytes and c["total"] > slice_bytes)
        lines += [
            f"| control (no hook; looks only) | {d} | {c['total'] / GIB:.2f} GiB | {c['free'] / GIB:.2f} GiB | - | - |",
            f"| with the Allocate response ({args.slice_gib} GiB slice) | {d} | {s['total'] / GIB:.2f} GiB | "
            f"{s['free'] / GIB:.2f} GiB | {s['held_bytes'] / GIB:.2f} GiB | {s.get('oom', 'no')} |",
        ]
    lines += [
        "",
        "stderr of the sliced process (the hook's messages), last lines:",
        "",
        "```",
        *hook_log,
        "```",
        "",
        f"## 4. Metrics\n\n{usage_line}",
        "",
    ]
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hook", type=Path, required=True)
    ap.add_argument("--shim", type=Path)
    ap.add_argument("--slice-gib", type=int, default=8)
    ap.add_argument("--cards", type=int, default=1, help="vGPUs in the pod, one on each of the first N cards")
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--symlink-mounts",
        action="store_true",
        help="make each mount a symlink at its container path (scratch machines only)",
    )
    args = ap.parse_args()
    lines = ["# Node agent on a real GPU", "", f"`{' '.join(sys.argv)}`", ""]
    ok = check_inventory(lines)
    with tempfile.TemporaryDirectory(prefix="na", dir="/tmp") as tmp:
        try:
            ok &= check_slice(args, Path(tmp), lines)
        except Exception as e:  # report what happened, whatever it was: this is the one GPU run
            lines += [f"**check failed: {type(e).__name__}: {e}**", ""]
            ok = False
    return finish_report(lines, ok, args.out)


if __name__ == "__main__":
    sys.exit(main())
