"""kube-scheduler's extender wire types (k8s.io/kube-scheduler/extender/v1), as pydantic models.

The Go types carry no json tags, so the field names are the capitalised Go names.
Nested Kubernetes objects (Pod, Node) stay plain dicts: the core reads the few
fields it needs. Unknown fields are ignored so newer schedulers keep working.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NodeList(_Wire):
    model_config = ConfigDict(extra="allow")
    items: list[dict[str, Any]] = Field(default_factory=list)


class ExtenderArgs(_Wire):
    """Body of filter and prioritize."""

    Pod: dict[str, Any]
    Nodes: NodeList | None = None  # set when nodeCacheCapable is false
    NodeNames: list[str] | None = None  # set when nodeCacheCapable is true

    def node_names(self) -> list[str]:
        if self.NodeNames is not None:
            return self.NodeNames
        if self.Nodes is not None:
            return [str((n.get("metadata") or {}).get("name", "")) for n in self.Nodes.items]
        return []


class ExtenderFilterResult(_Wire):
    Nodes: NodeList | None = None
    NodeNames: list[str] | None = None
    FailedNodes: dict[str, str] = Field(default_factory=dict)
    FailedAndUnresolvableNodes: dict[str, str] = Field(default_factory=dict)
    Error: str = ""


class HostPriority(_Wire):
    Host: str
    Score: int


class ExtenderBindingArgs(_Wire):
    PodName: str
    PodNamespace: str
    PodUID: str = ""
    Node: str


class ExtenderBindingResult(_Wire):
    Error: str = ""


class MetaPod(_Wire):
    UID: str


class MetaVictims(_Wire):
    Pods: list[MetaPod] = Field(default_factory=list)
    NumPDBViolations: int = 0


class Victims(_Wire):
    Pods: list[dict[str, Any]] = Field(default_factory=list)
    NumPDBViolations: int = 0


class ExtenderPreemptionArgs(_Wire):
    Pod: dict[str, Any]
    NodeNameToVictims: dict[str, Victims] | None = None
    NodeNameToMetaVictims: dict[str, MetaVictims] | None = None

    def victims(self) -> dict[str, tuple[list[str], int]]:
        """Node -> (victim UIDs, PDB violations), whichever form the scheduler sent."""
        if self.NodeNameToMetaVictims is not None:
            return {n: ([p.UID for p in v.Pods], v.NumPDBViolations) for n, v in self.NodeNameToMetaVictims.items()}
        out: dict[str, tuple[list[str], int]] = {}
        for n, v in (self.NodeNameToVictims or {}).items():
            out[n] = ([str((p.get("metadata") or {}).get("uid", "")) for p in v.Pods], v.NumPDBViolations)
        return out


class ExtenderPreemptionResult(_Wire):
    NodeNameToMetaVictims: dict[str, MetaVictims] = Field(default_factory=dict)
