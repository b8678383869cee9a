"""flexai_sched: vGPU bin-packing for Kubernetes, served as a kube-scheduler extender.

Layout (pure core first, edges last):

- ``resources``   resource names and how a pod's containers ask for vGPUs
- ``annotations`` annotation keys and their versioned encodings (node inventory, pod allocation)
- ``model``       plain typed values: cards, nodes, requests, slices, allocations
- ``requests``    pod JSON -> validated ``PodRequest`` (clear errors naming the field), incl. its
                  CPU/memory requests (the one place quantity strings are parsed)
- ``policies``    binpack / spread / fragmentation-aware choices of node and card
- ``fragmentation`` the fragmentation-aware policies (FGD's measure; ours, the default)
- ``leftover``    what a shared card's hole is expected to keep, learned by replaying the
                  workload on cards alone (ours uses it to choose cards)
- ``allocator``   does a pod fit a node, and on which cards (pure arithmetic)
- ``quota``       vGPU quotas per namespace or label group: what a pod counts, the declarations,
                  usage per namespace (``QuotaBook``)
- ``preemption``  which lower-priority pods to evict so a vGPU pod fits (pure: the rule)
- ``allocation_check`` is a pod's allocation exactly what it asks for on the node's cards
                  (the agent before it gives a slice, the Kubernetes backend before it counts one)
- ``state``       the cluster as the scheduler believes it: assume, confirm, forget; each node's
                  host (allocatable CPU/memory, what bound pods request); quotas; PDBs;
                  allocations not counted
- ``backend``     where state comes from and where binds go (in-memory, Kubernetes)
- ``extender``    filter / prioritize / bind / preempt decisions on top of ``state``
- ``preempting``  the preempt verb, the extender's own evictions, cards held for preemptors
- ``app``         FastAPI edge: the kube-scheduler wire format, REST views, metrics
- ``quota_views`` /v1/quotas and the quota metrics (its own router)
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
