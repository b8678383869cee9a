"""kube-scheduler's extender wire types (k8s.io/kube-scheduler/extender/v1), as pydantic models.

The Go types carry no json tags, so the field names are the capitalised Go names.
Nested Kubernetes objects (Pod, Node) stay plain dicts: the core reads the few
fields it needs (the Pod is checked by ``requests.parse_pod``, which reports what is
wrong with it as the verb's answer). A node or victim pod is checked here for what the
handlers read of it, its ``metadata.name`` or ``metadata.uid``, and kept whole. Names
in a bind are Kubernetes names (a bind passes them to the apiserver). Unknown fields
are ignored so newer schedulers keep working.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidatorFunctionWrapHandler, WrapValidator
from typing_extensions import TypedDict

# Kubernetes' DNS-1123 subdomain (pod and node names) and label (namespaces).
SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
UID = r"^[A-Za-z0-9._-]*$"
Subdomain = Annotated[str, StringConstraints(max_length=253, pattern=SUBDOMAIN)]
Label = Annotated[str, StringConstraints(max_length=63, pattern=LABEL)]
Uid = Annotated[str, StringConstraints(max_length=128, pattern=UID)]


# Each bad item of a list or a map costs pydantic an error object (~400 bytes): a 64 MiB
# body could ask for gigabytes. Lists stop at their first bad item; maps are bounded in
# size before their values are read.
MAX_NODES = 100_000


def _at_most(limit: int) -> WrapValidator:
    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, dict) and len(value) > limit:
            raise ValueError(f"at most {limit} nodes, got {len(value)}")
        return handler(value)

    return WrapValidator(check)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _NodeMeta(TypedDict):
    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    name: str


class NodeObject(TypedDict):
    """A v1.Node, kept whole (filter answers with the objects it was sent)."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    metadata: _NodeMeta


class _PodMeta(TypedDict):
    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    uid: str


class VictimPod(TypedDict):
    """A v1.Pod proposed for eviction: only its UID is read."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    metadata: _PodMeta


class NodeList(_Wire):
    model_config = ConfigDict(extra="allow")
    items: list[NodeObject] = Field(default_factory=list, fail_fast=True)


class ExtenderArgs(_Wire):
    """Body of filter and prioritize."""

    Pod: dict[str, Any]
    Nodes: NodeList | None = None  # set when nodeCacheCapable is false
    NodeNames: list[str] | None = Field(None, fail_fast=True)  # set when nodeCacheCapable is true

    def node_names(self) -> list[str]:
        if self.NodeNames is not None:
            return self.NodeNames
        if self.Nodes is not None:
            return [n["metadata"]["name"] for n in self.Nodes.items]
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
    PodName: Subdomain
    PodNamespace: Label
    PodUID: Uid = ""
    Node: Subdomain


class ExtenderBindingResult(_Wire):
    Error: str = ""


class MetaPod(_Wire):
    UID: str


class MetaVictims(_Wire):
    Pods: list[MetaPod] = Field(default_factory=list, fail_fast=True)
    NumPDBViolations: int = Field(0, ge=0, le=2**31 - 1)  # an int32 in kube-scheduler


class Victims(_Wire):
    Pods: list[VictimPod] = Field(default_factory=list, fail_fast=True)
    NumPDBViolations: int = Field(0, ge=0, le=2**31 - 1)  # an int32 in kube-scheduler


class ExtenderPreemptionArgs(_Wire):
    Pod: dict[str, Any]
    NodeNameToVictims: Annotated[dict[str, Victims], _at_most(MAX_NODES)] | None = None
    NodeNameToMetaVictims: Annotated[dict[str, MetaVictims], _at_most(MAX_NODES)] | None = None

    def victims(self) -> dict[str, tuple[list[str], int]]:
        """Node -> (victim UIDs, PDB violations), whichever form the scheduler sent."""
        if self.NodeNameToMetaVictims is not None:
            return {n: ([p.UID for p in v.Pods], v.NumPDBViolations) for n, v in self.NodeNameToMetaVictims.items()}
        out: dict[str, tuple[list[str], int]] = {}
        for n, v in (self.NodeNameToVictims or {}).items():
            out[n] = ([p["metadata"]["uid"] for p in v.Pods], v.NumPDBViolations)
        return out


class ExtenderPreemptionResult(_Wire):
    NodeNameToMetaVictims: dict[str, MetaVictims] = Field(default_factory=dict)
