"""Settings of the scheduler service: a YAML file, then command-line flags on top."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Settings:
    node_policy: str = "fragmentation"  # flexai_sched.policies.fragmentation; see bench/results/trace-replay.md
    card_policy: str = "fragmentation"
    granularity: int = 5  # vgpu-cores must be a multiple of this
    max_vgpus_per_card: int = 5  # caps what node inventories advertise
    heartbeat_ttl_s: float = 60.0  # a node silent for longer gets no new pods
    host: str = "127.0.0.1"
    port: int = 8888
    tls_cert: str | None = None
    tls_key: str | None = None
    kubeconfig: str | None = None
    in_cluster: bool = False
    demo_inventory: str | None = None  # YAML/JSON file of demo nodes; None = built-in demo
    # vGPU quotas (flexai_sched.quota): the namespace whose ConfigMaps labelled
    # vgpu.flexai.io/quota declare them (Kubernetes backend; None: no quotas), or a file (demo).
    quota_namespace: str | None = None
    demo_quotas: str | None = None
    # Learn the policy's target workload from the bound pods this often (0: keep the built-in
    # prior), once at least this many are bound: Extender.learn_workload.
    workload_refresh_s: float = 300.0
    workload_min_pods: int = 100
    # A bind that got no answer and whose pod does not show it bound keeps its slice reserved
    # this long (unless the pod shows bound sooner): the Binding may still land.
    bind_hold_s: float = 120.0
    # A filter call from kube-scheduler works out new verdicts (a pod shape not seen yet) for
    # at most this long, then defers the other names (``Extender.filter_request``); 0: no bound.
    filter_budget_ms: float = 10.0
    # ... but decides at least this many names (kube-scheduler's own search looks for 100).
    filter_min_nodes: int = 100
    # kube-scheduler's filter answered with the best node alone ("best": it binds there, no
    # prioritize), or with every fitting node ("all": prioritize's scores join its plugins').
    filter_answer: str = "best"

    def validate(self) -> Settings:
        from . import policies

        problems = []
        for name in ("node_policy", "card_policy"):
            if getattr(self, name) not in policies.names():
                problems.append(f"{name}={getattr(self, name)!r}: must be one of {', '.join(policies.names())}")
        if not 1 <= self.granularity <= 100 or 100 % self.granularity:
            problems.append(f"granularity={self.granularity}: must divide 100")
        if self.max_vgpus_per_card < 1:
            problems.append(f"max_vgpus_per_card={self.max_vgpus_per_card}: must be at least 1")
        if self.heartbeat_ttl_s <= 0:
            problems.append(f"heartbeat_ttl_s={self.heartbeat_ttl_s}: must be positive")
        if self.workload_refresh_s < 0:
            problems.append(f"workload_refresh_s={self.workload_refresh_s}: must be 0 (off) or positive")
        if self.bind_hold_s <= 0:
            problems.append(f"bind_hold_s={self.bind_hold_s}: must be positive")
        if self.filter_budget_ms < 0:
            problems.append(f"filter_budget_ms={self.filter_budget_ms}: must be 0 (no bound) or positive")
        if self.filter_min_nodes < 1:
            problems.append(f"filter_min_nodes={self.filter_min_nodes}: must be at least 1")
        if self.filter_answer not in ("best", "all"):
            problems.append(f"filter_answer={self.filter_answer!r}: must be best or all")
        if self.workload_min_pods < 1:
            problems.append(f"workload_min_pods={self.workload_min_pods}: must be at least 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("tls_cert and tls_key: give both or neither")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load(path: str | Path | None, **overrides: Any) -> Settings:
    """Settings from a YAML file (keys as the field names, '-' or '_'), then overrides (None = unset)."""
    values: dict[str, Any] = {}
    if path:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: must be a mapping of settings")
        known = {f.name for f in fields(Settings)}
        for key, value in doc.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ValueError(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
            values[name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(Settings(), **values).validate()
