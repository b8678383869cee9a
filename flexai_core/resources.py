"""Extended-resource names a pod uses to ask for vGPUs: defined here and nowhere else.

A container asks in ``resources.limits`` (``requests`` equal to limits are accepted too):

- ``huawei.com/vgpu-number``      how many vGPUs, each on a different card
- ``huawei.com/vgpu-cores``       percent of one card's compute per vGPU (0-100)
- ``huawei.com/vgpu-memory-1Gi``  GiB of one card's memory per vGPU
  (the seed project also spells it ``huawei.com/vgpu-memory.1Gi``; both are accepted)
- ``huawei.com/vgpu-type.<MODEL>`` only cards of that model (any positive value)
"""

from __future__ import annotations

from typing import Final

VGPU_NUMBER: Final = "huawei.com/vgpu-number"
VGPU_CORES: Final = "huawei.com/vgpu-cores"
VGPU_MEMORY: Final = "huawei.com/vgpu-memory-1Gi"
VGPU_MEMORY_ALT: Final = "huawei.com/vgpu-memory.1Gi"
VGPU_TYPE_PREFIX: Final = "huawei.com/vgpu-type."

MEMORY_NAMES: Final = (VGPU_MEMORY, VGPU_MEMORY_ALT)
# Every name the extender manages; kube-scheduler is told to ignore them (extender.yaml).
MANAGED: Final = (VGPU_NUMBER, VGPU_CORES, VGPU_MEMORY, VGPU_MEMORY_ALT)
