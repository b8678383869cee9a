"""The chart installed for real, as deploy/README.md says, on a real node: the README's steps
(tests/realnode/readme.py) run unchanged against a real kube-apiserver with
kube-controller-manager, and a kubelet with containerd and runc that has no GPU, no CNI and
no kube-proxy (the one-machine values: host network, the apiserver on loopback, a card list
file).

Checked after the steps: the images imported; the agent DaemonSet's pod registers the device
plugin from its container and writes the inventory; the scheduler pod runs kube-scheduler and
flexai-sched; the views answer through the apiserver's service proxy; the README's vLLM example,
with the model path and the command swapped for one that prints its environment and hook
config and holds, is placed by the chart's scheduler and runs on its slice; a policy upgrade
changes where the next replica goes (spread, then binpack); and the uninstall with its cleanup
leaves no object behind that was not there before.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from flexai_core import annotations as ann
from flexai_core import resources as res
from flexai_core.model import Allocation, Card
from flexai_node.hook import config as hook_config
from flexai_node.inventory import CardReading, dumps
from tests.e2e.controlplane import REPO_ROOT, ControlPlane, ControlPlaneError, free_port, wait_until

from . import readme
from .conftest import prerequisites
from .node import BASE_IMAGE, RealNode
from .pods import fake_uuid

pytestmark = [pytest.mark.e2e, pytest.mark.realnode, pytest.mark.timeout(1800)]

NODE = "helmnode"
SYSTEM_NS = "flexai-system"
WORKLOAD_NS = "deepseek-test"
CARDS = tuple(Card(i, fake_uuid(i), "Fake GPU 80GB", 80 * 1024, 5) for i in range(4))
CHART_IMAGES = (
    "docker.io/flexai/flexai-sched:0.1.0",
    "docker.io/flexai/flexai-node:0.1.0",
    "localhost/kube-scheduler:v1.34.4",
    "localhost/flexai-views-nginx:bookworm",
)
MODEL_MARK = "config.json"  # a file in the stand-in model directory, listed by the workload
# The workload's command: its environment, its hook config, the model directory, then hold.
WORKLOAD_SCRIPT = (
    'env; echo @@@; cat "$FLEXAI_VGPU_CONFIG"; echo @@@; ls /models/DeepSeek-R1-Distill-Llama-8B; exec sleep infinity'
)


@dataclass
class HelmCluster:
    plane: ControlPlane
    node: RealNode
    workdir: Path
    steps: readme.Runner

    def kubectl(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update(self.steps.env)
        r = subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
        return r.stdout


@pytest.fixture(scope="module")
def helm_cluster() -> Iterator[HelmCluster]:
    bin_dir, images = prerequisites()
    workdir = Path(tempfile.mkdtemp(prefix="flexai-helm-", dir="/tmp"))  # short: unix socket paths
    plane = ControlPlane(bin_dir, workdir=workdir / "cp", controller_manager=True, kwok=False)
    node = RealNode(plane, bin_dir / "kubelet", workdir / "node", NODE)
    error = None
    try:
        plane.start()
        node.start(images)  # the pause and base images; the chart's come from the README's step
    except ControlPlaneError as e:
        error = f"cluster failed to start: {e}\n{plane.log_tails(30)}\n{node.log_tails(40)}"
    if error is not None:
        node.stop()
        plane.stop()
        pytest.fail(error, pytrace=False)
    inventory = workdir / "cards.json"
    inventory.write_text(dumps([CardReading(c, 0, 0) for c in CARDS]))
    # The README's relative paths (deploy/..., tools/...) from a directory of the test's own,
    # where the files the steps write (values, the workload) stay out of the repository.
    cwd = workdir / "readme"
    cwd.mkdir()
    for top in ("deploy", "tools"):
        (cwd / top).symlink_to(REPO_ROOT / top)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",  # helm, kubectl: the built ones
        "KUBECONFIG": str(plane.kubeconfig),
        "CONTAINERD_ADDRESS": str(node.socket),
        "HELM_CACHE_HOME": str(workdir / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(workdir / "helm" / "config"),
        "HELM_DATA_HOME": str(workdir / "helm" / "data"),
        "NODE": NODE,
        "APISERVER_PORT": str(plane.api_port),
        "SCHEDULER_PORT": str(free_port()),
        "EXTENDER_PORT": str(free_port()),
        "VIEWS_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
        "INVENTORY": str(inventory),
        "POD_RESOURCES_DIR": str(node.pod_resources_socket.parent),
        "STATE_DIR": str(workdir / "flexai"),
        "HOOK_DIR": str(workdir / "flexai-hook"),
    }
    print(f"\nhelm cluster up: control plane {plane.timings}, node {node.timings}")
    try:
        yield HelmCluster(plane, node, workdir, readme.Runner(cwd, env))
    finally:
        with contextlib.suppress(Exception):  # a failed test may leave the release's pods
            api = plane.core_api()
            try:
                for ns in (WORKLOAD_NS, SYSTEM_NS):
                    for p in api.list_namespaced_pod(ns).items:
                        api.delete_namespaced_pod(str(p.metadata.name), ns, grace_period_seconds=0)
            finally:
                api.api_client.close()
        t0 = time.monotonic()
        node.stop()
        t1 = time.monotonic()
        plane.stop()
        print(f"\nhelm cluster down: node {t1 - t0:.1f} s, control plane {time.monotonic() - t1:.1f} s")
        if not os.environ.get("FLEXAI_E2E_KEEP"):
            # The node's containerd store holds the four images unpacked: removing it took 80 s
            # here, so it goes on beside the next tests (on this file system only: nothing
            # mounted under it is touched, should an unmount have failed).
            subprocess.run(
                ["sh", "-c", 'rm -rf --one-file-system "$1" >/dev/null 2>&1 &', "sh", str(workdir)], check=True
            )


def test_the_readme_installs_runs_upgrades_and_uninstalls_the_chart(helm_cluster: HelmCluster) -> None:
    c = helm_cluster
    assert set(c.steps.env) >= set(readme.VARIABLES)
    core = c.plane.core_api()
    apps = k8s.AppsV1Api(core.api_client)
    try:
        # The kubelet's own Lease comes a moment after its Node: part of "before".
        coord = k8s.CoordinationV1Api(core.api_client)
        wait_until(
            lambda: _exists(lambda: coord.read_namespaced_lease(NODE, "kube-node-lease")),
            60,
            "the kubelet's node lease",
        )
        before = _objects(c)
        node_meta = _node_meta(core)
        assert c.node.capacity(res.VGPU_NUMBER) == 0, "a device plugin before the chart"

        # 1. Images: built (cached) and imported into the node's containerd by the README's loop.
        c.steps.run("images-local")
        assert set(CHART_IMAGES) <= set(c.node.images())

        # 2-3. Label, values, install; then the README's checks.
        for name in ("label", "values-one-machine", "install"):
            c.steps.run(name)
        t_install = time.monotonic()
        out = c.steps.run("check")
        installed_s = time.monotonic() - t_install
        _check_agent(c, core)
        _check_scheduler(core)
        views = json.loads(out.strip().splitlines()[-1])  # the service proxy's /v1/nodes
        mine = [v for v in views if v["name"] == NODE]
        assert len(mine) == 1 and mine[0]["healthy_cards"] == len(CARDS), views

        # 4. The README's example, its model path and vLLM command swapped, on its slice.
        (c.steps.cwd / "model").mkdir()
        (c.steps.cwd / "model" / MODEL_MARK).write_text("{}")
        (c.steps.cwd / "deepseek-r1.yaml").write_text(_workload(c.steps.cwd / "model"))
        t_workload = time.monotonic()
        out = c.steps.run("workload")
        workload_s = time.monotonic() - t_workload
        (first,) = _workload_pods(core)
        a = _allocation(first)
        printed = out.strip().splitlines()[-1]  # the README's last command prints the annotation
        assert ann.decode_allocation(WORKLOAD_NS, str(first.metadata.name), first.metadata.uid or "", printed) == a
        (s,) = a.slices
        assert (a.node, s.container, s.cores, s.memory_mib) == (NODE, "deepseek-r1", 50, 24 * 1024)
        _check_workload_output(core, str(first.metadata.name), s.card_uuid)

        # 5. A policy upgrade takes effect: spread (the README's step) sends the next replica to
        # another card; binpack (the same step with the other policy) back to a used one.
        schedulers = _scheduler_pods(core)
        c.steps.run("policy")
        assert _scheduler_pods(core).isdisjoint(schedulers), "the upgrade did not replace the scheduler pod"
        second = _scale(apps, core, 2)
        spread_card = _allocation(second).slices[0].card_index
        assert spread_card != s.card_index
        c.steps.run("policy", c.steps.script("policy").replace("cardPolicy=spread", "cardPolicy=binpack"))
        third = _scale(apps, core, 3)
        assert _allocation(third).slices[0].card_index in {s.card_index, spread_card}

        # 6. Uninstall and the README's cleanup: nothing left that was not there before.
        c.steps.run("uninstall")
        after = _objects(c)
        assert after - before == set(), f"left behind: {sorted(after - before)}"
        assert before - after == set(), f"removed: {sorted(before - after)}"
        assert _node_meta(core) == node_meta
        wait_until(lambda: c.node.allocatable(res.VGPU_NUMBER) == 0, 60, "the kubelet to drop the chart's vGPUs")
        assert c.steps.done == list(readme.RUN)
    finally:
        core.api_client.close()
    print(
        f"\nREADME steps (s): { {k: round(v, 1) for k, v in c.steps.seconds.items()} }"
        f"\nhelm install -> both pods Running (the check step): {installed_s:.1f} s; "
        f"workload applied -> Running: {workload_s:.1f} s"
    )


# ---- what the steps made


def _check_agent(c: HelmCluster, core: k8s.CoreV1Api) -> None:
    """The agent runs in its DaemonSet's pod (none was started beside it here), registered the
    device plugin with the kubelet from there, and wrote the node's inventory."""
    assert "agent" not in c.node.procs
    (agent,) = core.list_namespaced_pod(SYSTEM_NS, label_selector="app.kubernetes.io/component=node").items
    assert agent.spec.node_name == NODE and agent.status.phase == "Running"
    assert agent.spec.host_network is True
    log = core.read_namespaced_pod_log(str(agent.metadata.name), SYSTEM_NS, container="agent")
    assert f"registered {res.VGPU_NUMBER} with the kubelet" in log, log[-2000:]
    # The kubelet publishes a registered plugin's devices with its next node status update.
    vgpus = sum(card.max_vgpus for card in CARDS)
    wait_until(lambda: c.node.allocatable(res.VGPU_NUMBER) == vgpus, 30, f"{vgpus} allocatable vGPUs on the node")
    text = (core.read_node(NODE).metadata.annotations or {})[ann.NODE_INVENTORY]
    written = ann.decode_inventory(NODE, text).cards
    assert [(w.uuid, w.memory_mib, w.max_vgpus) for w in written] == [
        (k.uuid, k.memory_mib, k.max_vgpus) for k in CARDS
    ]


def _check_scheduler(core: k8s.CoreV1Api) -> None:
    (pod,) = core.list_namespaced_pod(SYSTEM_NS, label_selector="app.kubernetes.io/component=scheduler").items
    assert pod.status.phase == "Running"
    ready = {cs.name: cs.ready for cs in pod.status.container_statuses}
    assert ready == {"kube-scheduler": True, "extender": True, "views": True}


def _workload(model_dir: Path) -> str:
    """The README's Deployment and Service, with what this node cannot run swapped: the model
    path (a directory here), vLLM (the base image's shell), the probes and port (nothing
    serves), and the pod network (none: host network)."""
    blocks = [d for d in yaml.safe_load_all(_readme_yaml()) if d]
    deployment, service = blocks
    spec = deployment["spec"]["template"]["spec"]
    (volume,) = spec["volumes"]
    volume["hostPath"]["path"] = str(model_dir)
    (ctr,) = spec["containers"]
    ctr.update(image=BASE_IMAGE, imagePullPolicy="Never", command=["/bin/sh", "-c", WORKLOAD_SCRIPT])
    for key in ("args", "ports", "livenessProbe", "readinessProbe"):
        del ctr[key]
    spec["hostNetwork"] = True
    return yaml.safe_dump_all([deployment, service], sort_keys=False)


def _readme_yaml() -> str:
    text = readme.README.read_text()
    start = text.index("```yaml\n") + len("```yaml\n")
    return text[start : text.index("```", start)]


def _workload_pods(core: k8s.CoreV1Api) -> list[k8s.V1Pod]:
    pods = core.list_namespaced_pod(WORKLOAD_NS, label_selector="app=deepseek-r1").items
    live = [p for p in pods if p.metadata.deletion_timestamp is None]
    return sorted(live, key=lambda p: p.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC))


def _allocation(p: k8s.V1Pod) -> Allocation:
    text = (p.metadata.annotations or {}).get(ann.POD_ALLOCATION)
    assert text, f"pod {p.metadata.name}: no allocation annotation (not placed by the chart's scheduler)"
    return ann.decode_allocation(str(p.metadata.namespace), str(p.metadata.name), p.metadata.uid or "", text)


def _check_workload_output(core: k8s.CoreV1Api, pod: str, card_uuid: str) -> None:
    """What the container printed: the card it was given, the hook preloaded, its slice."""

    def printed() -> str:
        log = core.read_namespaced_pod_log(pod, WORKLOAD_NS, container="deepseek-r1")
        return log if log.count("@@@") == 2 else ""

    log = wait_until(printed, 30, "the workload's output")
    environ, config, models = log.split("@@@\n")
    env = dict(line.split("=", 1) for line in environ.splitlines() if "=" in line)
    assert env["NVIDIA_VISIBLE_DEVICES"] == card_uuid
    assert env["LD_PRELOAD"] == hook_config.DEFAULT_LIBRARY
    (v,) = hook_config.parse(config).vgpus
    assert (v.uuid, v.cores, v.memory_bytes) == (card_uuid, 50, 24 << 30)
    assert models.split() == [MODEL_MARK]


def _scale(apps: k8s.AppsV1Api, core: k8s.CoreV1Api, replicas: int) -> k8s.V1Pod:
    """Scale the example to ``replicas``; the new pod once it runs."""
    old = {p.metadata.name for p in _workload_pods(core)}
    apps.patch_namespaced_deployment_scale("deepseek-r1", WORKLOAD_NS, {"spec": {"replicas": replicas}})

    def new_running() -> k8s.V1Pod | None:
        pods = _workload_pods(core)
        new = [p for p in pods if p.metadata.name not in old]
        if len(pods) == replicas and len(new) == 1 and new[0].status.phase == "Running":
            return new[0]
        return None

    pod: k8s.V1Pod = wait_until(new_running, 300, f"replica {replicas} running", interval=1)
    return pod


def _scheduler_pods(core: k8s.CoreV1Api) -> set[str]:
    pods = core.list_namespaced_pod(SYSTEM_NS, label_selector="app.kubernetes.io/component=scheduler").items
    return {str(p.metadata.name) for p in pods}


def _objects(c: HelmCluster) -> set[tuple[str, str, str]]:
    """(resource, namespace, name) of every object the apiserver lists, events aside."""
    kinds = [
        k
        for k in c.kubectl("api-resources", "--verbs=list", "-o", "name").split()
        if k not in ("events", "events.events.k8s.io", "componentstatuses")
    ]
    items = json.loads(c.kubectl("get", ",".join(kinds), "--all-namespaces", "-o", "json"))["items"]
    return {
        (f"{i['kind']}.{i['apiVersion']}", i["metadata"].get("namespace", ""), i["metadata"]["name"]) for i in items
    }


def _exists(read: Callable[[], object]) -> bool:
    try:
        read()
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


def _node_meta(core: k8s.CoreV1Api) -> tuple[dict[str, str], set[str]]:
    meta = core.read_node(NODE).metadata
    return dict(meta.labels or {}), set(meta.annotations or {})
