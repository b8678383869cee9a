"""Scenario 4, faults on the real node: the kubelet restarted, flexai-node killed with SIGKILL,
containerd restarted, pods deleted. Running pods keep their slices; new pods are admitted
on their own slices; no slice is handed out twice; freed slices are reused."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import pytest
from kubernetes import client as k8s

from flexai_core import resources as res
from tests.e2e.controlplane import wait_until
from tests.e2e.helpers_kube import assert_within_capacity, failed_scheduling_messages

from .conftest import NODE, NS, RealCluster
from .helpers import Given, allocation, given, pod, wait_running
from .pods import C, gpu_pod, limits

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]
MIB = 1 << 20


def _create(cluster: RealCluster, core: k8s.CoreV1Api, names: Iterable[str], lim: dict[str, str]) -> list[str]:
    out = list(names)
    for n in out:
        core.create_namespaced_pod(NS, gpu_pod(n, {"main": C(lim)}, cluster.hook.build_dir))
    return out


def _check_own(cluster: RealCluster, core: k8s.CoreV1Api, names: Iterable[str]) -> dict[str, Given]:
    """Each pod's container runs on exactly its own pod's allocation; returns what each got."""
    out = {}
    for n in names:
        s = [x for x in allocation(pod(core, n)).slices if x.container == "main"]
        g = given(cluster, n, "main")
        assert g.env["NVIDIA_VISIBLE_DEVICES"] == ",".join(x.card_uuid for x in s), n
        assert [(v.uuid, v.cores, v.memory_bytes // MIB) for v in g.config.vgpus] == [
            (x.card_uuid, x.cores, x.memory_mib) for x in s
        ], n
        out[n] = g
    return out


def _container_ids(cluster: RealCluster, names: Iterable[str]) -> dict[str, str]:
    return {n: cluster.node.container_id(n, "main") for n in names}


def _windows_disjoint(configs: Iterable[Given]) -> None:
    """Compute windows of limited vGPUs on one card never overlap: nobody got a slice twice."""
    per_card: dict[str, list[tuple[int, int]]] = {}
    for g in configs:
        for v in g.config.vgpus:
            if v.uuid and 0 < v.cores < 100:
                per_card.setdefault(v.uuid, []).append((v.core_offset, v.cores))
    for uuid, windows in per_card.items():
        taken = [0] * 100
        for off, cores in windows:
            for i in range(off, off + cores):
                taken[i] += 1
        assert max(taken) <= 1, f"{uuid}: overlapping windows {windows}"


def test_kubelet_restart_keeps_running_slices_and_admits_new_pods(cluster: RealCluster) -> None:
    core = cluster.core()
    try:
        before = _create(cluster, core, [f"pre-{i}" for i in range(4)], limits(1, 20, 2))
        wait_running(cluster, core, before)
        ids = _container_ids(cluster, before)
        got = _check_own(cluster, core, before)

        registered = cluster.node.registrations()
        cluster.node.restart_kubelet()
        # The kubelet wiped its plugin directory; the agent notices and registers again.
        wait_until(lambda: cluster.node.registrations() > registered, 60, "the agent registering again")
        wait_until(lambda: cluster.node.allocatable(res.VGPU_NUMBER) == 40, 60, "vGPUs allocatable again")
        assert _container_ids(cluster, before) == ids, "the kubelet restart restarted containers"
        assert _check_own(cluster, core, before) == got

        after = _create(cluster, core, [f"post-{i}" for i in range(4)], limits(1, 20, 2))
        wait_running(cluster, core, after)
        now = _check_own(cluster, core, before + after)
        _windows_disjoint(now.values())
        assert_within_capacity(core, {NODE: cluster.cards})
    finally:
        core.api_client.close()


def test_agent_killed_and_restarted_hands_out_no_slice_twice(cluster: RealCluster) -> None:
    core = cluster.core()
    try:
        before = _create(cluster, core, [f"held-{i}" for i in range(5)], limits(1, 15, 1))
        wait_running(cluster, core, before)
        ledger = cluster.node.agent_dir / "admissions.json"
        recorded = _admitted(ledger, before)
        assert len(recorded) == len(before)

        cluster.node.kill_agent(signal.SIGKILL)
        cluster.node.restart_agent()
        # The admissions survived the crash: nothing forgotten, nothing admitted again.
        assert _admitted(ledger, before) == recorded

        after = _create(cluster, core, [f"new-{i}" for i in range(5)], limits(1, 15, 1))
        wait_running(cluster, core, after)
        now = _check_own(cluster, core, before + after)
        _windows_disjoint(now.values())
        dirs = {(g.env["NVIDIA_VISIBLE_DEVICES"], g.config_text) for g in now.values()}
        assert len(dirs) == len(now)
        assert_within_capacity(core, {NODE: cluster.cards})
    finally:
        core.api_client.close()


def _admitted(ledger: Path, pods: list[str]) -> list[dict[str, object]]:
    return sorted(
        (e for e in json.loads(ledger.read_text())["admitted"] if e["pod"] in pods), key=lambda e: str(e["pod"])
    )


def test_containerd_restart_keeps_pods_and_admits_new_ones(cluster: RealCluster) -> None:
    core = cluster.core()
    try:
        before = _create(cluster, core, ["c-0", "c-1"], limits(2, 10, 1))
        wait_running(cluster, core, before)
        ids = _container_ids(cluster, before)
        got = _check_own(cluster, core, before)

        cluster.node.restart_containerd()
        assert _container_ids(cluster, before) == ids, "containers did not survive containerd's restart"
        assert _check_own(cluster, core, before) == got
        after = _create(cluster, core, ["c-2", "c-3"], limits(2, 10, 1))
        wait_running(cluster, core, after)
        _windows_disjoint(_check_own(cluster, core, before + after).values())
    finally:
        core.api_client.close()


def test_deleted_pods_free_their_slices_for_new_pods(cluster: RealCluster) -> None:
    core = cluster.core()
    try:
        # A whole card each: the node is full.
        full = _create(cluster, core, [f"whole-{i}" for i in range(len(cluster.cards))], limits(1))
        wait_running(cluster, core, full)
        cards = {n: allocation(pod(core, n)).slices[0].card_uuid for n in full}

        # Deleted: its card is free in the extender's view within seconds...
        core.delete_namespaced_pod("whole-5", NS, grace_period_seconds=1)
        wait_until(lambda: _card_free(cluster, cards["whole-5"]), 15, "the card free in the extender's view")
        # ... and a new pod takes it.
        _create(cluster, core, ["next"], limits(1))
        wait_running(cluster, core, ["next"])
        assert allocation(pod(core, "next")).slices[0].card_uuid == cards["whole-5"]

        # A pod waiting for a full node runs on the card of the next pod deleted.
        _create(cluster, core, ["late"], limits(1))
        wait_until(
            lambda: any("cards with room" in m for m in failed_scheduling_messages(core, "late")),
            30,
            "late refused while the node is full",
        )
        core.delete_namespaced_pod("whole-2", NS, grace_period_seconds=1)
        wait_running(cluster, core, ["late"], timeout=60)
        assert allocation(pod(core, "late")).slices[0].card_uuid == cards["whole-2"]
        _check_own(cluster, core, ["next", "late"])
    finally:
        core.api_client.close()


def _card_free(cluster: RealCluster, uuid: str) -> bool:
    for card in cast(list[dict[str, object]], cluster.extender_node()["card_details"]):
        if card["uuid"] == uuid:
            return bool(card["cores_allocated"] == 0 and card["memory_mib_allocated"] == 0)
    return False
