"""flexai_node: the node agent (GPU inventory, node annotation, kubelet device plugin) and hook tools.

Layout (pure first, edges last; the shared values and encodings come from flexai_core, never
from flexai_sched):

- ``inventory``   the card-source interface, readings, and the file source (tests, kwok)
- ``nvml``        the NVML card source: health from NVML errors and critical XIDs
- ``pods``        a pod bound to this node: vGPU containers in admission order, its allocation
- ``admission``   which pod and container an Allocate is for (pure; the concurrency argument)
- ``ledger``      what was handed out, persisted: a slice is never given twice
- ``grant``       what a container gets (visible cards + the hook's files), as plain data
- ``workdirs``    per-container host directories, removed with their pods
- ``hostfs``      paths a tenant can reach: no link followed, type and owner checked
- ``admitter``    Allocate's work: choose, grant, record, under one lock
- ``reporter``    the node inventory annotation, on change and every 30 s
- ``metrics``     Prometheus per card and per vGPU (vGPU usage read by ``hook.regions``)
- ``nodeapi`` / ``kube``  the Kubernetes interface and its kubernetes-client implementation
- ``deviceplugin`` the kubelet v1beta1 API (.proto, generated stubs, server, PodResources view)
- ``agent`` / ``cli``  the loop that ties them, and ``flexai-node``

- ``hook``        the node side of the CUDA hook: config format, files per container, the shim,
                  calibration, region readings, ``gpu-monitor``
"""
