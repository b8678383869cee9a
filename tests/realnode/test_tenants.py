"""Scenario 3 and 5 on the real node: two tenants on one card, each held to its own memory
while the agent reads their regions on every tick (from its own PID namespace); and a
crash-looping container that keeps its slice and its region across the kubelet's restarts."""

from __future__ import annotations

import json
from functools import partial

import pytest

from flexai_core import annotations as ann
from flexai_node.hook import config as hook_config
from tests.e2e.controlplane import wait_until

from .conftest import NS, RealCluster
from .helpers import OUT_OF_MEMORY, Background, allocation, given, monitor, pod, probe, wait_running
from .pods import PROBE, C, gpu_pod, json_lines, limits, only

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]
OVERHEAD_MIB = hook_config.DEFAULT_CONTEXT_OVERHEAD >> 20
GIB = 1024


def test_two_tenants_on_one_card_each_held_to_its_own_memory(cluster: RealCluster) -> None:
    card = cluster.cards[3]
    pinned = {ann.GPU_UUIDS: card.uuid}
    core = cluster.core()
    try:
        core.create_namespaced_pod(
            NS, gpu_pod("tenant-a", {"main": C(limits(1, 30, 4))}, cluster.hook.build_dir, annotations=pinned)
        )
        core.create_namespaced_pod(
            NS, gpu_pod("tenant-b", {"main": C(limits(1, 40, 2))}, cluster.hook.build_dir, annotations=pinned)
        )
        wait_running(cluster, core, ["tenant-a", "tenant-b"])
        slices = {n: only(allocation(pod(core, n)).slices) for n in ("tenant-a", "tenant-b")}
    finally:
        core.api_client.close()
    assert {s.card_uuid for s in slices.values()} == {card.uuid}
    quota = {"tenant-a": 4 * GIB, "tenant-b": 2 * GIB}
    for name in quota:
        assert only(given(cluster, name, "main").config.vgpus).memory_bytes == quota[name] << 20

    # Both fill their slice and hold it for 20 s: the agent (polling every 5 s) reads both
    # regions several times meanwhile. Neither may then get one block more.
    fills = {n: Background(partial(probe, cluster, n, "main", "fill", "256", "20", timeout=90)) for n in quota}
    wait_until(lambda: all(_used(cluster, n) >= quota[n] for n in quota), 30, "both tenants holding their slice")
    # The agent read both regions, from its own PID namespace, while they were held.
    wait_until(
        lambda: all(_agent_sees(cluster, n) == quota[n] for n in quota),
        30,
        "the agent's metrics showing both tenants' memory",
    )
    during = {n: only(monitor(cluster, n, "main")["vgpus"]) for n in quota}
    results = {n: f.result() for n, f in fills.items()}
    for n, q in quota.items():
        first, after = results[n]
        assert first["allocated_mib"] == q - OVERHEAD_MIB and first["refused_with"] == OUT_OF_MEMORY, (n, first)
        assert after["after_hold_refused_with"] == OUT_OF_MEMORY, f"{n} got memory past its slice: {after}"
        assert (during[n]["memory_used_mb"], during[n]["memory_quota_mb"]) == (q, q), (n, during[n])
        assert during[n]["uuid"] == card.uuid


def _used(cluster: RealCluster, name: str) -> int:
    vgpus = monitor(cluster, name, "main")["vgpus"]
    return int(vgpus[0]["memory_used_mb"]) if vgpus else 0


def _agent_sees(cluster: RealCluster, name: str) -> float | None:
    """flexai_vgpu_memory_used_mib of that pod's container, as the agent last read its region."""
    for (metric, labels), value in cluster.node.agent_metrics().items():
        if metric == "flexai_vgpu_memory_used_mib" and ("pod", name) in labels:
            return value
    return None


# Each run appends to a file in its region directory what it was given and what it could
# allocate, then fails: the file outlives the runs, as the region does.
CRASH = (
    "R=/var/run/flexai/vgpu; "
    '{ echo "visible=$NVIDIA_VISIBLE_DEVICES inode=$(stat -c %i $R) region=$(test -f $R/region && echo yes)"; '
    f"{PROBE} fill 256 0; }} >> $R/runs.log; exit 3"
)


def test_a_crash_looping_container_keeps_its_slice_and_region(cluster: RealCluster) -> None:
    core = cluster.core()
    try:
        core.create_namespaced_pod(NS, gpu_pod("crashy", {"main": C(limits(1, 25, 2), CRASH)}, cluster.hook.build_dir))
        wait_until(lambda: pod(core, "crashy").spec.node_name, 60, "crashy bound")
        p = pod(core, "crashy")
        s = only(allocation(p).slices)
        host = cluster.node.agent_dir / "containers" / str(p.metadata.uid) / "main"
        runs_log = host / "region" / "runs.log"

        def runs() -> list[tuple[dict[str, str], dict[str, int]]]:
            lines = runs_log.read_text().splitlines() if runs_log.exists() else []
            given = [dict(f.split("=", 1) for f in line.split()) for line in lines if line.startswith("visible=")]
            fills = json_lines("\n".join(lines))
            return list(zip(given, fills, strict=False))

        wait_until(lambda: len(runs()) >= 3, 150, "three runs of the crashing container", 1)
        # The kubelet restarted that one container (its status may lag the runs by a moment).
        wait_until(
            lambda: (pod(core, "crashy").status.container_statuses or [])[0].restart_count >= 2, 30, "restartCount 2"
        )
    finally:
        core.api_client.close()
    done = runs()
    for run, fill in done:
        assert run["visible"] == s.card_uuid, done
        # Each run gets the whole slice again: a dead run's charge does not stay in the region.
        assert fill["allocated_mib"] == 2 * GIB - OVERHEAD_MIB and fill["refused_with"] == OUT_OF_MEMORY, done
    # One region directory for all runs, and every run after the first finds the region file.
    assert len({g["inode"] for g, _ in done}) == 1, done
    assert [g.get("region") for g, _ in done[1:]] == ["yes"] * (len(done) - 1), done
    assert hook_config.parse((host / "vgpu.conf").read_text()).vgpus[0].memory_bytes == 2 << 30
    assert (
        sum(
            1
            for e in json.loads((cluster.node.agent_dir / "admissions.json").read_text())["admitted"]
            if e["pod"] == "crashy"
        )
        == 1
    ), "the restarts were admitted again"
