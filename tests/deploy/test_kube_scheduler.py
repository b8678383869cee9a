"""The chart's KubeSchedulerConfiguration, accepted by the real kube-scheduler 1.34,
which decodes it strictly: it starts, serves /healthz, and takes its own lease (leader
election on, in the release's namespace). A broken configuration makes it exit."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.e2e.controlplane import ControlPlane, wait_until

from .chart import TLS_VALUES, Helm
from .conftest import Procs
from .kubeapi import close, ensure_namespace
from .scheduler import healthy, start_kube_scheduler, with_kubeconfig

pytestmark = pytest.mark.e2e

NAMESPACE = "flexai-ks"


def _holder(coord: k8s.CoordinationV1Api, name: str) -> str | None:
    for lease in coord.list_namespaced_lease(NAMESPACE).items:
        if lease.metadata is not None and lease.metadata.name == name and lease.spec is not None:
            return str(lease.spec.holder_identity) if lease.spec.holder_identity else None
    return None


GPU_MODELS = {"policy": {"gpuModels": ["NVIDIA-H200", "A100"]}}
SAMPLED = {"scheduler": {"kubeScheduler": {"percentageOfNodesToScore": 20}}}


@pytest.mark.parametrize(
    "values", [{}, TLS_VALUES, GPU_MODELS, SAMPLED], ids=["defaults", "tls", "gpu-models", "score-percent"]
)
def test_real_kube_scheduler_runs_the_rendered_config(
    helm: Helm, control_plane: ControlPlane, procs: Procs, bin_dir: Any, values: dict[str, object]
) -> None:
    rendered = helm.template(values, namespace=NAMESPACE, release="ks")
    cfg = rendered.scheduler_config
    # kube-scheduler's adaptive search unless the chart is told otherwise
    assert cfg.get("percentageOfNodesToScore") == (20 if values is SAMPLED else None)
    if values is GPU_MODELS:
        fit = cfg["profiles"][0]["pluginConfig"][0]
        assert fit["name"] == "NodeResourcesFit"
        assert fit["args"]["ignoredResources"] == ["huawei.com/vgpu-type.NVIDIA-H200", "huawei.com/vgpu-type.A100"]
    if values is TLS_VALUES:
        # The CA file the TLS block names must exist for kube-scheduler to build its client.
        ca = procs.log_dir / "ca.crt"
        assert control_plane.pki is not None
        ca.write_bytes(control_plane.pki.ca_crt.read_bytes())
        cfg["extenders"][0]["tlsConfig"]["caFile"] = str(ca)
    api = control_plane.api_client()
    try:
        ensure_namespace(k8s.CoreV1Api(api), NAMESPACE)
        p, port = start_kube_scheduler(procs, bin_dir, with_kubeconfig(cfg, control_plane.kubeconfig))
        wait_until(lambda: healthy(port) or not p.alive, 60, "kube-scheduler /healthz")
        assert p.alive, p.tail()
        lease = cfg["leaderElection"]["resourceName"]
        holder = wait_until(lambda: _holder(k8s.CoordinationV1Api(api), lease), 60, f"lease {lease}")
        assert holder
        # the paths the Deployment's probes use
        assert healthy(port, "/readyz") and healthy(port, "/livez")
    finally:
        procs.stop()
        close(api)


def _unknown_field(cfg: dict[str, Any]) -> None:
    cfg["extenders"][0]["urlPrefx"] = cfg["extenders"][0]["urlPrefix"]


def _second_binder(cfg: dict[str, Any]) -> None:
    cfg["extenders"].append(copy.deepcopy(cfg["extenders"][0]))


def _no_weight(cfg: dict[str, Any]) -> None:
    cfg["extenders"][0]["weight"] = 0


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_unknown_field, "strict decoding error: unknown field"),
        (_second_binder, "only one extender can implement bind"),
        (_no_weight, "weight"),
    ],
    ids=["unknown-field", "two-binders", "zero-weight"],
)
def test_real_kube_scheduler_rejects_a_broken_config(
    helm: Helm,
    control_plane: ControlPlane,
    procs: Procs,
    bin_dir: Any,
    breakage: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    cfg = with_kubeconfig(helm.template(namespace=NAMESPACE, release="ks").scheduler_config, control_plane.kubeconfig)
    breakage(cfg)
    p, _ = start_kube_scheduler(procs, bin_dir, cfg)
    wait_until(lambda: not p.alive, 60, "kube-scheduler to exit")
    procs.stop()  # reaps it and logs its exit status
    log = p.tail(200)
    errors = [line for line in log.splitlines() if line.startswith("E")]
    assert any(message in line for line in errors), log
    status = int(log.rsplit("=== exit status ", 1)[1].split()[0])
    assert status != 0, log
