"""The device plugin against a fake kubelet: registration, restarts, health, Allocate."""

from __future__ import annotations

import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from flexai_core.resources import VGPU_NUMBER
from flexai_node.admitter import REFUSED_REASON
from flexai_node.deviceplugin import api_pb2 as pb
from flexai_node.deviceplugin.devices import device_id, preferred
from flexai_node.hook import config as hook_config
from flexai_node.nodeapi import KubeError

from .conftest import HOOK, Rig, config_of, make_admitter
from .fakes import CARDS, bound_pod, container, slice_on

A, B = CARDS
WAIT = 10.0  # seconds to wait for the kubelet to see something; never an assertion on time


def registered(rig: Rig) -> pb.RegisterRequest:
    return rig.kubelet.registrations.get(timeout=WAIT)


def next_devices(rig: Rig) -> dict[str, str]:
    return rig.kubelet.device_lists.get(timeout=WAIT)


def allocate(rig: Rig, *sizes: int) -> pb.AllocateResponse:
    """One Allocate with a container request per size; device IDs as the kubelet might pick."""
    stub = rig.kubelet.plugin(rig.plugin.socket.name)
    reqs = [pb.ContainerAllocateRequest(devices_ids=[device_id(CARDS[i].uuid, 4) for i in range(n)]) for n in sizes]
    resp: pb.AllocateResponse = stub.Allocate(pb.AllocateRequest(container_requests=reqs), timeout=WAIT)
    return resp


def test_registers_after_serving_and_advertises_cards_times_vgpus(rig: Rig) -> None:
    req = registered(rig)
    assert (req.version, req.endpoint, req.resource_name) == ("v1beta1", "flexai-vgpu.sock", VGPU_NUMBER)
    assert req.options.get_preferred_allocation_available and not req.options.pre_start_required
    devices = next_devices(rig)
    assert sorted(devices) == sorted(f"{c.uuid}::{k}" for c in CARDS for k in range(5))
    assert set(devices.values()) == {"Healthy"}
    assert rig.kubelet.numa[f"{B.uuid}::0"] == [1]


def test_registers_again_when_the_kubelet_restarts(rig: Rig) -> None:
    registered(rig)
    next_devices(rig)
    rig.kubelet.restart()  # wipes the directory, our socket included
    again = registered(rig)
    assert again.endpoint == "flexai-vgpu.sock"
    assert len(next_devices(rig)) == 10  # the kubelet dialled the new socket
    assert rig.kubelet.registrations.empty()  # once per kubelet start, no more


def test_a_failed_registration_is_retried(rig: Rig) -> None:
    registered(rig)
    rig.kubelet.reject_with = "kubelet says no"
    rig.kubelet.restart()
    assert registered(rig).resource_name == VGPU_NUMBER  # the retry after the refusal
    assert rig.kubelet.registrations.empty()  # once per kubelet start, no more


def test_health_changes_reach_list_and_watch(rig: Rig) -> None:
    registered(rig)
    next_devices(rig)
    rig.plugin.service.set_cards([A, replace(B, healthy=False)])
    devices = next_devices(rig)
    assert {d for d, h in devices.items() if h == "Unhealthy"} == {f"{B.uuid}::{k}" for k in range(5)}
    rig.plugin.service.set_cards([A, B])
    assert set(next_devices(rig).values()) == {"Healthy"}


def mounts_of(c: pb.ContainerAllocateResponse) -> dict[str, tuple[str, bool]]:
    return {m.container_path: (m.host_path, m.read_only) for m in c.mounts}


def test_allocate_one_pod(rig: Rig) -> None:
    registered(rig)
    rig.api.add(bound_pod("p", "uid-p", [container("main", 1, 30, 10)], [slice_on(B, "main", 30, 10240)]))
    (c,) = allocate(rig, 1).container_responses
    host_dir = rig.state / "containers" / "uid-p" / "main"
    assert dict(c.envs) == {
        "NVIDIA_VISIBLE_DEVICES": B.uuid,
        "LD_PRELOAD": hook_config.DEFAULT_LIBRARY,
        hook_config.ENV_CONFIG: "/etc/flexai/vgpu.conf",
    }
    assert mounts_of(c) == {
        hook_config.DEFAULT_LIBRARY: (str(HOOK), True),
        "/etc/flexai/vgpu.conf": (str(host_dir / "vgpu.conf"), True),  # the container cannot raise its limits
        "/var/run/flexai/vgpu": (str(host_dir / "region"), False),
    }
    config = config_of(host_dir)
    assert config.region_path == "/var/run/flexai/vgpu/region"
    assert [(v.uuid, v.memory_bytes, v.cores, v.core_offset) for v in config.vgpus] == [(B.uuid, 10240 << 20, 30, 0)]


def two_container_pod() -> dict[str, Any]:
    return bound_pod(
        "two",
        "uid-2",
        [container("a", 1, 20, 4), container("b", 2, 50, 16)],
        [slice_on(A, "a", 20, 4096), slice_on(A, "b", 50, 16384), slice_on(B, "b", 50, 16384)],
    )


def limits(c: pb.ContainerAllocateResponse) -> list[tuple[str | None, int, int, int]]:
    config = config_of(mounts_of(c)["/etc/flexai/vgpu.conf"][0].rsplit("/", 1)[0])
    return [(v.uuid, v.memory_bytes >> 20, v.cores, v.core_offset) for v in config.vgpus]


def test_allocate_two_container_pod_one_call_per_container(rig: Rig) -> None:
    rig.api.add(two_container_pod())
    first = allocate(rig, 1).container_responses[0]
    second = allocate(rig, 2).container_responses[0]
    assert first.envs["NVIDIA_VISIBLE_DEVICES"] == A.uuid
    assert second.envs["NVIDIA_VISIBLE_DEVICES"] == f"{A.uuid},{B.uuid}"
    # On card A, "a" has [0, 20) of each period, so "b" opens at 20; on B it is alone.
    assert limits(first) == [(A.uuid, 4096, 20, 0)]
    assert limits(second) == [(A.uuid, 16384, 50, 20), (B.uuid, 16384, 50, 0)]


def test_allocate_two_container_pod_in_one_call(rig: Rig) -> None:
    rig.api.add(two_container_pod())
    a, b = allocate(rig, 1, 2).container_responses
    assert (a.envs["NVIDIA_VISIBLE_DEVICES"], b.envs["NVIDIA_VISIBLE_DEVICES"]) == (A.uuid, f"{A.uuid},{B.uuid}")
    assert limits(b)[0] == (A.uuid, 16384, 50, 20)


def test_two_pods_bound_in_the_same_second_each_get_their_own_slice(rig: Rig) -> None:
    same: dict[str, Any] = {"bound_at": "2026-11-29T10:00:00Z", "created_at": "2026-11-29T10:00:00Z"}
    rig.api.add(bound_pod("p1", "uid-1", [container("main", 1, 50, 20)], [slice_on(A, "main", 50, 20480)], **same))
    rig.api.add(bound_pod("p2", "uid-2", [container("main", 1, 50, 10)], [slice_on(A, "main", 50, 10240)], **same))
    # Two concurrent Allocates (the kubelet makes one at a time; a retry may overlap).
    results: queue.Queue[pb.ContainerAllocateResponse] = queue.Queue()
    threads = [threading.Thread(target=lambda: results.put(allocate(rig, 1).container_responses[0])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(limits(results.get_nowait()) + limits(results.get_nowait()), key=lambda v: v[1])
    # Each pod's own memory, and compute windows [0, 50) and [50, 100) that do not overlap.
    assert [v[1] for v in got] == [10240, 20480]
    assert sorted(v[3] for v in got) == [0, 50]
    dirs = sorted(p.parent.name for p in (rig.state / "containers").glob("*/main"))
    assert dirs == ["uid-1", "uid-2"]
    # Both admitted: a third call has nobody to serve.
    with pytest.raises(grpc.RpcError) as e:
        allocate(rig, 1)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no pod bound to this node waits for containers of [1] vGPU(s)" in str(e.value.details())


def test_malformed_allocation_gets_a_clear_error_and_the_next_pod_is_served(rig: Rig) -> None:
    rig.api.add(
        bound_pod(
            "bad",
            "uid-bad",
            [container("main", 1, 20, 4)],
            None,
            allocation_text='{"v": 1, "node": "gpu-1", "slices": [{"card": "zero"}]}',
            bound_at="2026-11-29T09:00:00Z",
        )
    )
    rig.api.add(bound_pod("good", "uid-good", [container("main", 1, 20, 4)], [slice_on(A, "main", 20, 4096)]))
    with pytest.raises(grpc.RpcError) as e:
        allocate(rig, 1)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pod default/bad: malformed allocation: vgpu.flexai.io/allocation slices[0]" in str(e.value.details())
    assert allocate(rig, 1).container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == A.uuid


def test_a_self_granted_allocation_is_refused_with_an_event_and_writes_no_hook_config(rig: Rig) -> None:
    # The finding: a pod that asks for 20% and 4 GiB carries an allocation of its own making,
    # no compute limit and the whole card.
    rig.api.add(
        bound_pod(
            "greedy",
            "uid-greedy",
            [container("main", 1, 20, 4)],
            [slice_on(A, "main", 0, A.memory_mib)],
            bound_at="2026-11-29T09:00:00Z",
        )
    )
    rig.api.add(bound_pod("good", "uid-good", [container("main", 1, 20, 4)], [slice_on(B, "main", 20, 4096)]))
    with pytest.raises(grpc.RpcError) as e:
        allocate(rig, 1)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    why = (
        "container 'main' asks for 20 percent of a card's cores per vGPU, the allocation gives 0 percent on card 0; "
        f"container 'main' asks for 4096 MiB per vGPU, the allocation gives {A.memory_mib} MiB on card 0"
    )
    assert why in str(e.value.details())
    assert not (rig.state / "containers" / "uid-greedy").exists()  # no hook config, no directory
    # The pod's owner sees why, once, on the pod.
    ((ns, name, uid, reason, message),) = rig.api.events
    assert (ns, name, uid, reason) == ("default", "greedy", "uid-greedy", REFUSED_REASON)
    assert message.startswith("flexai-node on gpu-1: pod default/greedy: ") and why in message
    # The refused pod shadows nobody: the next call is the good pod's.
    assert allocate(rig, 1).container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == B.uuid
    assert len(rig.api.events) == 1


def test_an_event_that_cannot_be_written_does_not_change_the_answer(rig: Rig) -> None:
    rig.api.add(bound_pod("greedy", "uid-greedy", [container("main", 1, 20, 4)], [slice_on(A, "main", 20, 8192)]))
    rig.api.event_error = KubeError("events are forbidden")
    with pytest.raises(grpc.RpcError) as e:
        allocate(rig, 1)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "asks for 4096 MiB per vGPU, the allocation gives 8192 MiB" in str(e.value.details())
    assert rig.api.events == []


def test_api_server_down_is_unavailable_and_then_recovers(rig: Rig) -> None:
    from flexai_node.nodeapi import KubeError

    rig.api.add(bound_pod("p", "uid-p", [container("main", 1, 20, 4)], [slice_on(A, "main", 20, 4096)]))
    rig.api.fail = KubeError("connection refused")
    with pytest.raises(grpc.RpcError) as e:
        allocate(rig, 1)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "connection refused" in str(e.value.details())
    assert allocate(rig, 1).container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == A.uuid


def test_gone_pods_lose_their_directories_and_records(rig: Rig) -> None:
    rig.api.add(bound_pod("p", "uid-p", [container("main", 1, 20, 4)], [slice_on(A, "main", 20, 4096)]))
    rig.api.add(bound_pod("q", "uid-q", [container("main", 1, 20, 4)], [slice_on(B, "main", 20, 4096)]))
    allocate(rig, 1)
    allocate(rig, 1)
    rig.api.delete("uid-p")
    assert rig.admitter.prune() == ["uid-p"]
    assert sorted(p.name for p in (rig.state / "containers").iterdir()) == ["uid-q"]
    assert {a.uid for a in rig.admitter._ledger.admitted()} == {"uid-q"}


def test_preferred_allocation_spreads_over_cards(rig: Rig) -> None:
    stub = rig.kubelet.plugin(rig.plugin.socket.name)
    avail = [device_id(A.uuid, k) for k in range(5)] + [device_id(B.uuid, k) for k in range(5)]
    resp = stub.GetPreferredAllocation(
        pb.PreferredAllocationRequest(
            container_requests=[pb.ContainerPreferredAllocationRequest(available_deviceIDs=avail, allocation_size=2)]
        ),
        timeout=WAIT,
    )
    assert list(resp.container_responses[0].deviceIDs) == [device_id(A.uuid, 0), device_id(B.uuid, 0)]


@pytest.mark.parametrize(
    "must, size, expect",
    [
        (["B::3"], 2, ["B::3", "A::0"]),
        ([], 3, ["A::0", "B::0", "A::1"]),  # more than there are cards: fill up
    ],
    ids=["must-include-first", "fill-up"],
)
def test_preferred(must: list[str], size: int, expect: list[str]) -> None:
    assert preferred(["A::0", "A::1", "B::0", "B::3"], must, size) == expect


def test_kubelet_pod_resources_decide_between_pods_bound_together(rig: Rig, short_tmp: Path) -> None:
    from flexai_node.deviceplugin.kubelet_pods import PodResourcesClient

    from .fake_kubelet import FakePodResources

    kubelet_pods = FakePodResources(short_tmp / "pr" / "kubelet.sock")
    client = PodResourcesClient(kubelet_pods.socket)
    assert client.view() is None  # no socket yet: admission goes without
    kubelet_pods.start()
    try:
        admitter = make_admitter(rig.api, short_tmp / "state2", kubelet=client)
        same: dict[str, Any] = {"bound_at": "2026-11-29T10:00:00Z", "created_at": "2026-11-29T10:00:00Z"}
        rig.api.add(bound_pod("p1", "uid-1", [container("main", 1, 50, 20)], [slice_on(A, "main", 50, 20480)], **same))
        rig.api.add(bound_pod("p2", "uid-2", [container("main", 1, 50, 10)], [slice_on(B, "main", 50, 10240)], **same))
        # The kubelet got p2 first (its watch, its batch order): it holds p2, not yet p1.
        kubelet_pods.pods = {"default/p2": {"main": []}}
        assert admitter.allocate([["d0"]])[0].envs["NVIDIA_VISIBLE_DEVICES"] == B.uuid
        kubelet_pods.pods = {"default/p2": {"main": ["d0"]}, "default/p1": {"main": []}}
        assert admitter.allocate([["d1"]])[0].envs["NVIDIA_VISIBLE_DEVICES"] == A.uuid
        kubelet_pods.fail = True
        assert client.view() is None
    finally:
        kubelet_pods.stop()
