"""What a placement policy is: the ``Policy`` protocol and the optional abilities a policy may add.

A policy answers two questions with plain arithmetic:

- ``card_cost``: among the cards a slice fits on, lower cost is preferred;
- ``node_score``: given a node's card usage before and after placing the pod,
  higher is better (the extender rescales scores to kube-scheduler's 0-10).

Optional abilities (kube-scheduler style: small, separate interfaces) are checked with
``isinstance``: ``WorkloadAware`` (take the target workload), ``CapacityAware`` (take the
cluster's cards per GPU model), ``HostAware`` (score with the host's CPU and memory as
kube-scheduler counts pod requests) and ``Seeded`` (draws that repeat per replay seed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from flexai_core.model import Card, CardUsage

from ..workload import Host, Workload


class Policy(Protocol):
    name: str

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float: ...

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float: ...


@runtime_checkable
class WorkloadAware(Protocol):
    def use_workload(self, workload: Workload) -> None: ...


@runtime_checkable
class CapacityAware(Protocol):
    """A policy that weighs GPU models by how much of each the cluster has (cards per model)."""

    def use_capacity(self, cards_by_model: Mapping[str, int]) -> None: ...


@runtime_checkable
class HostAware(Protocol):
    """A policy whose node score also reads the node's host CPU and memory.

    ``pod_host_dependent``: the score reads the pod's own host request (callers that
    cache scores per GPU shape must then key them by the request too).
    ``request_lowers_score``: a larger host request never raises the score, so a score
    computed with an empty request bounds the real one from above (flexai_sched.sim
    shortlists nodes with that).
    """

    pod_host_dependent: bool
    request_lowers_score: bool

    def host_node_score(
        self,
        cards: Sequence[Card],
        before: Sequence[CardUsage],
        after: Sequence[CardUsage],
        host: Host,
        pod_cpu_milli: int,
        pod_memory_mib: int,
    ) -> float: ...


@runtime_checkable
class Seeded(Protocol):
    """A policy that draws at random; ``use_seed`` makes a replay's draws repeat per seed."""

    def use_seed(self, seed: int) -> None: ...
