"""Fixtures for the node agent tests: a short temporary directory (unix socket paths are
limited to 107 bytes), a fake kubelet in it, and the plugin wired to a fake API server
and the real hook files (``hook.files`` over ``hook.config``).

The real-apiserver tests (marked e2e) reuse the end-to-end harness's fixtures."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flexai_node.admitter import KubeletPods, NodeAdmitter
from flexai_node.deviceplugin.server import DevicePluginService, PluginServer
from flexai_node.grant import GrantBuilder
from flexai_node.hook import config as hook_config
from flexai_node.hook.files import HookConfigFiles
from flexai_node.ledger import Ledger
from flexai_node.workdirs import Workdirs

# The e2e harness's fixtures and its build-before-tests hook (one harness, shared).
from tests.e2e.conftest import _session_core_api, control_plane, core_api, pytest_collection_finish  # noqa: F401

from .fake_kubelet import FakeKubelet
from .fakes import CARDS, FakeNodeApi

NODE = "gpu-1"
HOOK = Path("/opt/flexai/libflexai_hook.so")


def make_admitter(api: FakeNodeApi, state: Path, kubelet: KubeletPods | None = None) -> NodeAdmitter:
    workdirs = Workdirs(state / "containers")
    return NodeAdmitter(
        NODE,
        api,
        Ledger(state / "admissions.json"),
        workdirs,
        GrantBuilder(HookConfigFiles(workdirs.root, HOOK)),
        lambda: CARDS,
        kubelet,
    )


def config_of(host_dir: str | Path) -> hook_config.HookConfig:
    return hook_config.parse((Path(host_dir) / "vgpu.conf").read_text())


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fx", dir="/tmp") as d:
        yield Path(d)


@dataclass
class Rig:
    kubelet: FakeKubelet
    plugin: PluginServer
    api: FakeNodeApi
    admitter: NodeAdmitter
    state: Path


@pytest.fixture
def rig(short_tmp: Path) -> Iterator[Rig]:
    kubelet = FakeKubelet(short_tmp / "dp")
    kubelet.start()
    api = FakeNodeApi()
    state = short_tmp / "state"
    admitter = make_admitter(api, state)
    plugin = PluginServer(DevicePluginService(admitter, CARDS), kubelet.dir, watch_every_s=0.05)
    plugin.start()
    try:
        yield Rig(kubelet, plugin, api, admitter, state)
    finally:
        plugin.stop()
        kubelet.stop()
