"""check_allocation: an allocation is held against the pod's own request and the node's cards."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexai_core.allocation_check import REASONS, check_allocation
from flexai_core.model import Allocation, CardUsage, Slice
from flexai_core.requests import parse_pod
from flexai_sched import policies
from flexai_sched.allocator import Placement, place

from .fixtures import H200_MIB, limits, node, pod

NODE = node("gpu-1", cards=2)
C0, C1 = NODE.cards


def s(container: str, card: int, cores: int, mib: int, init: bool = False, uuid: str | None = None) -> Slice:
    return Slice(container, card, uuid or NODE.cards[card].uuid, cores, mib, init)


def alloc(*slices: Slice, on: str = "gpu-1") -> Allocation:
    return Allocation.build("default", "p", "uid-p", on, slices)


# The pod of most cases: "c0" asks for 1 vGPU of 20% and 4 GiB (4096 MiB).
SMALL = pod("p", limits(1, cores=20, memory_gib=4))


@pytest.mark.parametrize(
    ("the_pod", "allocation", "reasons"),
    [
        pytest.param(SMALL, alloc(s("c0", 0, 20, 4096)), [], id="exact"),
        # The finding: a whole card's memory and no compute limit, for a 20%/4 GiB request.
        pytest.param(SMALL, alloc(s("c0", 0, 0, H200_MIB)), ["cores", "memory"], id="self-granted-whole-card"),
        pytest.param(SMALL, alloc(s("c0", 0, 25, 4096)), ["cores"], id="more-cores"),
        pytest.param(SMALL, alloc(s("c0", 0, 20, 4097)), ["memory"], id="one-MiB-more"),
        pytest.param(SMALL, alloc(s("c0", 0, 20, 4096), s("c0", 1, 20, 4096)), ["count"], id="extra-vgpu"),
        pytest.param(SMALL, alloc(), ["count"], id="no-slice"),
        pytest.param(
            SMALL,
            alloc(s("c0", 0, 20, 4096), s("sidecar", 1, 20, 4096)),
            ["container"],
            id="slice-for-a-container-that-asks-for-none",
        ),
        pytest.param(SMALL, alloc(s("c0", 7, 20, 4096, uuid="GPU-x")), ["card"], id="card-not-on-node"),
        pytest.param(SMALL, alloc(s("c0", 0, 20, 4096, uuid=C1.uuid)), ["card"], id="index-and-uuid-disagree"),
        pytest.param(SMALL, alloc(s("c0", 0, 20, 4096), on="gpu-2"), ["node"], id="other-node"),
        pytest.param(SMALL, alloc(s("c0", 0, 20, 4096, init=True)), ["init"], id="app-slice-marked-init"),
        pytest.param(
            pod("p", limits(2, cores=20, memory_gib=4)),
            alloc(s("c0", 0, 20, 4096), s("c0", 0, 20, 4096)),
            ["card"],
            id="two-vgpus-one-card",
        ),
        # vgpu-number alone: a whole card, cores 100 and (up to) all of its memory.
        pytest.param(pod("p", limits(1)), alloc(s("c0", 0, 100, H200_MIB)), [], id="whole-card"),
        pytest.param(
            pod("p", limits(1)), alloc(s("c0", 0, 100, H200_MIB - 512)), [], id="whole-card-less-memory-used-outside"
        ),
        pytest.param(pod("p", limits(1)), alloc(s("c0", 0, 0, H200_MIB)), ["cores"], id="whole-card-no-limit"),
        pytest.param(pod("p", limits(1)), alloc(s("c0", 0, 100, H200_MIB + 1)), ["memory"], id="more-than-the-card"),
        pytest.param(pod("p", limits(1)), alloc(s("c0", 0, 100, 0)), ["memory"], id="zero-memory"),
        # Memory alone: no compute limit (cores 0) is what was asked.
        pytest.param(pod("p", limits(1, memory_gib=8)), alloc(s("c0", 0, 0, 8192)), [], id="memory-only"),
        # Init containers' slices are marked init; sidecars' (restartPolicy Always) are not.
        pytest.param(
            pod("p", limits(1, cores=50, memory_gib=8), init=(limits(1, cores=10, memory_gib=1),)),
            alloc(s("init0", 0, 10, 1024, init=True), s("c0", 0, 50, 8192)),
            [],
            id="init-container",
        ),
        pytest.param(
            pod("p", limits(1, cores=50, memory_gib=8), init=(limits(1, cores=10, memory_gib=1),)),
            alloc(s("init0", 0, 10, 1024, init=False), s("c0", 0, 50, 8192)),
            ["init"],
            id="init-slice-not-marked",
        ),
        pytest.param(
            pod("p", limits(1, cores=50, memory_gib=8), init=(limits(1, cores=10, memory_gib=1),)),
            alloc(s("c0", 0, 50, 8192)),
            ["count"],
            id="init-container-without-slice",
        ),
        pytest.param(
            pod(
                "p",
                limits(1, cores=50, memory_gib=8),
                init=(
                    {
                        "name": "side",
                        "restartPolicy": "Always",
                        "resources": {"limits": limits(1, cores=10, memory_gib=1)},
                    },
                ),
            ),
            alloc(s("side", 1, 10, 1024), s("c0", 0, 50, 8192)),
            [],
            id="sidecar",
        ),
        # A pod that asks for no vGPU at all owns no slice.
        pytest.param(pod("p", {}), alloc(s("c0", 0, 20, 4096)), ["container"], id="pod-without-vgpus"),
    ],
)
def test_mismatches(the_pod: dict[str, object], allocation: Allocation, reasons: list[str]) -> None:
    found = check_allocation(parse_pod(the_pod), allocation, NODE.cards, node="gpu-1")
    assert [m.reason for m in found] == reasons
    assert all(m.reason in REASONS for m in found)


def test_messages_name_the_container_and_both_values() -> None:
    (cores, memory) = check_allocation(parse_pod(SMALL), alloc(s("c0", 0, 0, H200_MIB)), NODE.cards, "gpu-1")
    assert (
        str(cores)
        == "container 'c0' asks for 20 percent of a card's cores per vGPU, the allocation gives 0 percent on card 0"
    )
    assert str(memory) == f"container 'c0' asks for 4096 MiB per vGPU, the allocation gives {H200_MIB} MiB on card 0"


def test_without_the_nodes_cards_the_request_is_still_checked() -> None:
    req = parse_pod(pod("p", limits(1)))
    # A card the node may not have, and more memory than any card: unknowable without the cards.
    assert check_allocation(req, alloc(s("c0", 9, 100, 10**9, uuid="GPU-x"))) == []
    # The request alone still catches the cores.
    assert [m.reason for m in check_allocation(req, alloc(s("c0", 9, 0, 10**9, uuid="GPU-x")))] == ["cores"]


containers = st.one_of(
    st.builds(lambda n: limits(n), st.integers(1, 2)),
    st.builds(lambda n, c: limits(n, cores=c), st.integers(1, 2), st.sampled_from([0, 5, 50, 100])),
    st.builds(lambda n, g: limits(n, memory_gib=g), st.integers(1, 2), st.integers(1, 64)),
    st.builds(
        lambda n, c, g: limits(n, cores=c, memory_gib=g),
        st.integers(1, 2),
        st.sampled_from([0, 10, 95]),
        st.integers(1, 64),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(containers, min_size=1, max_size=3), st.lists(containers, max_size=2), st.integers(0, 4096))
def test_whatever_the_allocator_places_passes(
    app: list[dict[str, str]], init: list[dict[str, str]], used_outside: int
) -> None:
    # The check must never refuse what the scheduler itself decides (a card's "all memory"
    # is what was free when it was placed).
    inv = node("gpu-1", cards=4)
    cards = tuple(replace(c, used_outside_mib=used_outside) for c in inv.cards)
    req = parse_pod(pod("p", *app, init=tuple(init)))
    placed = place(cards, [CardUsage()] * len(cards), req, policies.get("binpack"))
    if not isinstance(placed, Placement):
        return
    a = Allocation.build("default", "p", "uid-p", "gpu-1", placed.slices)
    assert check_allocation(req, a, inv.cards, node="gpu-1") == []
