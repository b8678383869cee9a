"""Our .proto is the kubelet's wire format: names and field numbers as in
shared/docs/kubelet-device-plugin.md, and the committed stubs are what the one command makes."""

from __future__ import annotations

import pytest

from flexai_node.deviceplugin import api_pb2 as pb
from flexai_node.deviceplugin import generate
from flexai_node.deviceplugin import podresources_pb2 as pr

FIELDS = {
    "RegisterRequest": {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4},
    "DevicePluginOptions": {"pre_start_required": 1, "get_preferred_allocation_available": 2},
    "ListAndWatchResponse": {"devices": 1},
    "Device": {"ID": 1, "health": 2, "topology": 3},
    "TopologyInfo": {"nodes": 1},
    "NUMANode": {"ID": 1},
    "PreferredAllocationRequest": {"container_requests": 1},
    "ContainerPreferredAllocationRequest": {
        "available_deviceIDs": 1,
        "must_include_deviceIDs": 2,
        "allocation_size": 3,
    },
    "PreferredAllocationResponse": {"container_responses": 1},
    "ContainerPreferredAllocationResponse": {"deviceIDs": 1},
    "AllocateRequest": {"container_requests": 1},
    "ContainerAllocateRequest": {"devices_ids": 1},
    "AllocateResponse": {"container_responses": 1},
    "ContainerAllocateResponse": {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5},
    "Mount": {"container_path": 1, "host_path": 2, "read_only": 3},
    "DeviceSpec": {"container_path": 1, "host_path": 2, "permissions": 3},
    "CDIDevice": {"name": 1},
    "PreStartContainerRequest": {"devices_ids": 1},
    "PreStartContainerResponse": {},
    "Empty": {},
}


@pytest.mark.parametrize("message", sorted(FIELDS))
def test_field_names_and_numbers(message: str) -> None:
    desc = pb.DESCRIPTOR.message_types_by_name[message]
    assert desc.full_name == f"v1beta1.{message}"
    assert {f.name: f.number for f in desc.fields} == FIELDS[message]


def test_services_and_methods() -> None:
    services = {
        s.full_name: {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in s.methods}
        for s in pb.DESCRIPTOR.services_by_name.values()
    }
    assert services == {
        "v1beta1.Registration": {"Register": ("RegisterRequest", "Empty", False)},
        "v1beta1.DevicePlugin": {
            "GetDevicePluginOptions": ("Empty", "DevicePluginOptions", False),
            "ListAndWatch": ("Empty", "ListAndWatchResponse", True),
            "GetPreferredAllocation": ("PreferredAllocationRequest", "PreferredAllocationResponse", False),
            "Allocate": ("AllocateRequest", "AllocateResponse", False),
            "PreStartContainer": ("PreStartContainerRequest", "PreStartContainerResponse", False),
        },
    }


def test_committed_stubs_match_a_fresh_generation() -> None:
    assert generate.check() == [], "run: python -m flexai_node.deviceplugin.generate"


POD_RESOURCES_FIELDS = {
    "ListPodResourcesRequest": {},
    "ListPodResourcesResponse": {"pod_resources": 1},
    "PodResources": {"name": 1, "namespace": 2, "containers": 3},
    "ContainerResources": {"name": 1, "devices": 2},
    "ContainerDevices": {"resource_name": 1, "device_ids": 2},
}


@pytest.mark.parametrize("message", sorted(POD_RESOURCES_FIELDS))
def test_pod_resources_fields(message: str) -> None:
    desc = pr.DESCRIPTOR.message_types_by_name[message]
    assert desc.full_name == f"v1.{message}"
    assert {f.name: f.number for f in desc.fields} == POD_RESOURCES_FIELDS[message]


def test_pod_resources_service() -> None:
    (service,) = pr.DESCRIPTOR.services_by_name.values()
    assert service.full_name == "v1.PodResourcesLister"
    assert [(m.name, m.input_type.name, m.output_type.name) for m in service.methods] == [
        ("List", "ListPodResourcesRequest", "ListPodResourcesResponse")
    ]
