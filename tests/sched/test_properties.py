"""Property tests: random request streams never over-commit a card.

Capacity is checked from the allocations themselves (recomputed here, not read from
the state's usage), so a bookkeeping bug in the state cannot hide an over-commit.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from flexai_core.model import FULL_CORES
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import BindError, Extender
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod

MEM_GIB = 16

container = st.one_of(
    st.builds(lambda n: limits(n), st.integers(1, 3)),
    st.builds(lambda n, cores: limits(n, cores=cores), st.integers(1, 3), st.sampled_from([0, 5, 25, 50, 100])),
    st.builds(lambda n, mem: limits(n, memory_gib=mem), st.integers(1, 2), st.integers(1, MEM_GIB)),
    st.builds(
        lambda n, cores, mem: limits(n, cores=cores, memory_gib=mem),
        st.integers(1, 2),
        st.sampled_from([0, 10, 35, 100]),
        st.integers(1, MEM_GIB),
    ),
)
step = st.one_of(
    st.tuples(
        st.just("add"), st.lists(container, min_size=1, max_size=3), st.lists(container, max_size=1), st.integers(0, 2)
    ),
    st.tuples(st.just("delete"), st.integers(0, 1000)),
)


def check_invariants(ext: Extender) -> None:
    per_card: dict[tuple[str, int], list[tuple[int, int, str]]] = defaultdict(list)
    for a, _ in ext.state.allocations():
        per_container: dict[tuple[str, bool], list[int]] = defaultdict(list)
        for s in a.slices:
            per_container[(s.container, s.init)].append(s.card_index)
        for cards in per_container.values():
            assert len(cards) == len(set(cards)), f"{a.key}: a container's vGPUs share a card"
        for index, held in a.card_usage.items():
            per_card[(a.node, index)].append((held.cores, held.memory_mib, a.key))
        # held vGPUs of a pod on a card: peak of its phases
    for (node_name, index), holders in per_card.items():
        n = ext.state.node(node_name)
        assert n is not None
        card = next(c for c in n.cards if c.index == index)
        cores = sum(h[0] for h in holders)
        mem = sum(h[1] for h in holders)
        assert cores <= FULL_CORES, f"{node_name}/{index}: cores {cores} > 100 ({holders})"
        assert mem <= card.memory_mib, f"{node_name}/{index}: memory {mem} > {card.memory_mib}"
        assert len(holders) <= card.max_vgpus
        exclusive = [h for h in holders if h[0] == FULL_CORES]
        if exclusive:
            assert len(holders) == 1, f"{node_name}/{index}: an exclusive card is shared ({holders})"


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=1, max_size=40), st.sampled_from(["binpack", "spread"]))
def test_random_streams_never_overcommit(steps: list[tuple[object, ...]], policy: str) -> None:
    state = ClusterState(max_vgpus_per_card=4)
    backend = MemoryBackend(
        [node("a", 2, MEM_GIB * 1024, max_vgpus=4), node("b", 3, MEM_GIB * 1024, max_vgpus=4)], heartbeat_every=None
    )
    backend.start(state)
    ext = Extender(state, backend, Settings(node_policy=policy, card_policy=policy))
    names = ["a", "b"]
    live: list[str] = []
    for i, s in enumerate(steps):
        if s[0] == "add":
            _, conts, inits, pick = s
            apps, init = cast(list[dict[str, Any]], conts), cast(list[dict[str, Any]], inits)
            p = pod(f"p{i}", *apps, init=tuple(init))
            backend.create_pod(p)
            out = ext.filter(p, names)
            if not out.fits:
                continue
            target = out.fits[int(pick) % len(out.fits)]  # type: ignore[call-overload]
            try:
                ext.bind("default", f"p{i}", f"uid-p{i}", target)
                live.append(f"p{i}")
            except BindError as e:  # filter said yes, so bind must agree on the same state
                raise AssertionError(f"bind refused a pod filter accepted: {e}") from None
        elif live:
            victim = live.pop(int(s[1]) % len(live))  # type: ignore[call-overload]
            backend.delete_pod("default", victim)
        check_invariants(ext)
    # Deleting everything returns every card to empty: nothing leaked.
    for name in live:
        backend.delete_pod("default", name)
    for n in state.nodes():
        assert all(u.cores == 0 and u.memory_mib == 0 and u.vgpus == 0 for u in n.usage)
