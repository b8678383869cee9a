"""Trace replay: packing quality of the scheduler's policies on the Alibaba GPU trace.

- ``trace``     the trace's CSV files -> nodes and pods, and how they map to the core
- ``workload``  the pods of one replay (seeded), and the target workload of a trace
- ``board``     the simulated kube-scheduler's per-pod-type shortlist of scored nodes
- ``replay``    one replay through ``allocator.place``, the policies (the FGD paper's baselines
                among them: ``policies.baselines``) and ``ClusterState``
- ``published`` the paper's figures, to print beside ours
- ``report``    tables, the CSV of curves and the PNG plot
- ``cli``       ``flexai-sched sim``
"""
