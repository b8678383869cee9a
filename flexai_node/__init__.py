"""flexai_node: the node agent (GPU inventory, node annotations, kubelet device plugin) and hook tools."""
