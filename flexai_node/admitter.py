"""Allocate's brain: find the container being admitted, give it its slice, record it.

``allocate`` runs under one lock from reading the pods to recording the grant, so two
Allocate calls (the kubelet makes one at a time, but a retry can overlap) never pick
the same container; the ledger then keeps it from being picked again, across restarts.
How the container is identified: ``admission``. What it is given: ``grant``.

A pod refused (no allocation, or one that is not what the pod asks for on this node's
cards) is remembered in the ledger and gets a Warning Event saying why, written after
the lock is released and never failing the Allocate answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from flexai_core.annotations import format_time
from flexai_core.model import Card

from .admission import KubeletView, PodRefused, choose
from .grant import ContainerGrant, GrantBuilder
from .ledger import Admitted, Ledger
from .nodeapi import KubeError, NodeApi
from .pods import BoundPod
from .workdirs import Workdirs

__all__ = ["NodeAdmitter", "REFUSED_REASON"]

# The reason of the Warning Event a refused pod gets.
REFUSED_REASON = "VgpuAllocationRefused"

log = logging.getLogger(__name__)


class KubeletPods(Protocol):
    def view(self) -> KubeletView | None:
        """What the kubelet holds now; None when it cannot say (deviceplugin.kubelet_pods)."""


class NodeAdmitter:
    def __init__(
        self,
        node: str,
        api: NodeApi,
        ledger: Ledger,
        workdirs: Workdirs,
        grants: GrantBuilder,
        cards: Callable[[], Sequence[Card]],
        kubelet: KubeletPods | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.node = node
        self._api = api
        self._kubelet = kubelet
        self._ledger = ledger
        self._workdirs = workdirs
        self._grants = grants
        self._cards = cards  # this node's cards now: an allocation must name them
        self._clock = clock
        self._mu = threading.Lock()

    def allocate(self, device_ids: Sequence[Sequence[str]]) -> list[ContainerGrant]:
        try:
            return self._allocate(device_ids)
        except PodRefused as e:
            self._warn(e)
            raise

    def _allocate(self, device_ids: Sequence[Sequence[str]]) -> list[ContainerGrant]:
        with self._mu:
            listed = self._api.list_pods(self.node)
            pods = self._parse(listed)
            # The directories of pods gone since the last prune still hold their compute
            # windows: without dropping them first, a card freed by a deleted pod has no
            # window left and this container would share one with a live pod.
            self._workdirs.prune(_uids(listed))
            view = self._kubelet.view() if self._kubelet is not None else None
            try:
                choice = choose(
                    pods, [len(d) for d in device_ids], self._ledger.is_admitted, self._ledger.is_refused, view
                )
            except PodRefused as e:
                # Remember the refusal: until the kubelet marks the pod Failed, it must not
                # shadow the pod admitted after it.
                self._ledger.refuse(e.pod.uid, str(e))
                raise
            pod = choice.pod
            grants, entries = [], []
            for container, ids in zip(choice.containers, device_ids, strict=True):
                workdir = self._workdirs.create(pod.uid, container.name)
                grants.append(self._grants.build(pod, container, workdir))
                entries.append(
                    Admitted(
                        uid=pod.uid,
                        container=container.name,
                        namespace=pod.namespace,
                        pod=pod.name,
                        devices=tuple(ids),
                        cards=tuple(s.card_uuid for s in container.slices),
                        at=format_time(self._clock()),
                    )
                )
            self._ledger.admit(entries)
            log.info(
                "admitted %s containers %s on devices %s", pod.key, [c.name for c in choice.containers], device_ids
            )
            return grants

    def bound_pods(self) -> list[BoundPod]:
        return self._parse(self._api.list_pods(self.node))

    def _parse(self, listed: Sequence[Mapping[str, Any]]) -> list[BoundPod]:
        cards = tuple(self._cards())
        parsed = (BoundPod.parse(p, self.node, cards) for p in listed)
        return [p for p in parsed if p is not None]

    def _warn(self, e: PodRefused) -> None:
        """The pod's Warning Event: the kubelet's own message for a failed admission is
        terse, and the pod's owner should see which field was refused."""
        pod = e.pod
        try:
            self._api.warn_pod(pod.namespace, pod.name, pod.uid, REFUSED_REASON, f"flexai-node on {self.node}: {e}")
        except KubeError as err:
            log.warning("cannot record the refusal of %s as an event: %s", pod.key, err)

    def seed(self, pods: Sequence[BoundPod]) -> int:
        """At startup: pods the kubelet already reports container statuses for were admitted
        before this agent (or its ledger) existed; record them so that a later Allocate
        is never matched to them."""
        entries = [
            Admitted(p.uid, c.name, p.namespace, p.name, (), tuple(s.card_uuid for s in c.slices), "before-start")
            for p in pods
            if p.seen_by_kubelet and not p.terminal
            for c in p.containers
            if not self._ledger.is_admitted(p.uid, c.name)
        ]
        if entries:
            self._ledger.admit(entries)
        return len(entries)

    def prune(self) -> list[str]:
        """Forget and clean up after pods that are gone from the API server. The pods are
        listed under the lock: a listing older than an admission would prune its directory."""
        with self._mu:
            live = _uids(self._api.list_pods(self.node))
            gone = set(self._ledger.prune(live)) | set(self._workdirs.prune(live))
        if gone:
            log.info("removed the records and directories of gone pods %s", sorted(gone))
        return sorted(gone)


def _uids(listed: Sequence[Mapping[str, Any]]) -> set[str]:
    return {str((p.get("metadata") or {}).get("uid")) for p in listed}
