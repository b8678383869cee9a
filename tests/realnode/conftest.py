"""Fixtures for the real-node tests: one real node (containerd + runc + kubelet, flexai-node as
its device plugin on 8 fake cards) joined to a real control plane with our extender.

real_cluster  (session)  the plane, the node, the hook build; reusable by any test that
                         needs a real kubelet (RealCluster.node.import_image for more images)
cluster       (function) the same; every pod of "default" is deleted after the test, and the
                         agent and kubelet are running again if the test stopped them

Needs root (the kubelet, containerd, mounts and cgroups): CI runs as root. Nothing here
skips: a missing binary or package fails with the script that provides it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from flexai_core.model import Card
from flexai_node.inventory import CardReading, dumps
from tests.e2e.conftest import _binaries
from tests.e2e.conftest import pytest_collection_finish as _e2e_collection_finish
from tests.e2e.controlplane import REPO_ROOT, ControlPlane, ControlPlaneError, flexai_sched_extender, wait_until
from tests.e2e.helpers_kube import extender_get
from tests.hook.conftest import HookBuild
from tests.hook.conftest import hook_build as hook_build  # noqa: F401  (the session's one hook build)

from .node import RealNode
from .pods import CARD_MIB, FAKE_CARDS, fake_uuid

IMAGES_SCRIPT = REPO_ROOT / "tools" / "node" / "images.sh"
SETUP_SCRIPT = REPO_ROOT / "tools" / "node" / "setup.sh"
CHART_IMAGES_SCRIPT = REPO_ROOT / "tools" / "images" / "build.sh"
HELM_TEST = "test_helm_install.py"
NS = "default"
NODE = "realnode"
CARDS = tuple(Card(i, fake_uuid(i), "Fake GPU", CARD_MIB, 5) for i in range(FAKE_CARDS))

_images: tuple[dict[str, Path] | None, str | None] | None = None
_LIVE: list[RealNode] = []


def _build_images() -> tuple[dict[str, Path] | None, str | None]:
    """tools/node/images.sh, once per session: (name -> archive, None) or (None, error)."""
    global _images
    if _images is None:
        r = subprocess.run(["bash", str(IMAGES_SCRIPT)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            _images = (None, f"{IMAGES_SCRIPT} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
        else:
            pairs = [line.split(" ", 1) for line in r.stdout.strip().splitlines()]
            _images = ({name: Path(path) for name, path in pairs}, None)
    return _images


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build the binaries (kubelet included) and the images before any test starts, outside
    # pytest-timeout's per-test limit (a first build: 10-25 minutes; debootstrap: 1-2).
    _e2e_collection_finish(session)
    if any(item.get_closest_marker("realnode") for item in session.items):
        _build_images()
    if any(item.path.name == HELM_TEST for item in session.items):
        # The chart's images (cold: about 10 minutes); the README's step finds them cached,
        # and reports this build's error itself if it failed.
        subprocess.run(["bash", str(CHART_IMAGES_SCRIPT)], capture_output=True, check=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The helm install brings a cluster of its own: run it before the shared real node starts,
    # so that two nodes never run at once.
    items.sort(key=lambda item: item.path.name != HELM_TEST)


@dataclass
class RealCluster:
    plane: ControlPlane
    node: RealNode
    hook: HookBuild
    cards: tuple[Card, ...]
    inventory: Path

    def core(self) -> k8s.CoreV1Api:
        """A CoreV1Api on a new client; close it with ``api.api_client.close()``."""
        return self.plane.core_api()

    def extender_node(self) -> dict[str, object]:
        view = extender_get(self.plane, f"/v1/nodes/{self.node.name}")
        assert isinstance(view, dict)
        return view

    def log_tails(self) -> str:
        return self.plane.log_tails(30) + "\n" + self.node.log_tails(40)


def prerequisites() -> tuple[Path, dict[str, Path]]:
    """Root, the node's tools, the control-plane binaries and the node's images: (bin dir, image
    name -> archive); the test fails naming what is missing."""
    if os.geteuid() != 0:
        pytest.fail("tests/realnode run a kubelet and containerd: they need root (CI runs as root)", pytrace=False)
    missing = [t for t in ("containerd", "runc", "ctr", "unshare", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {missing}: run {SETUP_SCRIPT.relative_to(REPO_ROOT)} (make test does)", pytrace=False)
    bin_dir, err = _binaries()
    if bin_dir is None:
        pytest.fail(err or "no control-plane binaries", pytrace=False)
    images, err = _build_images()
    if images is None:
        pytest.fail(err or "no images", pytrace=False)
    return bin_dir, images


@pytest.fixture(scope="session")
def real_cluster(hook_build: HookBuild) -> Iterator[RealCluster]:  # noqa: F811
    bin_dir, images = prerequisites()
    # A short path: unix sockets (containerd's, the device plugins') are limited to 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="flexai-rn-", dir="/tmp"))
    plane = ControlPlane(bin_dir, workdir=workdir / "cp", kwok_all_nodes=False)
    node = RealNode(plane, bin_dir / "kubelet", workdir / "node", NODE)
    inventory = workdir / "cards.json"
    inventory.write_text(dumps([CardReading(c, 0, 0) for c in CARDS]))
    error = None
    t0 = time.monotonic()
    try:
        spec = dataclasses.replace(flexai_sched_extender(), health_path="/readyz")
        plane.start(extender=spec)
        _LIVE.append(node)
        node.start(images)
        node.start_agent(inventory, hook_build.hook)
        wait_until(lambda: _extender_sees(plane), 60, "the extender to see the node's cards")
        node.timings["cluster"] = time.monotonic() - t0
    except (ControlPlaneError, TimeoutError) as e:
        error = f"real node failed to start: {e}\n{plane.log_tails(30)}\n{node.log_tails(40)}"
    if error is not None:
        _teardown(plane, node, workdir)
        pytest.fail(error, pytrace=False)
    print(f"\nreal node up: {node.timings} (control plane {plane.timings})")
    yield RealCluster(plane, node, hook_build, CARDS, inventory)
    _teardown(plane, node, workdir)


def _teardown(plane: ControlPlane, node: RealNode, workdir: Path) -> None:
    # Pods first, while the kubelet still runs, so it stops their containers itself.
    with contextlib.suppress(Exception):
        api = plane.core_api()
        try:
            _delete_all_pods(api, timeout=30)
        finally:
            api.api_client.close()
    node.stop()
    if node in _LIVE:
        _LIVE.remove(node)
    plane.stop()
    if not os.environ.get("FLEXAI_E2E_KEEP"):
        shutil.rmtree(workdir, ignore_errors=True)


def _extender_sees(plane: ControlPlane) -> bool:
    try:
        view = extender_get(plane, f"/v1/nodes/{NODE}")
    except Exception:
        return False
    return isinstance(view, dict) and view.get("healthy_cards") == FAKE_CARDS


def _delete_all_pods(api: k8s.CoreV1Api, timeout: float) -> None:
    for p in api.list_namespaced_pod(NS).items:
        with contextlib.suppress(ApiException):
            api.delete_namespaced_pod(str(p.metadata.name), NS, grace_period_seconds=1)
    wait_until(lambda: not api.list_namespaced_pod(NS).items, timeout, "pods deleted by the kubelet", 0.5)


@pytest.fixture
def cluster(real_cluster: RealCluster) -> Iterator[RealCluster]:
    yield real_cluster
    node = real_cluster.node
    for name in ("containerd", "kubelet"):
        p = node.procs.get(name)
        if p is not None and not p.alive:
            getattr(node, f"start_{name}")()
    agent = node.procs.get("agent")
    if agent is None or not agent.alive:
        node.restart_agent()
    api = real_cluster.core()
    try:
        _delete_all_pods(api, timeout=90)
    finally:
        api.api_client.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for node in _LIVE:
            report.sections.append((f"real node logs ({report.when})", node.log_tails(60)))
    return report
