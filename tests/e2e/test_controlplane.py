"""The harness itself, proven against the real kube-apiserver, kube-scheduler and kwok."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from .controlplane import (
    ControlPlane,
    ExtenderSpec,
    extender_block,
    make_fake_node,
    make_pod,
    wait_until,
)

pytestmark = pytest.mark.e2e


def _pod(core: k8s.CoreV1Api, name: str) -> k8s.V1Pod | None:
    try:
        pod: k8s.V1Pod = core.read_namespaced_pod(name, "default")
        return pod
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _running_on(core: k8s.CoreV1Api, name: str) -> str | None:
    pod = _pod(core, name)
    if pod is None or pod.status is None or pod.spec is None or pod.status.phase != "Running":
        return None
    node: str | None = pod.spec.node_name
    return node


def test_startup_is_fast(control_plane: ControlPlane) -> None:
    timings = ", ".join(f"{k}={v:.1f}s" for k, v in control_plane.timings.items())
    print(f"control plane startup: {timings}")
    assert control_plane.timings["total"] < 60, timings


def test_everything_listens_on_loopback_only(control_plane: ControlPlane) -> None:
    listeners = control_plane.listeners()
    for name in ("kine", "kube-apiserver", "kwok", "kube-scheduler"):
        assert listeners[name], f"{name} listens nowhere? {listeners}"
    bad = {n: [a for a in addrs if not a.startswith("127.0.0.1:")] for n, addrs in listeners.items()}
    assert not any(bad.values()), f"non-loopback listeners: {bad}"


def test_apiserver_answers_and_kwok_node_becomes_ready(control_plane: ControlPlane, core_api: k8s.CoreV1Api) -> None:
    version = k8s.VersionApi(core_api.api_client).get_code()
    assert version.git_version.startswith("v1.34."), version.git_version
    node = make_fake_node(
        core_api, "kwok-a", annotations={"example.com/note": "x"}, capacity={"example.com/widgets": "4"}
    )
    # kwok made it Ready and kept the capacity we gave, extended resources included.
    assert node.metadata is not None and node.status is not None
    assert (node.metadata.annotations or {}).get("kwok.x-k8s.io/node") == "fake"
    assert (node.metadata.labels or {}).get("type") == "kwok"
    assert (node.status.allocatable or {}).get("example.com/widgets") == "4"
    assert (node.status.capacity or {}).get("cpu") == "32"
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def test_plain_pod_is_scheduled_and_runs(core_api: k8s.CoreV1Api) -> None:
    make_fake_node(core_api, "kwok-b")
    make_pod(core_api, "plain", requests={"cpu": "100m", "memory": "64Mi"})
    node = wait_until(lambda: _running_on(core_api, "plain"), 30, "pod plain Running")
    assert node == "kwok-b"


def test_deleting_a_bound_pod_completes(core_api: k8s.CoreV1Api) -> None:
    make_fake_node(core_api, "kwok-c")
    make_pod(core_api, "doomed")
    wait_until(lambda: _running_on(core_api, "doomed"), 30, "pod doomed Running")
    # A graceful delete: only a kubelet (kwok here) can finish it for a bound pod.
    core_api.delete_namespaced_pod("doomed", "default")
    wait_until(lambda: _pod(core_api, "doomed") is None, 30, "pod doomed gone")


def test_extender_block_comes_from_the_chart_file() -> None:
    block = extender_block("http://127.0.0.1:1", node_cache_capable=False)
    assert block["urlPrefix"] == "http://127.0.0.1:1"
    assert block["nodeCacheCapable"] is False
    assert block["bindVerb"] == "bind"
    assert all(r["ignoredByScheduler"] for r in block["managedResources"])


def test_scheduler_accepts_extender_config_and_extender_restarts(
    control_plane: ControlPlane, core_api: k8s.CoreV1Api, tmp_path: Path
) -> None:
    # A stand-in extender (the real one is flexai-sched serve): a static file server whose
    # /healthz is a file. kube-scheduler only calls the extender for pods that request a
    # managed (vGPU) resource, so plain pods must still schedule with it configured.
    (tmp_path / "healthz").write_text("ok")
    spec = ExtenderSpec(
        [sys.executable, "-m", "http.server", "--bind", "{host}", "--directory", str(tmp_path), "{port}"]
    )
    try:
        control_plane.start_extender(spec)
        for mode in (False, True):  # both nodeCacheCapable modes pass strict config decoding
            control_plane.restart_scheduler(with_extender=True, node_cache_capable=mode)
            cfg = (control_plane.workdir / "kube-scheduler.yaml").read_text()
            assert control_plane.extender_url in cfg
            assert f"nodeCacheCapable: {str(mode).lower()}" in cfg
        control_plane.kill_extender()
        assert not control_plane.procs["extender"].alive
        control_plane.restart_extender()
        assert control_plane.procs["extender"].alive
        make_fake_node(core_api, "kwok-d")
        make_pod(core_api, "with-extender-configured")
        node = wait_until(
            lambda: _running_on(core_api, "with-extender-configured"), 30, "pod Running with the extender configured"
        )
        assert node == "kwok-d"
    finally:
        # Leave the session's plane as the other tests expect it: no extender.
        control_plane.kill_extender()
        control_plane.restart_scheduler(with_extender=False)
