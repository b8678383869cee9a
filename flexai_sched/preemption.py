"""Which pods to evict so a higher-priority vGPU pod fits: the victim choice, pure.

kube-scheduler's preemption (DefaultPreemption, then each extender's preempt verb) works
like this: its own dry run proposes, per candidate node, the lower-priority pods its in-tree
filters need gone; the extender answers with the nodes and victims it accepts, and
kube-scheduler then picks ONE node among the answer by its own order (fewest PDB
violations, lowest highest victim priority, ...). So that the node is chosen by our rule,
the extender answers with exactly one node: the best ``Choice`` of ``best``.

The rule, per node (``choose``):

1. the victims kube-scheduler needs (``must``: its in-tree filters need them gone) stay;
2. then the fewest more pods, each of lower priority than the preemptor, whose eviction
   lets the pod's vGPUs fit on the node's cards (and, where the pod is over a quota, frees
   enough of it: ``frees_quota``);
3. across sets and nodes, in this order: fewest PodDisruptionBudget violations (as
   kube-scheduler ranks them), fewest victims, fewest cores x GiB evicted (card-% x GiB
   summed over the evicted vGPUs), lowest highest victim priority, then the node's name.

Every victim is needed: the search tries smaller sets first, so a set with a victim whose
eviction frees nothing useful always loses to the same set without it. The search is
exhaustive up to ``max_checks`` fit checks per node (a node holds a few dozen pods at most);
past that, the greedy set kube-scheduler itself would compute (evict all candidates, then
give back as many as still allow a fit, highest priority first) stands.

PodDisruptionBudgets are counted as kube-scheduler counts them (``pdb_violations``): a
victim violates a budget that selects it when the budget's allowed disruptions, less the
victims already counted against it, are used up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from flexai_core.model import Allocation, Card, CardUsage, PodRequest

from .allocator import Placement, place
from .policies.interface import Policy

MAX_CHECKS = 4096


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pod on the node that might be evicted."""

    alloc: Allocation
    priority: int
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term of a label selector's ``matchExpressions``."""

    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True, slots=True)
class Budget:
    """A PodDisruptionBudget as preemption reads it (kube-scheduler reads the same fields)."""

    namespace: str
    name: str
    match_labels: tuple[tuple[str, str], ...]
    expressions: tuple[Requirement, ...]
    disruptions_allowed: int
    disrupted: frozenset[str] = frozenset()  # pod names already being disrupted (status.disruptedPods)

    def selects(self, namespace: str, labels: Mapping[str, str]) -> bool:
        # An empty selector selects nothing, as kube-scheduler treats it in preemption.
        if namespace != self.namespace or not (self.match_labels or self.expressions):
            return False
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.expressions
        )


@dataclass(frozen=True, slots=True)
class Choice:
    node: str
    victims: tuple[Allocation, ...]
    pdb_violations: int
    cost: int  # card-% x MiB summed over the evicted vGPUs (x GiB: divide by 1024)
    top_priority: int  # the highest priority among the victims
    others: int = 0  # victims kube-scheduler proposed that hold no vGPUs (not in ``victims``)

    def key(self) -> tuple[int, int, int, int, str]:
        return (self.pdb_violations, len(self.victims) + self.others, self.cost, self.top_priority, self.node)


def evicted_cost(victims: Sequence[Allocation]) -> int:
    """Card-% x MiB summed over every evicted vGPU (each slice's cores times its memory)."""
    return sum(s.cores * s.memory_mib for a in victims for s in a.slices)


def pdb_violations(victims: Sequence[Candidate], budgets: Sequence[Budget]) -> int:
    """How many victims a budget does not allow to go, counting them in order (kube-scheduler's
    filterPodsWithPDBViolation): each victim uses one allowed disruption of every budget
    selecting it; once a budget has none left, each further victim it selects violates it."""
    left = {(b.namespace, b.name): b.disruptions_allowed for b in budgets}
    count = 0
    for v in victims:
        violated = False
        for b in budgets:
            if not b.selects(v.alloc.namespace, v.labels) or v.alloc.name in b.disrupted:
                continue
            k = (b.namespace, b.name)
            left[k] -= 1
            if left[k] < 0:
                violated = True
        count += violated
    return count


def choose(
    node: str,
    cards: Sequence[Card],
    usage: Sequence[CardUsage],
    req: PodRequest,
    priority: int,
    pods: Sequence[Candidate],
    policy: Policy,
    must: Sequence[Candidate] = (),
    budgets: Sequence[Budget] = (),
    frees_quota: Callable[[Sequence[Allocation]], bool] | None = None,
    max_checks: int = MAX_CHECKS,
    others: int = 0,
) -> Choice | None:
    """The best victims on one node (``must`` among them), or None when no eviction of
    lower-priority pods makes the pod fit; no victims when it fits already (beside ``must``, and
    ``others``: proposed victims without vGPUs, counted in the ranking). ``pods``: the
    pods on the node it may evict (over a quota: those of its own namespace only);
    ``frees_quota`` (a pod over its quota): whether evicting these leaves room in the quota."""
    by_index = {c.index: pos for pos, c in enumerate(cards)}
    must_keys = {m.alloc.key for m in must}
    usable = {c.index for c in cards if req.selector.allows(c) and c.healthy}
    # Only lower-priority pods that hold a card the pod could use, or (over a quota) whose
    # eviction could free some of it, are worth considering.
    pool = [
        p
        for p in pods
        if p.priority < priority
        and p.alloc.key not in must_keys
        and (set(p.alloc.card_usage) & usable or frees_quota is not None)
    ]
    checks = 0

    def works(extra: Sequence[Candidate]) -> bool:
        nonlocal checks
        checks += 1
        gone = [*must, *extra]
        if frees_quota is not None and not frees_quota([v.alloc for v in gone]):
            return False
        left = list(usage)
        for v in gone:
            for index, held in v.alloc.card_usage.items():
                pos = by_index.get(index)
                if pos is not None:
                    left[pos] = left[pos].minus(held)
        return isinstance(place(cards, left, req, policy), Placement)

    def choice(extra: Sequence[Candidate]) -> Choice:
        gone = [*must, *extra]
        return Choice(
            node,
            tuple(v.alloc for v in gone),
            pdb_violations(gone, budgets),
            evicted_cost([v.alloc for v in gone]),
            max((v.priority for v in gone), default=-(2**31)),
            others,
        )

    if works(()):
        return choice(())  # fits with the proposed victims alone (or none at all)
    if not pool or not works(pool):
        return None  # even evicting every candidate does not make room
    greedy = _greedy(pool, works, budgets)
    best = choice(greedy)
    # Exhaustive search for smaller (or equally small, cheaper) sets, smallest first.
    for k in range(1, len(greedy) + 1):
        for combo in combinations(pool, k):
            if checks >= max_checks:
                return best
            if works(combo):
                c = choice(combo)
                if c.key() < best.key():
                    best = c
        if len(best.victims) - len(must) <= k and best.pdb_violations == 0:
            break  # no larger set can beat a violation-free set of this size
    return best


def _greedy(
    pool: Sequence[Candidate], works: Callable[[Sequence[Candidate]], bool], budgets: Sequence[Budget]
) -> list[Candidate]:
    """kube-scheduler's set: all candidates go, then each is given back if the pod still fits;
    budget-protected pods are given back first, then by priority, highest first."""
    protected = {id(p) for p in pool if pdb_violations([p], budgets)}
    order = sorted(pool, key=lambda p: (id(p) not in protected, -p.priority))
    victims = list(pool)
    for p in order:
        rest = [v for v in victims if v is not p]
        if works(rest):
            victims = rest
    return victims


def best(choices: Sequence[Choice | None]) -> Choice | None:
    found = [c for c in choices if c is not None]
    return min(found, key=Choice.key) if found else None
