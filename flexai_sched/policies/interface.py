"""What a placement policy is: the ``Policy`` protocol and the optional abilities a policy may add.

A policy answers two questions with plain arithmetic:

- ``card_cost``: among the cards a slice fits on, lower cost is preferred;
- ``node_score``: given a node's card usage before and after placing the pod,
  higher is better (the extender rescales scores to kube-scheduler's 0-10).

Optional abilities (kube-scheduler style: small, separate interfaces) are checked with
``isinstance``: ``WorkloadAware`` (take the target workload), ``CapacityAware`` (take the
cluster's cards per GPU model and nodes per kind), ``Observing`` (see each pod asked about,
re-price against the cards left), ``HostAware`` (score with the host's CPU and memory as
kube-scheduler counts pod requests) and ``Seeded`` (draws that repeat per replay seed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from flexai_core.model import Card, CardUsage

from ..workload import Host, NodeKind, TaskClass, Workload


class Policy(Protocol):
    name: str

    def card_cost(self, card: Card, used: CardUsage, cores: int, memory_mib: int) -> float: ...

    def node_score(self, cards: Sequence[Card], before: Sequence[CardUsage], after: Sequence[CardUsage]) -> float: ...


@runtime_checkable
class WorkloadAware(Protocol):
    def use_workload(self, workload: Workload) -> None: ...


@runtime_checkable
class CapacityAware(Protocol):
    """A policy that weighs GPU models and node kinds by how much of each the cluster has.

    ``cards_by_model``: cards per model; ``node_kinds``: nodes per kind, where known (a
    task confined by its host request to few kinds, e.g. 8 cards with 120 cores, needs
    them as a model-constrained task needs its model).
    """

    def use_capacity(
        self, cards_by_model: Mapping[str, int], node_kinds: Mapping[NodeKind, int] | None = None
    ) -> None: ...


@runtime_checkable
class Observing(Protocol):
    """A policy that watches the pods it is asked about and the cards left, and re-prices.

    ``observe`` gets each pod asked about (filter sees those that then fail too); when it
    returns True the caller passes the free cards per node kind to ``reprice``, and when
    that returns True, drops every score it cached.
    """

    def observe(self, task: TaskClass) -> bool: ...

    def reprice(self, free_by_kind: Mapping[NodeKind, float]) -> bool: ...


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
