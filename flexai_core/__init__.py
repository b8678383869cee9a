"""flexai_core: the plain values and encodings the scheduler and the node agent share.

Dependency-free (the standard library only) and free of I/O, so the node agent uses it
without the scheduler's web stack:

- ``resources``        resource names and how a pod's containers ask for vGPUs
- ``annotations``      annotation keys and their versioned encodings (node inventory, pod allocation)
- ``model``            plain typed values: cards, nodes, requests, slices, allocations
- ``requests``         pod JSON -> validated ``PodRequest`` (clear errors naming the field), incl.
                       its CPU/memory requests (the one place quantity strings are parsed)
- ``allocation_check`` is a pod's allocation exactly what it asks for on the node's cards (the
                       agent before it gives a slice, the Kubernetes backend before it counts one)
"""
