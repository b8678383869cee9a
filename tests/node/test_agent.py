"""The agent's loop pieces: metrics, the ledger across restarts, startup seeding, the CLI."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from flexai_node.admitter import NodeAdmitter
from flexai_node.agent import AgentSettings, NodeAgent
from flexai_node.cli import parse_args
from flexai_node.hook import config as hook_config
from flexai_node.hook.regions import RegionUsageReader
from flexai_node.hook.shim import RegionSnapshot, VGPUUsage
from flexai_node.inventory import CardReading, FileInventory, dumps
from flexai_node.ledger import Ledger, LedgerError
from flexai_node.metrics import VgpuUsage

from .conftest import make_admitter
from .fakes import CARDS, FakeNodeApi, bound_pod, container, slice_on

A, B = CARDS


class Usage:
    def read(self, uid: str, container: str) -> dict[str, VgpuUsage]:
        return {A.uuid: VgpuUsage(2048, 17.5)} if (uid, container) == ("u1", "main") else {}


def make_agent(tmp: Path, api: FakeNodeApi) -> NodeAgent:
    inv = tmp / "cards.json"
    inv.write_text(dumps([CardReading(A, 40, 9000), CardReading(B, 0, 0)]))
    settings = AgentSettings("gpu-1", tmp / "state", Path("/hook.so"), plugin_dir=tmp / "dp", metrics_port=None)
    return NodeAgent(settings, api, FileInventory(inv), usage=Usage())


def test_metrics_per_card_and_per_vgpu(tmp_path: Path) -> None:
    api = FakeNodeApi()
    api.add(bound_pod("p", "u1", [container("main", 1, 30, 4)], [slice_on(A, "main", 30, 4096)]))
    agent = make_agent(tmp_path, api)
    agent.tick()
    text = generate_latest(agent.registry).decode()
    card = 'node="gpu-1",uuid="GPU-aaaa"'
    vgpu = 'container="main",namespace="default",node="gpu-1",pod="p",uuid="GPU-aaaa"'
    for line in [
        f"flexai_card_utilisation_percent{{{card}}} 40.0",
        f"flexai_card_memory_used_mib{{{card}}} 9000.0",
        f"flexai_card_allocated_cores_percent{{{card}}} 30.0",
        f"flexai_card_allocated_memory_mib{{{card}}} 4096.0",
        f"flexai_card_healthy{{{card}}} 1.0",
        f"flexai_vgpu_cores_limit_percent{{{vgpu}}} 30.0",
        f"flexai_vgpu_memory_limit_mib{{{vgpu}}} 4096.0",
        f"flexai_vgpu_memory_used_mib{{{vgpu}}} 2048.0",
        f"flexai_vgpu_utilisation_percent{{{vgpu}}} 17.5",
    ]:
        assert line in text
    # Measured use of our container (2048) is subtracted from NVML's 9000.
    note = api.node_annotations["gpu-1"]["vgpu.flexai.io/inventory"]
    assert '"usedOutsideMiB":6952' in note
    # The pod goes: its series go with it.
    api.delete("u1")
    agent.tick()
    assert 'pod="p"' not in generate_latest(agent.registry).decode()


def test_unreadable_inventory_reports_last_cards_unhealthy(tmp_path: Path) -> None:
    api = FakeNodeApi()
    agent = make_agent(tmp_path, api)
    agent.tick()
    (tmp_path / "cards.json").write_text("{")
    agent.tick()
    assert [c.healthy for c in agent.plugin.service.cards] == [False, False]
    assert '"healthy":false' in api.node_annotations["gpu-1"]["vgpu.flexai.io/inventory"]


def admitter(api: FakeNodeApi, state: Path) -> NodeAdmitter:
    return make_admitter(api, state)


def test_the_ledger_survives_an_agent_restart(tmp_path: Path) -> None:
    api = FakeNodeApi()
    api.add(bound_pod("p1", "u1", [container("main", 1, 30, 4)], [slice_on(A, "main", 30, 4096)]))
    api.add(bound_pod("p2", "u2", [container("main", 1, 30, 4)], [slice_on(B, "main", 30, 4096)]))
    assert admitter(api, tmp_path).allocate([["x"]])[0].envs["NVIDIA_VISIBLE_DEVICES"] == A.uuid
    # A new agent process: p1 stays admitted, so the next call is p2's.
    assert admitter(api, tmp_path).allocate([["y"]])[0].envs["NVIDIA_VISIBLE_DEVICES"] == B.uuid


def test_a_deleted_pod_frees_its_compute_window_before_the_next_prune(tmp_path: Path) -> None:
    """Seen on the real node (tests/realnode): pods deleted a moment ago kept their windows
    until the 30 s prune, so a new pod on the card found none free and shared pod 1's."""
    api = FakeNodeApi()
    a = admitter(api, tmp_path)

    def admit(name: str, uid: str, cores: int) -> int:
        api.add(bound_pod(name, uid, [container("main", 1, cores, 1)], [slice_on(A, "main", cores, 1024)]))
        mount = next(m for m in a.allocate([[name]])[0].mounts if m.container_path == "/etc/flexai/vgpu.conf")
        return hook_config.parse(Path(mount.host_path).read_text()).vgpus[0].core_offset

    # [0, 40) and [40, 80); the second pod is deleted; 30% fits in [40, 70), not in [80, 100).
    assert (admit("p1", "u1", 40), admit("p2", "u2", 40)) == (0, 40)
    api.delete("u2")
    assert admit("p3", "u3", 30) == 40


def test_a_corrupt_ledger_stops_the_agent_rather_than_double_allocating(tmp_path: Path) -> None:
    (tmp_path / "ledger.json").write_text('{"v": 1, "admitted": 3}')
    with pytest.raises(LedgerError, match="move it aside"):
        Ledger(tmp_path / "ledger.json")


def test_seed_records_pods_the_kubelet_already_admitted(tmp_path: Path) -> None:
    api = FakeNodeApi()
    running = bound_pod("old", "u1", [container("main", 1, 30, 4)], [slice_on(A, "main", 30, 4096)])
    running["status"]["containerStatuses"] = [{"name": "main", "state": {"waiting": {"reason": "ContainerCreating"}}}]
    api.add(running)
    api.add(bound_pod("new", "u2", [container("main", 1, 30, 4)], [slice_on(B, "main", 30, 4096)]))
    a = admitter(api, tmp_path)
    assert a.seed(a.bound_pods()) == 1
    assert a.allocate([["x"]])[0].envs["NVIDIA_VISIBLE_DEVICES"] == B.uuid


def test_cli_flags_and_env() -> None:
    args = parse_args([], env={"NODE_NAME": "n1", "FLEXAI_INVENTORY": "file:/x.yaml", "FLEXAI_MAX_VGPUS": "3"})
    assert (args.node_name, args.inventory, args.max_vgpus_per_card, args.metrics_port) == (
        "n1",
        "file:/x.yaml",
        3,
        9400,
    )
    args = parse_args(["--node-name", "n2", "--device-plugin-dir", "/tmp/dp"], env={"NODE_NAME": "n1"})
    assert (args.node_name, str(args.device_plugin_dir)) == ("n2", "/tmp/dp")
    with pytest.raises(SystemExit):
        parse_args([], env={})
    with pytest.raises(SystemExit):
        parse_args(["--node-name", "n", "--inventory", "dcgm"], env={})
    assert parse_args([], env={"NODE_NAME": "n", "FLEXAI_REF_CLOCK_MHZ": "1485"}).ref_clock_mhz == 1485
    assert parse_args([], env={"NODE_NAME": "n"}).ref_clock_mhz == "auto"  # the chart's default too
    assert parse_args(["--ref-clock-mhz", "0"], env={"NODE_NAME": "n"}).ref_clock_mhz == "off"
    for bad in ("-5", "fast", "20000"):
        with pytest.raises(SystemExit):
            parse_args(["--node-name", "n", "--ref-clock-mhz", bad], env={})


def test_card_health_flows_to_the_plugin(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, FakeNodeApi())
    agent.tick()
    (tmp_path / "cards.json").write_text(dumps([CardReading(A), CardReading(replace(B, healthy=False))]))
    agent.tick()
    assert [c.healthy for c in agent.plugin.service.cards] == [True, False]


class FakeShim:
    def __init__(self) -> None:
        self.busy_ns = 0

    def snapshot(self, region_path: object) -> RegionSnapshot:
        def v(i: int, uuid: str, cores: int) -> VGPUUsage:
            return VGPUUsage(i, uuid, -1, 4 << 30, 3 << 30, self.busy_ns, 50_000_000, cores, 0)

        return RegionSnapshot((v(0, A.uuid, 30), v(1, B.uuid, 0)), ())


def test_region_usage_memory_and_utilisation_between_reads(tmp_path: Path) -> None:
    region = tmp_path / "region"
    shim, clock = FakeShim(), [100.0]
    reader = RegionUsageReader(
        lambda uid, c: region if (uid, c) == ("u1", "main") else tmp_path / "none", shim, monotonic=lambda: clock[0]
    )
    assert reader.read("u1", "main") == {}  # no CUDA process yet: no region
    region.write_bytes(b"")
    first = reader.read("u1", "main")
    assert first[A.uuid] == VgpuUsage(3072, None)  # a rate needs two reads
    shim.busy_ns, clock[0] = 600_000_000, 102.0  # 0.6 s of GPU time in 2 s
    second = reader.read("u1", "main")
    assert second[A.uuid].utilisation_pct == pytest.approx(30.0)
    assert second[B.uuid] == VgpuUsage(3072, None)  # unlimited: the hook measures no time


def test_agent_start_registers_and_reports_and_stops(short_tmp: Path) -> None:
    from .fake_kubelet import FakeKubelet

    kubelet = FakeKubelet(short_tmp / "dp")
    kubelet.start()
    api = FakeNodeApi()
    inv = short_tmp / "cards.json"
    inv.write_text(dumps([CardReading(A), CardReading(B)]))
    settings = AgentSettings(
        "gpu-1", short_tmp / "state", Path("/hook.so"), plugin_dir=kubelet.dir, metrics_port=None, poll_every_s=3600
    )
    agent = NodeAgent(settings, api, FileInventory(inv))
    agent.start()
    try:
        assert kubelet.registrations.get(timeout=10).resource_name == "huawei.com/vgpu-number"
        assert set(kubelet.device_lists.get(timeout=10).values()) == {"Healthy"}
        # The first tick runs at start: the node annotation is there without waiting a period.
        for _ in range(1000):
            if api.patches:
                break
            threading.Event().wait(0.01)
        assert "vgpu.flexai.io/inventory" in api.node_annotations["gpu-1"]
        inv.write_text(dumps([CardReading(A), CardReading(replace(B, healthy=False))]))
        agent.tick()
        assert sorted(kubelet.device_lists.get(timeout=10).values()).count("Unhealthy") == 5
    finally:
        agent.stop()
        kubelet.stop()
