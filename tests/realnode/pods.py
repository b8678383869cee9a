"""Pods for the real node: the base image, hostNetwork (no CNI), and the fake driver and the
test programs mounted from the host.

The fake libcuda (csrc/hook/tests/fake_cuda.c) is mounted where the NVIDIA container
toolkit mounts the real one; like the real runtime, it shows the container only the cards
that NVIDIA_VISIBLE_DEVICES (set by our device plugin) names. The hook build directory
gives ``slice_probe`` and the shim, the package directory gives ``gpu-monitor``
(``python3 -m flexai_node.hook.monitor``) to the image's Debian python.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from tests.e2e.helpers_kube import vgpu_limits

from .node import BASE_IMAGE

REPO = Path(__file__).resolve().parents[2]
DRIVER_PATH = "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
TOOLS = "/opt/flexai"  # PYTHONPATH; the hook build dir is TOOLS/build/hook
PROBE = f"{TOOLS}/build/hook/slice_probe"
MONITOR = ["python3", "-m", "flexai_node.hook.monitor"]
SLEEP = "exec sleep 100000"
FAKE_CARDS = 8
limits = vgpu_limits  # the scenarios' name for it
CARD_MIB = 16384


def fake_uuid(phys: int) -> str:
    """The UUID fake_cuda.c gives physical card ``phys``."""
    b = [0xA0 + i for i in range(15)] + [phys]
    h = "".join(f"{x:02x}" for x in b)
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class C:
    """One container: its vGPU limits (None: no GPU) and its shell script."""

    limits: Mapping[str, str] | None = None
    script: str = SLEEP


def gpu_pod(
    name: str,
    containers: Mapping[str, C],
    hook_build: Path,
    init: Mapping[str, C] | None = None,
    restart: str = "Always",
    annotations: Mapping[str, str] | None = None,
) -> k8s.V1Pod:
    volumes = [
        k8s.V1Volume(
            name="driver",
            host_path=k8s.V1HostPathVolumeSource(path=str(hook_build / "fake" / "libcuda.so.1"), type="File"),
        ),
        k8s.V1Volume(name="hook-build", host_path=k8s.V1HostPathVolumeSource(path=str(hook_build), type="Directory")),
        k8s.V1Volume(
            name="package", host_path=k8s.V1HostPathVolumeSource(path=str(REPO / "flexai_node"), type="Directory")
        ),
    ]
    mounts = [
        k8s.V1VolumeMount(name="driver", mount_path=DRIVER_PATH, read_only=True),
        k8s.V1VolumeMount(name="hook-build", mount_path=f"{TOOLS}/build/hook", read_only=True),
        k8s.V1VolumeMount(name="package", mount_path=f"{TOOLS}/flexai_node", read_only=True),
    ]
    env = [
        k8s.V1EnvVar(name=k, value=v)
        for k, v in {
            "FAKECUDA_DEVICES": str(FAKE_CARDS),
            "FAKECUDA_MEM_MB": str(CARD_MIB),
            "PYTHONPATH": TOOLS,
            "PYTHONDONTWRITEBYTECODE": "1",
        }.items()
    ]

    def one(cname: str, c: C) -> k8s.V1Container:
        return k8s.V1Container(
            name=cname,
            image=BASE_IMAGE,
            image_pull_policy="Never",
            command=["/bin/sh", "-c", c.script],
            env=env,
            volume_mounts=mounts,
            resources=k8s.V1ResourceRequirements(limits=dict(c.limits)) if c.limits else None,
        )

    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, annotations=dict(annotations) if annotations else None),
        spec=k8s.V1PodSpec(
            host_network=True,
            dns_policy="Default",
            enable_service_links=False,
            restart_policy=restart,
            termination_grace_period_seconds=1,
            containers=[one(n, c) for n, c in containers.items()],
            init_containers=[one(n, c) for n, c in (init or {}).items()] or None,
            volumes=volumes,
        ),
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among a program's output lines."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def env_of(text: str) -> dict[str, str]:
    """`env` output -> dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def only(items: Sequence[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]
