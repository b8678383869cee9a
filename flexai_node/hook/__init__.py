"""The node side of the CUDA hook (csrc/hook): its config, its files per container, the shim
that reads its regions, calibration, and ``gpu-monitor``.

- ``config``      the hook's config format (written here, parsed by csrc/hook/src/config.c)
- ``files``       the hook's config and region directory per container (over ``config``)
- ``shim``        libflexai_shim.so through ctypes: region snapshots, calibration
- ``calibration`` each card's figures for limits in throughput, measured and cached per card
- ``regions``     per-vGPU usage read from the containers' regions (for the agent's metrics)
- ``monitor``     ``gpu-monitor``: a container's or a node's vGPU usage on the command line

``monitor`` imports only ``config`` and ``shim``, which use the standard library alone, so
``python3 -m flexai_node.hook.monitor`` runs with a bare Python.
"""
