"""The scheduler pod's two containers wired exactly as rendered, plain and with TLS:
flexai-sched on the Deployment's arguments (certificate and key from the Secret's
mount), kube-scheduler on the rendered configuration (HTTPS to the extender,
verified against the Secret's ca.crt), the exec probes as the kubelet runs them,
and one vGPU pod scheduled through them. Admin credentials: test_rbac.py covers RBAC."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from flexai_core import annotations as ann
from tests.e2e.controlplane import ControlPlane, free_port, generate_pki, wait_until
from tests.e2e.helpers_kube import cards, gpu_node, pod_body, vgpu_limits

from .chart import Helm
from .conftest import Procs
from .kubeapi import ensure_namespace, name_of
from .scheduler import healthy, start_kube_scheduler, with_kubeconfig

pytestmark = pytest.mark.e2e

NS = "flexai-pod"
NODE = "gpu-pod-a"


@pytest.fixture(scope="module")
def gpu_node_ready(control_plane: ControlPlane) -> Iterator[k8s.CoreV1Api]:
    core = control_plane.core_api()
    ensure_namespace(core, NS)
    gpu_node(core, NODE, cards(2))
    yield core
    for pod in core.list_namespaced_pod(NS).items:
        core.delete_namespaced_pod(name_of(pod), NS, grace_period_seconds=0)
    core.delete_node(NODE)
    core.api_client.close()


def _probe(container: dict[str, Any], kind: str) -> list[str]:
    command: list[str] = container[kind]["exec"]["command"]
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_scheduler_pod_schedules_through_its_extender(
    helm: Helm, control_plane: ControlPlane, gpu_node_ready: k8s.CoreV1Api, procs: Procs, bin_dir: Path, tls: bool
) -> None:
    core = gpu_node_ready
    mount = procs.log_dir / "tls"
    values: dict[str, Any] = {
        "scheduler": {"name": f"flexai-{'https' if tls else 'http'}", "extender": {"port": free_port()}}
    }
    if tls:
        values["scheduler"]["extender"]["tls"] = {"enabled": True, "secretName": "s", "mountPath": str(mount)}
        # The Secret's three files, as a kubernetes.io/tls Secret (plus ca.crt) mounts them;
        # the serving certificate names 127.0.0.1.
        pki = generate_pki(procs.log_dir / "pki")
        mount.mkdir()
        shutil.copy(pki.server_crt, mount / "tls.crt")
        shutil.copy(pki.server_key, mount / "tls.key")
        shutil.copy(pki.ca_crt, mount / "ca.crt")
    rendered = helm.template(values, namespace=NS, release="pod")
    ext = rendered.container("Deployment", "extender")
    settings = procs.log_dir / "flexai-sched.yaml"
    settings.write_text(rendered.config_map["data"]["flexai-sched.yaml"])
    args = [
        f"--kubeconfig={control_plane.kubeconfig}"
        if a == "--in-cluster"
        else f"--config={settings}"
        if a.startswith("--config=")
        else a
        for a in ext["args"]
    ]
    extender = procs.start("flexai-sched", [str(Path(sys.executable).with_name("flexai-sched")), *args])

    def probe_ok(kind: str) -> bool:
        r = subprocess.run(_probe(ext, kind), capture_output=True, timeout=10, check=False)
        return r.returncode == 0

    wait_until(lambda: probe_ok("readinessProbe") or not extender.alive, 60, "the readiness probe")
    assert extender.alive, extender.tail()
    assert probe_ok("livenessProbe")

    cfg = rendered.scheduler_config
    assert cfg["extenders"][0]["urlPrefix"].startswith("https://" if tls else "http://")
    sched, port = start_kube_scheduler(procs, bin_dir, with_kubeconfig(cfg, control_plane.kubeconfig))
    wait_until(lambda: healthy(port, "/readyz") or not sched.alive, 60, "kube-scheduler /readyz")
    assert sched.alive, sched.tail()

    name = f"vgpu-{'https' if tls else 'http'}"
    core.create_namespaced_pod(
        NS, pod_body(name, {"main": vgpu_limits(1, 50, 8)}, scheduler=cfg["profiles"][0]["schedulerName"])
    )

    def bound() -> k8s.V1Pod | None:
        p: k8s.V1Pod = core.read_namespaced_pod(name, NS)
        return p if p.spec is not None and p.spec.node_name else None

    pod = wait_until(bound, 90, f"{name} bound")
    assert pod.spec.node_name == NODE
    assert ann.POD_ALLOCATION in pod.metadata.annotations  # bound by the extender, not the default binder

    # The probes fail when the extender is gone (they can fail at all).
    procs.stop()
    assert not probe_ok("livenessProbe")
