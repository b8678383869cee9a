"""The extender's preemption: the preempt verb, its own evictions, and the cards held for
preemptors. ``preemption`` chooses the victims (pure); this module acts on the choice.

Two roads share that rule:

- ``verb``: kube-scheduler's preempt verb, called when its own dry run found victims (the pod
  contends for CPU or memory too). We answer with ONE node, so the node is ours to choose.
- ``start`` (from the extender's filter): the pod (priority > 0) fits none of the nodes that
  passed kube-scheduler's own filters. Its dry run needs no victim there (the vGPU resources
  are ignoredByScheduler), so it never calls the verb: we choose, then evict in the background
  through the backend (the Eviction API: a PodDisruptionBudget is never broken).

Either way the freed cards are held for the preemptor (``Nomination``: counted against pods of
lower or equal priority, as kube-scheduler counts nominated pods) until it binds (``landed``)
or ``NOMINATION_S`` pass, and no second preemption starts for it while its victims are still
on their node or their room waits for it. A victim our watch still shows is read back from the
cluster (``victims_left``): kube-scheduler retries the pod on a victim's deletion, which its
informer may see before our watch does, and a lagging view would make it preempt a second node.

``nominations`` (node -> pod key -> Nomination) is replaced, never mutated, so the filter's hot
loop reads it without a lock; it is empty in the common case.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flexai_core.model import Allocation, CardUsage, PodRequest

from . import preemption
from .allocator import NoFit, Placement, place
from .backend import CommitError
from .quota import Usage, allocation_usage
from .state import AllocState, NodeState

if TYPE_CHECKING:
    from .extender import Extender, FilterOutcome

NOMINATION_S = 120.0  # how long the cards freed by a preemption wait for the preemptor
PREEMPT_RETRY_S = 5.0  # a pod for which no eviction helped is looked at again after this
# The preempt verb for a pod whose own preemption is being worked out waits this long for it:
# answering "none" meanwhile, then finding nothing to evict, would leave the pod waiting for a
# cluster event that may never come.
VERB_WAIT_S = 2.0
# Fit checks one preemption may spend on its exhaustive search, over all its nodes (each node
# gets an equal share, at least MIN_NODE_CHECKS; past its share a node keeps its greedy set):
# kube-scheduler waits at most its httpTimeout (5 s) for the verb.
CHECKS_PER_PREEMPTION = 20_000
MIN_NODE_CHECKS = 32
# The extender's own preemptions: one at a time, over at most this many of the nodes filter
# refused (kube-scheduler sends them in an order it rotates, so a later try sees others).
OWN_PREEMPTION_NODES = 256
log = logging.getLogger("flexai_sched.preempting")


@dataclass(frozen=True, slots=True)
class Nomination:
    """Cards held on a node for a preemptor (kube-scheduler's nominatedNodeName, seen by us)."""

    uid: str
    priority: int
    reserved: dict[int, CardUsage]  # card index -> what the preemptor will hold there
    until: float  # clock() deadline
    victims: tuple[tuple[str, str], ...] = ()  # (pod key, UID) of the pods evicted for it


class Preempting:
    """The extender's preemption state and acts; ``Extender`` owns one (``extender.preempting``)."""

    def __init__(self, ext: Extender) -> None:
        self._ext = ext
        self.nominations: dict[str, dict[str, Nomination]] = {}
        self._mu = threading.Lock()
        # Preemptors whose eviction this extender started itself: UID -> clock() deadline.
        self._preempting: dict[str, float] = {}
        # Preemptors for which an own preemption found nothing to evict: UID -> clock() time
        # before which filter does not start another (the preempt verb is not held back).
        self._retry: dict[str, float] = {}
        # Own preemptions being worked out: UID -> set when the background thread ends.
        self._running: dict[str, threading.Event] = {}
        self._one_at_a_time = threading.Lock()  # held by the background thread of an own preemption

    def landed(self, key: str, uid: str) -> None:
        """The pod is bound: its held cards are its slices now."""
        if self.nominations or self._preempting or self._retry:
            with self._mu:
                self._drop_nomination(key)
                self._preempting.pop(uid, None)
                self._retry.pop(uid, None)

    def verb(self, req: PodRequest, victims: Mapping[str, tuple[list[str], int]]) -> dict[str, tuple[list[str], int]]:
        """kube-scheduler proposes, per node, the victims its own filters need; answer with ONE
        node, ours (``preemption``'s rule), and its victims: the proposed ones plus the fewest
        lower-priority vGPU pods whose eviction frees a fitting slice. A pod over its quota may
        only evict pods of its own namespace, and they must free enough of the quota. The freed
        cards are then held for the preemptor (``Nomination``) until it binds.
        """
        running = self._running.get(req.uid)
        if running is not None:  # our own preemption for it is being worked out: its outcome decides
            running.wait(VERB_WAIT_S)
        until = self._preempting.get(req.uid)
        if until is not None and until > self._ext.clock():
            return {}  # the extender's own preemption for it (``filter``) is under way
        if self.victims_left(req) or self._fits_where_nominated(req):
            # Its victims are still going, or gone and their room waits for it (kube-scheduler
            # may have tried it between two victims' deletions): no more evictions.
            return {}
        got = self._best_victims(req, victims)
        if got is None:
            return {}
        choice, uids, pdb = got
        extra = [a.uid for a in choice.victims if a.uid not in set(uids)]
        self._nominate(req, choice)
        return {choice.node: (uids + extra, max(pdb, choice.pdb_violations))}

    def _best_victims(
        self,
        req: PodRequest,
        victims: Mapping[str, tuple[list[str], int]],
    ) -> tuple[preemption.Choice, list[str], int] | None:
        """The best (choice, proposed UIDs, proposed PDB violations) over the proposed nodes."""
        max_checks = min(preemption.MAX_CHECKS, max(MIN_NODE_CHECKS, CHECKS_PER_PREEMPTION // max(1, len(victims))))
        frees_quota: Callable[[Sequence[Allocation]], bool] | None = None
        if self._ext.state.quotas.active:
            reason, resolvable = self._ext.quota_reason(req)
            if reason and not resolvable:
                return None
            if reason:

                def frees_quota(gone: Sequence[Allocation]) -> bool:
                    freed = Usage()
                    for a in gone:
                        if a.namespace == req.namespace:  # only its own namespace's pods free its quota
                            freed = freed.plus(allocation_usage(a))
                    return not self._ext.quota_reason(req, less=freed)[0]

        policy = self._ext._policy(req.card_policy, self._ext._card_policy)
        budgets = self._ext.state.budgets()
        choices: list[tuple[preemption.Choice, list[str], int]] = []
        for node_name, (uids, pdb) in victims.items():
            node = self._ext.state.node(node_name)
            if node is None:
                continue
            proposed = set(uids)
            pods: list[preemption.Candidate] = []
            must: list[preemption.Candidate] = []
            for a in node.pods.values():
                if self._ext.state.state_of(a.key) is not AllocState.BOUND:
                    continue  # a bind in flight: kube-scheduler does not see it on the node yet
                priority, labels = self._ext.state.pod_meta(a.key, a.uid)
                c = preemption.Candidate(a, priority, labels)
                if a.uid in proposed:
                    must.append(c)
                elif not self._ext.state.pod_meta_known(a.key, a.uid):
                    continue  # bound so lately the watch has not shown its priority: not ours to pick
                elif frees_quota is None or a.namespace == req.namespace:
                    pods.append(c)
            # Proposed victims we hold no allocation of (no vGPUs) are kept as kube-scheduler sent them.
            others = len(proposed) - len(must)
            got = preemption.choose(
                node_name,
                node.cards,
                self.usage_for(node, req),
                req,
                req.priority,
                pods,
                policy,
                must,
                budgets,
                frees_quota,
                max_checks,
                others=others,
            )
            if got is not None and (got.victims or proposed):
                choices.append((got, list(uids), pdb))
        if not choices:
            return None
        # kube-scheduler's count of PDB violations covers victims we know nothing of: the larger counts.
        return min(choices, key=lambda c: (max(c[2], c[0].pdb_violations), *c[0].key()[1:]))

    # ---- preemption for pods kube-scheduler will not preempt for ----

    def start(self, req: PodRequest, names: Sequence[str]) -> None:
        """``names`` passed kube-scheduler's own filters and failed ours on the cards (or the
        quota): kube-scheduler's dry run needs no victim there, so it never calls the preempt
        verb for them. Choose by the same rule, hold the cards and evict through the Eviction
        API (a PodDisruptionBudget is never broken), in the background: filter does not wait."""
        self.expire()
        if not self._one_at_a_time.acquire(blocking=False):
            return  # another pod's preemption is being worked out: this one tries on its next filter
        with self._mu:
            if self._preempting_itself(req) or self._retry.get(req.uid, 0.0) > self._ext.clock():
                self._one_at_a_time.release()
                return
            self._preempting[req.uid] = self._ext.clock() + NOMINATION_S
            self._running[req.uid] = threading.Event()
        threading.Thread(
            target=self._preempt_and_evict,
            args=(req, list(names)[:OWN_PREEMPTION_NODES]),
            name=f"preempt-{req.key}",
            daemon=True,
        ).start()

    def _preempting_itself(self, req: PodRequest) -> bool:
        """Whether an eviction for this pod is under way (ours, or kube-scheduler's after our verb)."""
        until = self._preempting.get(req.uid)
        if until is not None and until > self._ext.clock():
            return True
        return any(req.key in by for by in self.nominations.values())

    def _preempt_and_evict(self, req: PodRequest, names: list[str]) -> None:
        done = False
        try:
            got = self._best_victims(req, {n: ([], 0) for n in names})
            if got is None or got[0].pdb_violations or not got[0].victims:
                return
            choice = got[0]
            self._nominate(req, choice)
            log.info(
                "pod %s (priority %d): evicting %s on %s to make room",
                req.key,
                req.priority,
                ", ".join(a.key for a in choice.victims),
                choice.node,
            )
            for a in choice.victims:
                try:
                    self._ext.backend.evict(a)
                except CommitError as e:
                    log.warning("pod %s: preemption on %s stopped: %s", req.key, choice.node, e)
                    with self._mu:
                        self._drop_nomination(req.key)
                    return
            done = True
        except Exception:  # a background thread: log, never crash the service
            log.exception("pod %s: preemption failed", req.key)
        finally:
            with self._mu:
                if not done:  # nothing evicted: try again on a later filter call, not on every one
                    self._preempting.pop(req.uid, None)
                    self._retry[req.uid] = self._ext.clock() + PREEMPT_RETRY_S
                running = self._running.pop(req.uid, None)
            if running is not None:
                running.set()
            self._one_at_a_time.release()

    def victims_left(self, req: PodRequest) -> int:
        """How many of the victims evicted for ``req`` are still on their node. Each is read
        back from the cluster when our watch still shows it: kube-scheduler retries the pod on
        the victim's deletion, which its informer may see before our watch does, and a filter
        that lags would make it preempt a second node."""
        nom = next((by[req.key] for by in self.nominations.values() if req.key in by), None)
        if nom is None or nom.uid != req.uid:
            return 0
        left = 0
        for key, uid in nom.victims:
            a = self._ext.state.allocation(key)
            if a is None or a.uid != uid:
                continue
            namespace, name = key.split("/", 1)
            try:
                pod = self._ext.backend.get_pod(namespace, name)
            except Exception as e:  # the read is a hint: keep waiting on the watch
                log.info("pod %s: reading victim %s back failed: %s", req.key, key, e)
                left += 1
                continue
            meta = (pod or {}).get("metadata") or {}
            if (
                pod is None
                or meta.get("uid") != uid
                or ((pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"))
            ):
                self._ext.state.release(key, uid, gone=True)  # what the watch will say too (idempotent)
                self._ext.state.drop_pod_host(key, uid)
            else:
                left += 1
        return left

    def _fits_where_nominated(self, req: PodRequest) -> bool:
        for name, by in self.nominations.items():
            nom = by.get(req.key)
            node = self._ext.state.node(name)
            if nom is not None and nom.uid == req.uid and node is not None:
                policy = self._ext._policy(req.card_policy, self._ext._card_policy)
                return isinstance(place(node.cards, self.usage_for(node, req), req, policy), Placement)
        return False

    def _nominate(self, req: PodRequest, choice: preemption.Choice) -> None:
        """Hold the cards the victims free for the preemptor, against pods of lower priority."""
        node = self._ext.state.node(choice.node)
        if node is None:
            return
        by_index = {c.index: pos for pos, c in enumerate(node.cards)}
        # From the usage as this pod sees it (cards already held for other preemptors
        # counted): its hold goes where nobody else's is, never onto another's cards.
        left = list(self.usage_for(node, req))
        for a in choice.victims:
            for index, held in a.card_usage.items():
                if index in by_index:
                    left[by_index[index]] = left[by_index[index]].minus(held)
        got = place(node.cards, left, req, self._ext._policy(req.card_policy, self._ext._card_policy))
        if not isinstance(got, Placement):
            return
        reserved = {
            c.index: after.minus(before)
            for c, before, after in zip(node.cards, left, got.usage_after, strict=True)
            if after != before
        }
        nom = Nomination(
            req.uid,
            req.priority,
            reserved,
            self._ext.clock() + NOMINATION_S,
            tuple((a.key, a.uid) for a in choice.victims),
        )
        with self._mu:
            self._drop_nomination(req.key)
            self.nominations = {
                **self.nominations,
                choice.node: {**self.nominations.get(choice.node, {}), req.key: nom},
            }

    def hold(self, out: FilterOutcome, req: PodRequest, nodes: Mapping[str, NodeState]) -> None:
        """Move to ``failed`` the fitting nodes whose room is held for a preemptor of at least
        the pod's priority (kube-scheduler's nominatedNodeName, which our filter must honour too)."""
        self.expire()
        held = self.nominations
        keep = []
        for name in out.fits:
            refused = self._beside_nominated(nodes[name], req) if name in held else None
            if refused is None:
                keep.append(name)
            else:
                out.failed[name] = refused.reason
        out.fits = keep

    def _beside_nominated(self, node: NodeState, req: PodRequest) -> NoFit | None:
        """Why not (None: it fits) once the cards held for preemptors on ``node`` are counted."""
        usage = self.usage_for(node, req)
        if usage is node.usage:
            return None
        got = place(node.cards, usage, req, self._ext._policy(req.card_policy, self._ext._card_policy))
        if isinstance(got, Placement):
            return None
        return NoFit(f"{got.reason} (cards held for a preempting pod of higher or equal priority)", True)

    def _drop_nomination(self, key: str) -> None:
        """Forget ``key``'s nomination wherever it is (hold ``_mu``)."""
        if any(key in by for by in self.nominations.values()):
            kept = {n: {k: v for k, v in by.items() if k != key} for n, by in self.nominations.items()}
            self.nominations = {n: by for n, by in kept.items() if by}

    def usage_for(
        self, node: NodeState, req: PodRequest, base: Sequence[CardUsage] | None = None
    ) -> Sequence[CardUsage]:
        """The node's usage (or ``base``) as ``req`` must see it: with the cards held for nominated
        pods of at least its priority (kube-scheduler counts nominated pods the same way)."""
        usage0 = node.usage if base is None else base
        held = self.nominations.get(node.name)
        if not held:
            return usage0
        now = self._ext.clock()
        usage = list(usage0)
        by_index = {c.index: pos for pos, c in enumerate(node.cards)}
        for key, nom in held.items():
            if key == req.key or nom.priority < req.priority or nom.until <= now:
                continue
            for index, u in nom.reserved.items():
                if index in by_index:
                    usage[by_index[index]] = usage[by_index[index]].plus(u)
        return usage

    def expire(self) -> None:
        if not self.nominations and not self._preempting and not self._retry:
            return
        now = self._ext.clock()
        with self._mu:
            self._preempting = {k: v for k, v in self._preempting.items() if v > now}
            self._retry = {k: v for k, v in self._retry.items() if v > now}
            for key in [k for by in self.nominations.values() for k, n in by.items() if n.until <= now]:
                self._drop_nomination(key)
