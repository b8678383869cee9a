"""flexai_sched: vGPU bin-packing for Kubernetes, served as a kube-scheduler extender.

Layout (pure core first, edges last; the plain values and encodings shared with the node
agent are in ``flexai_core``):

- ``workload``    value types the policies reason with: a node's host, the target workload
- ``policies``    the policy interface, binpack / spread, the fragmentation-aware policies (FGD's
                  measure; ours, the default), the FGD paper's baselines; a registry by name
- ``allocator``   does a pod fit a node, and on which cards (pure arithmetic)
- ``quota``       vGPU quotas per namespace or label group: what a pod counts, the declarations,
                  usage per namespace (``QuotaBook``)
- ``preemption``  which lower-priority pods to evict so a vGPU pod fits (pure: the rule)
- ``state``       the cluster as the scheduler believes it: assume, confirm, forget; each node's
                  host (allocatable CPU/memory, what bound pods request); quotas; PDBs;
                  allocations not counted
- ``backend``     where state comes from and where binds go (in-memory, Kubernetes)
- ``extender``    filter / prioritize / bind / preempt decisions on top of ``state``
- ``preempting``  the preempt verb, the extender's own evictions, cards held for preemptors
- ``app``         FastAPI edge: the kube-scheduler wire format, REST views, metrics
- ``quota_views`` /v1/quotas and the quota metrics (its own router)
- ``sim``         the trace simulator: consumes the core, never imported by it
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
