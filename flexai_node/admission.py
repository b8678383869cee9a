"""Which pod and container is the kubelet admitting? (pure: no I/O)

The kubelet's Allocate names only the device IDs it chose, never the pod. What we know:

1. The kubelet admits pods one at a time, and within a pod calls Allocate for each
   container that asks for the resource in order (init containers, then app containers).
   So while a pod is half admitted, the next call is for that pod's next container.
2. Each call asks for as many devices as that container's ``vgpu-number``.
3. Every container the plugin answered is in the ``Ledger``; it is never chosen again.
4. The kubelet adds a pod to its pod manager just before admitting it, so during an
   Allocate its PodResources ``List`` (a ``KubeletView``) holds the pod being admitted
   but none bound after it, and shows devices for the containers already allocated.
5. Without that view: the kubelet admits pods in the order they reach it, bind order
   (``BoundPod.admission_order``: bind second, then resourceVersion).

``choose`` applies them: candidates are the pods bound here, minus finished, deleting,
refused and fully admitted ones, minus (given the view) pods the kubelet does not hold yet; a
half-admitted pod whose next containers match the call comes first; else the first
fresh pod, in bind order, whose first vGPU containers ask for exactly the call's device
counts. Two pods bound in the same second are told apart by the view (only the one being
admitted is held and not yet allocated), by count, and last by bind order; whatever
happens, the ledger gives each admission a slice nobody else has.

A chosen pod whose allocation is unusable raises ``PodRefused`` (its message is for the
pod's events); when nothing matches, ``NoCandidate`` explains what was looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import NodeError
from .pods import BoundPod, GpuContainer

__all__ = ["AdmissionError", "Choice", "KubeletView", "NoCandidate", "PodRefused", "choose"]


class AdmissionError(NodeError):
    """No slice can be given for this Allocate call."""


class NoCandidate(AdmissionError):
    """No pod bound to this node waits for containers of these sizes."""


class PodRefused(AdmissionError):
    """The pod being admitted has a missing or malformed allocation."""

    def __init__(self, pod: BoundPod, message: str) -> None:
        super().__init__(message)
        self.pod = pod


@dataclass(frozen=True, slots=True)
class KubeletView:
    """What the kubelet holds: "namespace/name" -> container -> our device IDs it allocated."""

    pods: dict[str, dict[str, tuple[str, ...]]]

    def holds(self, pod: BoundPod) -> bool:
        return pod.key in self.pods

    def allocated(self, pod: BoundPod, container: str) -> bool:
        return bool(self.pods.get(pod.key, {}).get(container))


@dataclass(frozen=True, slots=True)
class Choice:
    pod: BoundPod
    containers: tuple[GpuContainer, ...]  # one per ContainerAllocateRequest, in request order


def choose(
    pods: Sequence[BoundPod],
    counts: Sequence[int],
    is_admitted: Callable[[str, str], bool],
    is_refused: Callable[[str], bool],
    kubelet: KubeletView | None = None,
) -> Choice:
    """``counts``: device count of each ContainerAllocateRequest in the call. With a
    ``kubelet`` view, pods it does not hold are left out, unless that leaves no match
    (a kubelet whose List lags): then the choice is made as without a view."""
    if not counts or any(c <= 0 for c in counts):
        raise NoCandidate(f"Allocate needs at least one device per container, got {list(counts)}")
    live = [p for p in pods if not p.terminal and not p.deleting and not is_refused(p.uid)]
    if kubelet is not None:
        held = [p for p in live if kubelet.holds(p)]
        try:
            return _choose(held, counts, lambda p, c: is_admitted(p.uid, c) or kubelet.allocated(p, c))
        except NoCandidate:
            pass
    return _choose(live, counts, lambda p, c: is_admitted(p.uid, c))


def _choose(pods: Sequence[BoundPod], counts: Sequence[int], is_admitted: Callable[[BoundPod, str], bool]) -> Choice:
    ordered = sorted(pods, key=lambda p: p.admission_order())
    partial: list[tuple[BoundPod, list[GpuContainer]]] = []
    fresh: list[tuple[BoundPod, list[GpuContainer]]] = []
    for pod in ordered:
        pending = [c for c in pod.containers if not is_admitted(pod, c.name)]
        if not pending:
            continue  # fully admitted
        (partial if len(pending) < len(pod.containers) else fresh).append((pod, pending))
    for pod, pending in (*partial, *fresh):
        # A pod with an unusable allocation still has sizes to match on (its request parsed);
        # one whose request did not parse has no vGPU containers and is never a candidate.
        if [c.vgpus for c in pending[: len(counts)]] != list(counts):
            continue
        if pod.error is not None:
            raise PodRefused(pod, pod.error)
        return Choice(pod, tuple(pending[: len(counts)]))
    waiting = ", ".join(f"{p.key} {[c.vgpus for c in pend]}" for p, pend in (*partial, *fresh)) or "none"
    raise NoCandidate(
        f"no pod bound to this node waits for containers of {list(counts)} vGPU(s) "
        f"(pods waiting, with their containers' vGPU counts: {waiting})"
    )
