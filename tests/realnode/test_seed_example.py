"""Scenario 1, the seed's example on a real node: a pod asking 1 vGPU of 20% and 3 GiB is
scheduled through the extender, the real kubelet calls our Allocate, and inside the container
the program meets its slice (hook preloaded, fake driver where the real one would be)."""

from __future__ import annotations

import pytest

from flexai_node.hook import config as hook_config

from .conftest import NS, RealCluster
from .helpers import OUT_OF_MEMORY, Background, allocation, given, monitor, pod, probe, wait_running
from .pods import C, gpu_pod, limits, only

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]
GIB = 1024
OVERHEAD_MIB = hook_config.DEFAULT_CONTEXT_OVERHEAD >> 20


def test_the_seed_pod_runs_on_its_slice(cluster: RealCluster) -> None:
    core = cluster.core()
    try:
        core.create_namespaced_pod(NS, gpu_pod("seed", {"main": C(limits(1, 20, 3))}, cluster.hook.build_dir))
        wait_running(cluster, core, ["seed"])
        p = pod(core, "seed")
        assert p.spec.node_name == cluster.node.name
        s = only(allocation(p).slices)
        assert (s.container, s.cores, s.memory_mib) == ("main", 20, 3 * GIB)
    finally:
        core.api_client.close()

    g = given(cluster, "seed", "main")
    # The card the extender chose, by UUID, as the NVIDIA runtime reads it.
    assert g.env["NVIDIA_VISIBLE_DEVICES"] == s.card_uuid
    # The hook preloaded: named in the env, and mapped in the container's first process.
    assert g.env["LD_PRELOAD"] == hook_config.DEFAULT_LIBRARY
    assert hook_config.DEFAULT_LIBRARY in g.maps
    v = only(g.config.vgpus)
    assert (v.uuid, v.cores, v.memory_bytes) == (s.card_uuid, 20, 3 << 30)

    # What a CUDA program sees: only its card, and 3 GiB of it.
    info = only(probe(cluster, "seed", "main", "info"))
    assert info["count"] == 1 and info["uuid"] == s.card_uuid
    assert info["total_mem_mib"] == 3 * GIB and info["info_total_mib"] == 3 * GIB

    # Refused past 3 GiB (less the context the hook charges), and gpu-monitor, run in the
    # same container while the memory is held, shows the slice full.
    fill = Background(lambda: probe(cluster, "seed", "main", "fill", "256", "6"))
    report = _monitor_when_used(cluster, "seed", "main")
    first, after = fill.result()
    assert first["refused_with"] == OUT_OF_MEMORY
    assert first["allocated_mib"] == 3 * GIB - OVERHEAD_MIB and first["info_free_mib"] == 0
    assert after["after_hold_refused_with"] == OUT_OF_MEMORY
    vgpu = only(report["vgpus"])
    assert vgpu["uuid"] == s.card_uuid and vgpu["limit_percent"] == 20
    assert (vgpu["memory_used_mb"], vgpu["memory_quota_mb"]) == (3 * GIB, 3 * GIB)
    assert [pr["memory_mb"] for pr in vgpu["processes"]] == [3 * GIB]


def _monitor_when_used(cluster: RealCluster, pod_name: str, container: str) -> dict[str, object]:
    """gpu-monitor's report once the filling process holds memory (it starts a moment later)."""
    for _ in range(20):
        report = monitor(cluster, pod_name, container)
        vgpus = report["vgpus"]
        if vgpus and vgpus[0]["memory_used_mb"] >= 3 * GIB:
            return report
    raise AssertionError(f"gpu-monitor never showed the slice in use: {report}")
