"""Placement policies by name: which card a slice goes to, and how good a node is for a pod.

- ``interface``     the ``Policy`` protocol and the optional abilities a policy may add
- ``binpack``       ``binpack`` and ``spread`` (how full cards and nodes already are)
- ``fragmentation`` the fragmentation-aware policies: ``fgd`` (FGD's measure) and ``fragmentation`` (ours)
- ``leftover``      what a shared card's hole is expected to keep (``fragmentation`` chooses cards with it)
- ``scarcity``      how much of each GPU model constrained tasks need
- ``baselines``     the FGD paper's published baselines: ``random``, ``bestfit``, ``gpupacking``

This module is the registry: ``get`` builds a policy by name, ``register`` adds one.
"""

from __future__ import annotations

from collections.abc import Callable

from .baselines import BestFit, GpuPacking, RandomFit
from .binpack import Binpack, Spread
from .fragmentation import Fgd, Fragmentation
from .interface import Policy

__all__ = ["Binpack", "Policy", "Spread", "get", "names", "register"]

_REGISTRY: dict[str, Callable[[], Policy]] = {
    factory.name: factory for factory in (Binpack, Spread, Fgd, Fragmentation, RandomFit, BestFit, GpuPacking)
}


def register(name: str, factory: Callable[[], Policy]) -> None:
    """Add a policy (e.g. a fragmentation-aware one) under ``name``."""
    _REGISTRY[name] = factory


def get(name: str) -> Policy:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"policy {name!r}: unknown (known: {', '.join(names())})") from None


def names() -> list[str]:
    return sorted(_REGISTRY)
