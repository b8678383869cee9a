"""One replay: pods arrive in order; each is placed once by the simulated kube-scheduler, or fails.

The simulated kube-scheduler does what kube-scheduler plus our extender would:

- NodeResourcesFit (kube-scheduler's part): the pod's CPU and memory requests fit the
  node's allocatable minus what its pods request;
- the extender's filter and prioritize, through the same code the extender runs: the
  fit is ``allocator.place`` with the card policy, cached per node version as
  ``Extender.fit`` does, and the score is the node policy's ``node_score`` of the
  node's usage before and after, or ``host_node_score`` for a ``HostAware`` policy
  (``host_scores=False`` withholds the host, as the extender does for a node whose host it
  does not know);
- the best score wins; equal scores go to the first node in a node order shuffled per
  seed, as in the FGD paper's simulator (it prefixes node names with a random number
  per seed, and ties go to one node consistently: GPU-packing lands within about half a
  point of its published figures so, 2.5 points worse with uniformly random ties); a
  policy with ``random_ties`` (Random-fit, whose simulator plugin draws a node at
  random) gets a uniform draw among them; a ``Seeded`` policy's own draws (Random-fit's
  card for each share) are seeded per replay too. Scores are not rescaled, so no two
  nodes tie by rounding unless the policy rounds them itself;
- with ``score_percent`` (kube-scheduler's ``percentageOfNodesToScore``; 0: its adaptive
  default) only a window of nodes is looked at, as kube-scheduler does: from where the
  previous pod's search stopped, the first nodes that pass NodeResourcesFit, until it has
  ``feasible_to_find`` of them; the pod takes the best of those the extender's filter
  passes, or fails if none does. Without it every node is looked at;
- the bind assumes the allocation in ``ClusterState`` (re-checked against the node's
  version, as ``Extender.bind`` does) and confirms it; no pod ever leaves.

A pod without GPUs never needs the extender; it is scored by the same policy with the
node's card usage unchanged (so ``binpack`` puts it on the node with the fullest cards,
where its CPU strands the fewest GPUs).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from flexai_core.model import FULL_CORES, Allocation, PodRequest, card_free

from .. import policies
from ..allocator import NoFit, Placement, place
from ..policies.interface import CapacityAware, HostAware, Observing, Policy, Seeded, WorkloadAware
from ..state import ClusterState, NodeState
from ..workload import Host, NodeKind, TaskClass, Workload
from .board import Board, Memo
from .trace import Trace, TracePod, request, smallest_card_mib
from .workload import LEARN_EVERY, LEARN_FIRST, target_workload, workload_of


@dataclass(frozen=True, slots=True)
class Curve:
    """Cumulative GPU (thousandths of a card) after each pod: arrived, and allocated."""

    capacity_milli: int
    arrived: tuple[int, ...]
    allocated: tuple[int, ...]

    def allocated_pct_at(self, arrived_pct: float) -> float:
        """Allocated GPU % when arrived demand first reaches ``arrived_pct`` % of capacity."""
        need = arrived_pct / 100 * self.capacity_milli
        for a, b in zip(self.arrived, self.allocated, strict=True):
            if a >= need:
                return 100 * b / self.capacity_milli
        return 100 * self.allocated[-1] / self.capacity_milli if self.allocated else 0.0

    def unallocated_at(self, arrived_pct: float) -> float:
        """The published metric: 100 - allocated GPU % at that arrived demand."""
        return 100.0 - self.allocated_pct_at(arrived_pct)


class Cluster:
    """The trace's nodes in a ``ClusterState``, host resources beside them, one policy.

    How a pod type's board is keyed follows what the policy's score reads:

    - cards only: the pod's GPU shape (as the extender's ``fit_cache`` is keyed);
    - the host, and the pod's own host request (``pod_host_dependent``): shape and
      request (as the extender's ``host_cache`` is keyed); unless a larger request never raises the score (``request_lowers_score``),
      then the board holds scores for an empty request, which bound the real ones, and
      only nodes whose bound reaches the best real score are scored with the request.
    """

    def __init__(
        self,
        trace: Trace,
        policy_name: str,
        seed: int,
        host_scores: bool = True,
        learned: bool = False,
        prior: Workload | None = None,
        score_percent: int | None = None,
    ) -> None:
        self.state = ClusterState()
        self._rng = random.Random(seed)
        nodes = list(trace.nodes)
        self._rng.shuffle(nodes)  # the tie-break order (see the module docstring)
        self.names = [n.name for n in nodes]
        for n in nodes:
            self.state.upsert_node(n.inventory())
        self.hosts = [Host(n.cpu_milli, n.memory_mib) for n in nodes]
        self.policy: Policy = policies.get(policy_name)
        self._kinds = [NodeKind(n.model, n.gpus, n.cpu_milli, n.memory_mib) for n in nodes]
        if isinstance(self.policy, CapacityAware):
            by_model: dict[str, int] = {}
            kinds: dict[NodeKind, int] = {}
            for n, kind in zip(nodes, self._kinds, strict=True):
                by_model[n.model] = by_model.get(n.model, 0) + n.gpus
                kinds[kind] = kinds.get(kind, 0) + 1
            self.policy.use_capacity(by_model, kinds)
        if isinstance(self.policy, WorkloadAware) and not learned:
            # ``learned``: the built-in prior until ``learn``; ``prior``: a plan of the caller's
            self.policy.use_workload(target_workload(trace) if prior is None else prior)
        if isinstance(self.policy, Seeded):
            self.policy.use_seed(seed)  # Random-fit's card draws repeat per seed
        self._observing = isinstance(self.policy, Observing)
        self._host_aware = host_scores and isinstance(self.policy, HostAware)
        dependent = self._host_aware and bool(getattr(self.policy, "pod_host_dependent", False))
        self._bounded = dependent and bool(getattr(self.policy, "request_lowers_score", False))
        self._host_keyed = dependent and not self._bounded
        self._models = sorted({n.model for n in trace.nodes})
        self._random_ties = bool(getattr(self.policy, "random_ties", False))
        self._log: list[int] = []  # node index per change, read by the boards
        # Free percent per node as of log position _priced_at (``reprice``).
        self._left = [sum(card_free(c, u) for c, u in zip(n.cards, n.usage, strict=True)) for n in self._nodes()]
        self._priced_at = 0
        self._boards: dict[Any, Board] = {}
        self._memos: dict[Any, Memo] = {}  # bounded: real scores per (board key, host request)
        # Pod shapes -> small ints for the fit cache, as the extender interns them.
        self._shape_ids: dict[tuple[object, ...], int] = {}
        self._uid = 0
        # How many feasible nodes kube-scheduler looks for (None: every node), and where its
        # next search starts (it goes round the node list).
        self._window = None if score_percent is None else feasible_to_find(len(self.names), score_percent)
        self._start = 0

    def request(self, pod: TracePod) -> PodRequest:
        # Every arrival is a pod of its own: a trace pod drawn twice must not share a name,
        # or the second would replace the first in the state (a new pod under an old name).
        self._uid += 1
        req = request(pod, f"uid-{self._uid}", smallest_card_mib(pod.gpu_spec, self._models))
        return replace(req, name=f"{pod.name}-{self._uid}")

    def schedule(self, pod: TracePod) -> bool:
        """Place ``pod`` (bind it) or say it fails."""
        if self._observing and cast(Observing, self.policy).observe(task_class(pod)):
            self.reprice()  # as the extender's filter does
        req = self.request(pod)
        key: Any = (req.containers_shape(), req.selector)
        if self._host_keyed:
            key = (key, pod.cpu_milli, pod.memory_mib)
        shape = self._shape_ids.setdefault(req.shape(), len(self._shape_ids))
        board = self._boards.get(key)
        if board is None:
            cpu, mem = (pod.cpu_milli, pod.memory_mib) if self._host_keyed else (0, 0)
            board = self._boards[key] = Board(self._scorer(req, shape, cpu, mem), self._random_ties)
        board.refresh(self._log, len(self.names))
        hosts, cpu, mem = self.hosts, pod.cpu_milli, pod.memory_mib

        def passes(n: int) -> bool:  # NodeResourcesFit
            h = hosts[n]
            return cpu <= h.cpu_milli - h.cpu_used and mem <= h.memory_mib - h.memory_used

        if self._window is not None:
            i = self._choose_in_window(board, self._exact(key, req, shape, pod) if self._bounded else None, passes)
        elif self._bounded:
            i = board.choose_bounded(self._exact(key, req, shape, pod), passes, self._rng)
        else:
            i = board.choose(passes, self._rng)
        if i is None:
            return False
        if req.wants_gpu:
            self._bind(i, req, shape)
        self.hosts[i] = self.hosts[i].plus(pod.cpu_milli, pod.memory_mib)
        self._log.append(i)
        return True

    def reprice(self) -> None:
        """Hand the policy the free cards per node kind; drop every cached score if it re-priced."""
        # Only the nodes changed since the last pass are summed again.
        for i in set(self._log[self._priced_at :]):
            node = self.state.node(self.names[i])
            assert node is not None
            self._left[i] = sum(card_free(c, u) for c, u in zip(node.cards, node.usage, strict=True))
        self._priced_at = len(self._log)
        free: dict[NodeKind, float] = {}
        for kind, left in zip(self._kinds, self._left, strict=True):
            if left:
                free[kind] = free.get(kind, 0.0) + left / FULL_CORES
        if cast(Observing, self.policy).reprice(free):
            self.state.drop_scores()
            self._boards.clear()
            self._memos.clear()

    def _nodes(self) -> list[NodeState]:
        nodes = [self.state.node(name) for name in self.names]
        assert all(n is not None for n in nodes)
        return nodes  # type: ignore[return-value]

    def _choose_in_window(
        self, board: Board, exact: Callable[[int], float] | None, passes: Callable[[int], bool]
    ) -> int | None:
        """kube-scheduler's sampled search: the best-scored node among the first
        ``_window`` nodes that pass NodeResourcesFit from ``_start`` on; ties to the first
        in node order (a random one for ``random_ties``)."""
        return self._best_of(board, exact, self._window_nodes(passes))

    def _best_of(self, board: Board, exact: Callable[[int], float] | None, nodes: Iterable[int]) -> int | None:
        """The best-scored of ``nodes`` the extender's filter passes (``exact`` scores them
        where given); ties to the first in node order (a random one for ``random_ties``)."""
        best, tied = float("-inf"), []
        for n in nodes:
            s = board.score(n)
            if s is None:
                continue  # the extender's filter refuses it
            if exact is not None:
                s = exact(n)
            if s > best:
                best, tied = s, [n]
            elif s == best:
                tied.append(n)
        if not tied:
            return None
        return tied[self._rng.randrange(len(tied))] if self._random_ties else min(tied)

    def _window_nodes(self, passes: Callable[[int], bool]) -> list[int]:
        """The first ``_window`` nodes passing NodeResourcesFit from ``_start`` on (what
        kube-scheduler sends the extender); the next search starts where this one stopped."""
        total, window = len(self.names), self._window
        assert window is not None
        found: list[int] = []
        seen = 0
        while seen < total and len(found) < window:
            n = (self._start + seen) % total
            seen += 1
            if passes(n):
                found.append(n)
        self._start = (self._start + seen) % total
        return found

    def learn(self, placed: Sequence[TracePod]) -> None:
        """Plan for the workload of the pods placed so far, as ``Extender.learn_workload``
        does from bound pods; every cached score and placement goes with the old one."""
        if isinstance(self.policy, WorkloadAware):
            self.policy.use_workload(workload_of(placed))
            self.state.drop_scores()
            self._boards.clear()
            self._memos.clear()

    def fit(self, node: NodeState, req: PodRequest, shape: int) -> Placement | NoFit:
        # As Extender.fit: place() with the card policy, cached for one node version.
        key = shape
        hit: Placement | NoFit | None = node.fit_cache.get(key)
        if hit is None:
            hit = place(node.cards, node.usage, req, self.policy)
            node.fit_cache[key] = hit
        return hit

    def _scorer(self, req: PodRequest, shape: int, cpu: int, mem: int) -> Callable[[int], float | None]:
        """Node index -> the policy's score for this pod type (None: the cards do not fit)."""
        policy, names, hosts, state = self.policy, self.names, self.hosts, self.state
        gpu = req.wants_gpu
        host_aware = self._host_aware

        def score(i: int) -> float | None:
            node = state.node(names[i])
            assert node is not None
            if gpu:
                fit = self.fit(node, req, shape)
                if isinstance(fit, NoFit):
                    return None
                after: Sequence[Any] = fit.usage_after
            else:
                after = node.usage
            if host_aware:
                return policy.host_node_score(  # type: ignore[attr-defined,no-any-return]
                    node.cards, node.usage, after, hosts[i], cpu, mem
                )
            return policy.node_score(node.cards, node.usage, after)

        return score

    def _exact(self, key: Any, req: PodRequest, shape: int, pod: TracePod) -> Callable[[int], float]:
        """The score with the pod's own host request, kept per node until the node changes."""
        scorer = self._scorer(req, shape, pod.cpu_milli, pod.memory_mib)

        def exact(i: int) -> float:
            s = scorer(i)
            assert s is not None  # on the board, so the cards fit
            return s

        memo_key = (key, shape, pod.cpu_milli, pod.memory_mib)
        memo = self._memos.get(memo_key)
        if memo is None:
            memo = self._memos[memo_key] = Memo()
        memo.refresh(self._log)
        return memo.wrap(exact)

    def _bind(self, i: int, req: PodRequest, shape: int) -> None:
        node = self.state.node(self.names[i])
        assert node is not None
        fit = self.fit(node, req, shape)
        assert isinstance(fit, Placement)
        alloc = Allocation.build(req.namespace, req.name, req.uid, node.name, fit.slices)
        version = node.version
        self.state.assume(alloc, lambda n: n.version == version)
        self.state.confirm(alloc.key)


def task_class(pod: TracePod) -> TaskClass:
    """The task class of one trace pod (weight 1), as the extender sees a pod in filter."""
    cores = (FULL_CORES if pod.gpu_milli >= 1000 else pod.cores) if pod.num_gpu else 0
    return TaskClass(pod.num_gpu if cores else 0, cores, 1.0, pod.cpu_milli, pod.memory_mib, pod.gpu_spec)


def feasible_to_find(nodes: int, percent: int) -> int:
    """kube-scheduler's numFeasibleNodesToFind: ``percent`` of the nodes (0: adaptive,
    50 - nodes/125, at least 5), never fewer than 100 nodes."""
    if nodes < 100 or percent >= 100:
        return nodes
    if percent <= 0:
        percent = max(5, 50 - nodes // 125)
    return max(100, nodes * percent // 100)


def replay(
    trace: Trace,
    pods: Sequence[TracePod],
    policy_name: str,
    seed: int,
    host_scores: bool = True,
    tick: Callable[[], None] | None = None,
    learned: bool = False,
    prior: Workload | None = None,
    score_percent: int | None = None,
) -> Curve:
    """Try every pod once, in order; the curve of arrived and allocated GPU after each.

    ``learned``: the policy starts from its built-in prior and learns the workload from the
    pods placed (``LEARN_FIRST``, then every ``LEARN_EVERY``), as the extender does.
    ``prior``: the policy plans for this workload throughout instead of the trace's own.
    """
    cluster = Cluster(trace, policy_name, seed, host_scores, learned, prior, score_percent)
    arrived, allocated = [], []
    placed: list[TracePod] = []
    a = b = 0
    for pod in pods:
        a += pod.gpu_demand_milli
        if cluster.schedule(pod):
            b += pod.gpu_demand_milli
            placed.append(pod)
            if learned and (len(placed) == LEARN_FIRST or len(placed) % LEARN_EVERY == 0):
                cluster.learn(placed)
        arrived.append(a)
        allocated.append(b)
        if tick is not None:
            tick()
    return Curve(trace.gpu_capacity_milli, tuple(arrived), tuple(allocated))
