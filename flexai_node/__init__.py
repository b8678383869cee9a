"""flexai_node: the node agent (GPU inventory, node annotation, kubelet device plugin) and hook tools.

Layout (pure first, edges last; concepts of the scheduling core come from flexai_sched):

- ``inventory``   the card-source interface, readings, and the file source (tests, kwok)
- ``nvml``        the NVML card source: health from NVML errors and critical XIDs
- ``pods``        a pod bound to this node: vGPU containers in admission order, its allocation
- ``admission``   which pod and container an Allocate is for (pure; the concurrency argument)
- ``ledger``      what was handed out, persisted: a slice is never given twice
- ``grant``       what a container gets (visible cards + the hook's files), as plain data
- ``hook_files``  the hook's config and region directory per container (over ``hook_config``)
- ``workdirs``    per-container host directories, removed with their pods
- ``hostfs``      paths a tenant can reach: no link followed, type and owner checked
- ``admitter``    Allocate's work: choose, grant, record, under one lock
- ``reporter``    the node inventory annotation, on change and every 30 s
- ``metrics``     Prometheus per card and per vGPU; ``regions`` reads vGPU usage (``hook_shim``)
- ``nodeapi`` / ``kube``  the Kubernetes interface and its kubernetes-client implementation
- ``deviceplugin`` the kubelet v1beta1 API (.proto, generated stubs, server, PodResources view)
- ``agent`` / ``cli``  the loop that ties them, and ``flexai-node``

helper modules of the CUDA hook: ``hook_config`` (config format), ``hook_shim`` (region
reader), ``monitor`` (``gpu-monitor``).
"""
